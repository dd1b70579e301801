import Console
import EventLoop
import Host
import Logging
import Support
import XenBus
import XenProtocol

/// The vkbd backend for one device, and the console's `InputSink`: keys, buttons,
/// wheel and pointer from the displays go into the guest's IN ring as Linux
/// input codes. When the ring (51 slots) is full, events wait in a large
/// queue and go out as the guest consumes them (on its notification); none
/// is dropped unless that queue's cap is hit.
public final class VkbdDevice: XenBusDeviceHandler, InputSink {
    let console: Console
    let config: BackendConfig
    var log: Logger = Log.logger("vkbd")

    private var channel: FrontendChannel?
    /// The shared page (the channel's, or one `attach` was given).
    private var page: GuestMapping?
    private weak var device: XenBusDevice?
    /// Private IN-ring producer index: `in_prod` on the page is written, never read back.
    private var inProd: UInt32 = 0
    /// Frontend Connected and its `request-*` keys read: events may flow.
    public private(set) var ready = false
    public private(set) var absolutePointer = false
    public private(set) var rawPointer = false
    private var queue: [InputEvent] = []
    private var head = 0
    private var warnedCap = false
    private var warnedRing = false
    // Pointer state for translating between absolute and relative.
    private var lastX: Int32 = 0, lastY: Int32 = 0

    public init(console: Console, config: BackendConfig) {
        self.console = console
        self.config = config
    }

    /// Events waiting for room in the ring.
    public var queuedEvents: Int { queue.count - head }

    // MARK: XenBusDeviceHandler

    public func initialise(_ device: XenBusDevice) throws {
        log = device.log
        self.device = device
        try device.writeBackend("feature-abs-pointer", "1")
        if config.rawPointer { try device.writeBackend("feature-raw-pointer", "1") }
        try device.writeBackend("width", String(console.frame.width))
        try device.writeBackend("height", String(console.frame.height))
    }

    public func connect(_ device: XenBusDevice) throws {
        self.device = device
        // No OUT events are defined: a notification only means the guest
        // consumed what it was given (and may have room again).
        let channel = try FrontendChannel(device) { [weak self] in self?.guestNotified() }
        self.channel = channel
        let page = channel.page
        self.page = page
        inProd = page.load(UInt32.self, at: XenkbdLayout.inProd) ?? 0
        log.info("connected")
    }

    public func frontendConnected(_ device: XenBusDevice) throws {
        absolutePointer = try device.readFrontend("request-abs-pointer") == "1"
        rawPointer = try absolutePointer && config.rawPointer && device.readFrontend("request-raw-pointer") == "1"
        ready = true
        log.info("frontend connected: pointer \(absolutePointer ? (rawPointer ? "absolute raw" : "absolute") : "relative")")
        flush()
    }

    public func disconnect(_ device: XenBusDevice) {
        ready = false
        channel?.close()
        channel = nil
        page?.unmap()
        page = nil
        queue.removeAll()
        head = 0
    }

    /// Takes an already mapped shared page as `connect` and `frontendConnected`
    /// do, without a XenBus device or event channel, so the IN-ring producer
    /// can be driven directly (the fuzz targets in Fuzz/).
    public func attach(page: GuestMapping, absolutePointer: Bool, rawPointer: Bool) {
        self.page = page
        inProd = page.load(UInt32.self, at: XenkbdLayout.inProd) ?? 0
        self.absolutePointer = absolutePointer
        self.rawPointer = absolutePointer && rawPointer
        ready = true
    }

    /// Consumes the OUT ring as an event-channel notification does.
    public func guestNotified() {
        if let page, let prod = page.load(UInt32.self, at: XenkbdLayout.outProd) {
            Barrier.full()
            page.store(prod, at: XenkbdLayout.outCons)
        }
        flush()
    }

    // MARK: InputSink

    public func send(_ event: InputEvent) {
        guard page != nil else { return } // no frontend: there is nobody to deliver to
        if queuedEvents >= config.inputQueueLimit {
            if !warnedCap { warnedCap = true; log.warning("input queue full (\(config.inputQueueLimit) events); dropping input until the guest catches up") }
            return
        }
        queue.append(event)
        if ready { flush() }
    }

    // MARK: Ring

    /// Puts as many queued events into the IN ring as fit, then notifies.
    public func flush() {
        guard ready, let page, queuedEvents > 0 else { return }
        let ring = SharedRing.vkbdIn(page)
        let cons = ring.loadCons()
        Barrier.full()
        let used = inProd &- cons
        guard used <= UInt32(XenkbdLayout.inRingLength) else {
            // A corrupted in_cons: treat the ring as full, never spin.
            if !warnedRing { warnedRing = true; log.warning("IN ring consumer \(cons) is inconsistent with producer \(inProd); treating the ring as full") }
            return
        }
        var free = Int(UInt32(XenkbdLayout.inRingLength) - used)
        var sent = 0
        while free > 0 && head < queue.count {
            let wire = translate(queue[head])
            head += 1
            guard let wire else { continue }
            ring.put(wire.slot, at: inProd &+ UInt32(sent))
            sent += 1
            free -= 1
        }
        if head == queue.count { queue.removeAll(keepingCapacity: true); head = 0 }
        else if head > 4096 && head * 2 > queue.count { queue.removeFirst(head); head = 0 }
        guard sent > 0 else { return }
        Barrier.write()
        inProd &+= UInt32(sent)
        ring.storeProd(inProd)
        channel?.notify()
    }

    /// One display event as a kbdif event, in the mode the frontend asked for.
    func translate(_ event: InputEvent) -> XenkbdInEvent? {
        let size = console.size
        let w = Int32(clamping: max(size.width, 1)), h = Int32(clamping: max(size.height, 1))
        switch event {
        case .key(let code, let pressed):
            return .key(code: code, pressed: pressed)
        case .absolute(let x, let y):
            let cx = min(max(x, 0), w - 1), cy = min(max(y, 0), h - 1)
            defer { lastX = cx; lastY = cy }
            if absolutePointer { return position(cx, cy, z: 0, width: w, height: h) }
            return .motion(dx: cx &- lastX, dy: cy &- lastY, dz: 0)
        case .relative(let dx, let dy):
            lastX = min(max(lastX &+ dx, 0), w - 1)
            lastY = min(max(lastY &+ dy, 0), h - 1)
            return .motion(dx: dx, dy: dy, dz: 0)
        case .wheel(let z):
            if absolutePointer { return position(lastX, lastY, z: z, width: w, height: h) }
            return .motion(dx: 0, dy: 0, dz: z)
        }
    }

    /// A POS event at pixel (x, y): pixels, or scaled to 0..0x7fff when raw
    /// (the inverse of QEMU's `v*(surface_w-1)/0x7fff`).
    private func position(_ x: Int32, _ y: Int32, z: Int32, width: Int32, height: Int32) -> XenkbdInEvent {
        guard rawPointer else { return .position(x: x, y: y, dz: z) }
        let w = Int64(max(width - 1, 1)), h = Int64(max(height - 1, 1))
        return .position(x: Int32(Int64(x) * Int64(XenkbdLayout.rawMax) / w),
                         y: Int32(Int64(y) * Int64(XenkbdLayout.rawMax) / h), dz: z)
    }
}
