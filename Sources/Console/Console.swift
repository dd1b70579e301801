import Damage
import Support

/// The picture every display reads: XRGB8888, little-endian 32-bit words
/// 0x00RRGGBB (the Xen PV framebuffer's layout), rows `stride` bytes apart.
///
/// The console owns it. Devices write confirmed changes into it on the loop's
/// thread, inside `Console.withFrame`, and then publish the changed rects;
/// displays read it inside `withFrame` (from any thread) or, on the loop's
/// thread, between two loop handlers. Either way a reader never sees a frame
/// half-way through a device's update, and never a freed one.
public final class Frame: @unchecked Sendable {
    public private(set) var width: Int
    public private(set) var height: Int
    public private(set) var stride: Int
    public private(set) var pixels: UnsafeMutableRawPointer
    /// Bytes allocated: the largest frame so far. A resize within it reuses
    /// the memory, so a guest that storms RESIZE between sizes costs no
    /// allocation per resize (and memory stays at its high-water mark, which
    /// the devices bound).
    public private(set) var capacity: Int

    /// Largest width or height a frame may have.
    public static let maxDimension = 16384

    /// A black frame of the given size. Sizes are validated by the caller
    /// (1 ... `maxDimension` a side).
    public init(width: Int, height: Int) {
        precondition(width > 0 && height > 0 && width <= Self.maxDimension && height <= Self.maxDimension)
        self.width = width
        self.height = height
        self.stride = width * 4
        self.capacity = stride * height
        self.pixels = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        pixels.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
    }

    deinit { pixels.deallocate() }

    public var bounds: Rect { Rect(x: 0, y: 0, width: width, height: height) }
    public var byteCount: Int { stride * height }

