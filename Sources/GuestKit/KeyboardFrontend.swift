import EventLoop
import Host
import Support
import XenBus
import XenProtocol

/// An event the guest's keyboard/pointer frontend received, decoded.
public enum ReceivedInput: Equatable, Sendable {
    case key(code: UInt32, pressed: Bool)
    case motion(dx: Int32, dy: Int32, dz: Int32)
    case position(x: Int32, y: Int32, dz: Int32)
    case other(type: UInt8)
}

/// A frontend that behaves like Linux's xen-kbdfront
/// (drivers/input/misc/xen-kbdfront.c): reads
/// `feature-abs-pointer`, `width`, `height` at probe and asks for absolute
/// pointing when offered (optionally raw); consumes the IN ring and notifies.
public final class KeyboardFrontend: FrontendBase {
    public private(set) var pageFrame: UInt64 = 0
    public private(set) var received: [ReceivedInput] = []
    public var onInput: ((ReceivedInput) -> Void)?
    /// Ask for `request-raw-pointer` too (Linux does not).
    public var requestRaw = false
    /// Stop consuming (to fill the ring on purpose); `resume()` catches up.
    public var paused = false
    public private(set) var absolute = false
    public private(set) var pointerWidth = 800, pointerHeight = 600

    public init(domain: GuestDomain, devid: UInt32 = 0) {
        super.init(domain: domain, type: "vkbd", devid: devid)
    }

    var mapping: GuestMapping { domain.memory.mapping }
    var pageOffset: Int { domain.memory.offset(ofFrame: pageFrame) }

    override func connectBackend() throws {
        absolute = readBackend("feature-abs-pointer") == "1"
        pointerWidth = readBackend("width").flatMap { Int(xenstoreDecimal: $0) } ?? 800
        pointerHeight = readBackend("height").flatMap { Int(xenstoreDecimal: $0) } ?? 600
        if absolute { try store.write("\(path)/request-abs-pointer", "1") }
        if absolute && requestRaw { try store.write("\(path)/request-raw-pointer", "1") }
        pageFrame = try domain.memory.allocate(frames: 1)
        try allocateEventChannel()
        try store.transaction { t in
            try t.write("\(path)/page-ref", String(pageFrame))
            try t.write("\(path)/page-gref", String(pageFrame))
            try t.write("\(path)/event-channel", String(port))
        }
        switchState(.initialised)
    }

    override func releaseResources() { releaseEventChannel() }

    override func interrupt() {
        if !paused { consume() }
    }

    /// The shared page, for tests that corrupt it on purpose.
    public func pageMappingForTests() -> GuestMapping {
        GuestMapping(base: mapping.baseAddress! + pageOffset, byteCount: guestPageSize, writable: true) { _, _ in }
    }

    public func resume() {
        paused = false
        consume()
    }

    /// input_handler: read prod, rmb, handle each event, mb, write cons, notify.
    private func consume() {
        let p = pageOffset
        guard let prod = mapping.load(UInt32.self, at: p + XenkbdLayout.inProd),
              var cons = mapping.load(UInt32.self, at: p + XenkbdLayout.inCons), prod != cons else { return }
        Barrier.read()
        let ring = SharedRing.vkbdIn(mapping, at: p)
        while cons != prod {
            if let slot = ring.copySlot(cons) {
                let input: ReceivedInput
                switch XenkbdInEvent(slot) {
                case .key(let code, let pressed): input = .key(code: code, pressed: pressed)
                case .motion(let dx, let dy, let dz): input = .motion(dx: dx, dy: dy, dz: dz)
                case .position(let x, let y, let dz): input = .position(x: x, y: y, dz: dz)
                case .unknown(let type): input = .other(type: type)
                }
                received.append(input)
                onInput?(input)
            }
            cons &+= 1
        }
        Barrier.full()
        mapping.store(cons, at: p + XenkbdLayout.inCons)
        notify()
    }
}
