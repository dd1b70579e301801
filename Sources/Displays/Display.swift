import Damage

/// The picture every display reads: XRGB8888, little-endian 32-bit words
/// 0x00RRGGBB (the Xen PV framebuffer's layout), rows `stride` bytes apart.
///
/// The vfb backend owns it as its shadow copy of the guest framebuffer: it
/// copies confirmed changes in, then tells the displays which rects changed.
/// Displays read it between those calls only, so they never see a frame that
/// the guest is half-way through writing.
public final class Frame {
    public private(set) var width: Int
    public private(set) var height: Int
    public private(set) var stride: Int
    public private(set) var pixels: UnsafeMutableRawPointer

    /// A black frame of the given size. Sizes are validated by the caller.
    public init(width: Int, height: Int) {
        precondition(width > 0 && height > 0 && width <= 16384 && height <= 16384)
        self.width = width
        self.height = height
        self.stride = width * 4
        self.pixels = UnsafeMutableRawPointer.allocate(byteCount: stride * height, alignment: 64)
        pixels.initializeMemory(as: UInt8.self, repeating: 0, count: stride * height)
    }

    deinit { pixels.deallocate() }

    public var bounds: Rect { Rect(x: 0, y: 0, width: width, height: height) }
    public var byteCount: Int { stride * height }

    /// Reallocates for a new geometry; the content becomes black.
    public func resize(width: Int, height: Int) {
        precondition(width > 0 && height > 0 && width <= 16384 && height <= 16384)
        pixels.deallocate()
        self.width = width
        self.height = height
        self.stride = width * 4
        self.pixels = UnsafeMutableRawPointer.allocate(byteCount: stride * height, alignment: 64)
        pixels.initializeMemory(as: UInt8.self, repeating: 0, count: stride * height)
    }

    public func pixel(x: Int, y: Int) -> UInt32 {
        precondition(x >= 0 && x < width && y >= 0 && y < height)
        return pixels.load(fromByteOffset: y * stride + x * 4, as: UInt32.self)
    }
}

/// Input from a person at a display, in the terms vkbd speaks (Linux input
/// codes, framebuffer pixels).
public enum InputEvent: Equatable, Sendable {
    /// A Linux `KEY_*` or `BTN_*` code (BTN_LEFT = 0x110) pressed or released.
    case key(code: UInt32, pressed: Bool)
    /// Absolute pointer position in framebuffer pixels.
    case absolute(x: Int32, y: Int32)
    /// Relative pointer motion.
    case relative(dx: Int32, dy: Int32)
    /// Wheel: negative is up (vkbd's rel_z convention).
    case wheel(Int32)
}

/// Where displays send input: the one queue in front of vkbd.
public protocol InputSink: AnyObject {
    func send(_ event: InputEvent)
}

/// A place the guest's screen is shown: VNC, SDL, PNG capture.
///
/// The hub calls these on the event loop's thread. A display reads the frame
/// inside the call or later on the loop, never from another thread.
public protocol Display: AnyObject {
    /// A short name for logs and QMP (`vnc`, `sdl`, `png`).
    var name: String { get }
    /// The frame was (re)allocated: new geometry, repaint everything.
    func frameDidResize(_ frame: Frame)
    /// The pixels inside `rects` changed; rects lie within the frame.
    func frameDidUpdate(_ frame: Frame, rects: [Rect])
    /// The device model is shutting down or the device went away.
    func close()
}

/// Fans frame changes out to every display and input back to the sink.
public final class DisplayHub {
    public private(set) var frame: Frame
    public private(set) var displays: [Display] = []
    public weak var input: InputSink?

    public init(width: Int = 800, height: Int = 600) {
        frame = Frame(width: width, height: height)
    }

    public func add(_ display: Display) {
        displays.append(display)
        display.frameDidResize(frame)
    }

    public func remove(_ display: Display) {
        displays.removeAll { $0 === display }
    }

    public func resize(width: Int, height: Int) {
        frame.resize(width: width, height: height)
        for d in displays { d.frameDidResize(frame) }
    }

    /// Tells every display that `rects` changed (clipped to the frame).
    public func update(_ rects: [Rect]) {
        let clipped = rects.map { $0.intersection(frame.bounds) }.filter { !$0.isEmpty }
        guard !clipped.isEmpty else { return }
        for d in displays { d.frameDidUpdate(frame, rects: clipped) }
    }

    public func closeAll() {
        for d in displays { d.close() }
        displays.removeAll()
    }
}