    /// Reallocates for a new geometry; the content becomes black.
    fileprivate func resize(width: Int, height: Int) {
        precondition(width > 0 && height > 0 && width <= Self.maxDimension && height <= Self.maxDimension)
        let bytes = width * 4 * height
        if bytes > capacity {
            pixels.deallocate()
            pixels = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            capacity = bytes
        }
        self.width = width
        self.height = height
        self.stride = width * 4
        pixels.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
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

/// Where input goes: the console's one queue, and behind it the vkbd device.
/// Called on the loop's thread.
public protocol InputSink: AnyObject {
    func send(_ event: InputEvent)
}

/// A place the guest's screen is shown: VNC, SDL, PNG capture (QEMU's
/// `DisplayChangeListener`).
///
/// The console calls these on the loop's thread. They must return at once:
/// a display that does real work (encoding, network or file I/O) records
/// what changed and does the work elsewhere, reading the frame through
/// `Console.withFrame`.
public protocol Display: AnyObject {
    /// A short name for logs and QMP (`vnc`, `sdl`, `png`).
    var name: String { get }
    /// Added to `console` (before the first `frameDidResize`): a display that
    /// reads the frame from a thread of its own keeps it.
    func attach(to console: Console)
    /// The frame was (re)allocated: new geometry, repaint everything.
    func frameDidResize(_ frame: Frame)
    /// The pixels inside `rects` changed; rects lie within the frame.
    func frameDidUpdate(_ frame: Frame, rects: [Rect])
    /// The device model is shutting down or the device went away.
    func close()
}

extension Display {
    public func attach(to console: Console) {}
}

/// The console: one frame, the displays that show it, and the input path
/// back to the guest (QEMU's `QemuConsole`).
///
/// Devices publish into it (`withFrame` to write, then `update` or
/// `resize`); displays subscribe (`add`). A device never sees a display and a
/// display never sees a device. Everything but `withFrame` and `size` runs on
/// the loop's thread.
public final class Console: @unchecked Sendable {
    private let lock = Lock()
    /// The frame, for use on the loop's thread only; other threads use `withFrame`.
    public private(set) var frame: Frame
    public private(set) var displays: [Display] = []
    /// The one input queue displays send to (`InputQueue`), set by the owner.
    public weak var input: InputSink?
    private var sizeSnapshot: (width: Int, height: Int)
    private var changes: UInt64 = 0

    public init(width: Int = 800, height: Int = 600) {
        frame = Frame(width: width, height: height)
        sizeSnapshot = (width, height)
    }

    /// The frame's size, from any thread.
    public var size: (width: Int, height: Int) { lock.withLock { sizeSnapshot } }

    /// Counts every change published (updates and resizes), from any thread:
    /// a reader that took longer than a loop handler compares it before and
    /// after to know whether it saw one consistent picture.
    public var generation: UInt64 { lock.withLock { changes } }

    /// Runs `body` with the frame, holding the console's lock: from any
    /// thread, to read it; on the loop's thread, to write into it. Keep
    /// `body` short (a copy or a compare of some rows): the guest's loop may
    /// be waiting for it.
    public func withFrame<R, E: Error>(_ body: (Frame) throws(E) -> R) throws(E) -> R {
        try lock.withLock { () throws(E) -> R in try body(frame) }
    }

    public func add(_ display: Display) {
        displays.append(display)
        display.attach(to: self)
        display.frameDidResize(frame)
    }

    public func remove(_ display: Display) {
        displays.removeAll { $0 === display }
    }

    /// Reallocates the frame (black) and tells every display.
    public func resize(width: Int, height: Int) {
        lock.withLock {
            frame.resize(width: width, height: height)
            sizeSnapshot = (width, height)
            changes &+= 1
        }
        for d in displays { d.frameDidResize(frame) }
    }

    /// Tells every display that `rects` changed (clipped to the frame).
    public func update(_ rects: [Rect]) {
        let clipped = rects.map { $0.intersection(frame.bounds) }.filter { !$0.isEmpty }
        guard !clipped.isEmpty else { return }
        lock.withLock { changes &+= 1 }
        for d in displays { d.frameDidUpdate(frame, rects: clipped) }
    }

    public func closeAll() {
        for d in displays { d.close() }
        displays.removeAll()
    }
}

/// The screens of one device model, numbered as QEMU numbers its consoles:
/// console 0 first, then one per screen a device adds. A screen belongs to a
/// device and one of its heads (`vfb-0` head 0, `vdispl-0` head 1 for its
/// second connector, as QEMU names a console by device id and head).
///
/// Console 0 exists from the start, so displays can attach before any device
/// appears; the first device to claim a screen gets it (the vfb when libxl
/// started the device model for a guest with one, else the first vdispl
/// connector). Later claims get new consoles, up to `limit`, and
/// `onAdd` lets the owner give each its displays. A claim for a screen that
/// had a console before (a reconnect) gets the same one back.
///
/// Loop thread only.
public final class Consoles {
    /// Who owns a console.
    public struct Owner: Hashable, Sendable, CustomStringConvertible {
        public var device: String
        public var head: Int
        public init(device: String, head: Int) {
            self.device = device
            self.head = head
        }
        public var description: String { "\(device) head \(head)" }
    }

    /// Every console, by index.
    public private(set) var all: [Console]
    private var owners: [Owner?]
    /// Most consoles at once (each costs a frame and its displays).
    public let limit: Int
    /// Called for each console created after console 0, with its index.
    public var onAdd: ((Int, Console) -> Void)?

    public init(primary: Console = Console(), limit: Int = 9) {
        all = [primary]
        owners = [nil]
        self.limit = max(limit, 1)
    }

    /// Console 0.
    public var primary: Console { all[0] }

    /// The console for `owner` (see the type's description); nil when
    /// `limit` consoles exist already. A new console is `width`×`height`
    /// and sends its input where console 0's goes.
    public func claim(_ owner: Owner, width: Int = 800, height: Int = 600) -> (index: Int, console: Console)? {
        if let i = owners.firstIndex(of: owner) { return (i, all[i]) }
        if owners[0] == nil {
            owners[0] = owner
            return (0, all[0])
        }
        guard all.count < limit else { return nil }
        let console = Console(width: min(max(width, 1), Frame.maxDimension), height: min(max(height, 1), Frame.maxDimension))
        console.input = primary.input
        all.append(console)
        owners.append(owner)
        onAdd?(all.count - 1, console)
        return (all.count - 1, console)
    }

    /// Who owns console `index`, if anyone.
    public func owner(of index: Int) -> Owner? { index >= 0 && index < owners.count ? owners[index] : nil }

    /// The console of `device`'s head `head`, if it has one.
    public func lookup(device: String, head: Int) -> Console? {
        owners.firstIndex(of: Owner(device: device, head: head)).map { all[$0] }
    }
}
