import Damage
import EventLoop
import Host
import Support
import XenBus
import XenProtocol

/// A vdispl frontend that behaves like Linux's drm/xen-front
/// (drivers/gpu/drm/xen): per connector configured by the toolstack
/// (`N/resolution`) it grants a request ring and an event page to the
/// backend and publishes them with two event channels in one transaction;
/// buffers are "dumb buffers" in guest memory, granted page by page with a
/// page directory (xen-front-pgdir-shbuf), created with DBUF_CREATE,
/// made framebuffers with FB_ATTACH, shown with SET_CONFIG and PG_FLIP.
///
/// Requests are asynchronous: `request` returns at once and the response
/// arrives on the loop (`responses`, or the completion given). Flip-done
/// events arrive the same way (`flipsDone`, `onFlipDone`); like Linux, an
/// event whose id is not the next expected one is dropped.
public final class DisplayFrontend: FrontendBase {
    /// One connector's transport.
    public final class Connector {
        public let index: Int
        public let width: Int, height: Int
        var ring: FrontRing<RingEntry64>?
        public internal(set) var requestFrame: UInt64 = 0
        public internal(set) var eventFrame: UInt64 = 0
        var requestRef: UInt32 = 0, eventRef: UInt32 = 0
        var requestPort: UInt32 = 0, eventPort: UInt32 = 0
        var nextID: UInt16 = 0
        var expectedEventID: UInt16 = 0
        var waiting: [UInt16: (DisplifResponse) -> Void] = [:]

        init(index: Int, width: Int, height: Int) {
            self.index = index
            self.width = width
            self.height = height
        }
    }

    /// A buffer in guest memory shared with the backend (a DRM dumb buffer).
    public final class DumbBuffer {
        public let cookie: UInt64
        public let width: Int, height: Int, bpp: Int
        /// `ceil(width × bpp / 8)`, as drm/xen-front's dumb_create computes it.
        public let stride: Int
        public let size: Int
        public let firstFrame: UInt64
        public let pages: Int
        public let directoryRefs: [UInt32]
        public let bufferRefs: [UInt32]
        let memory: SimGuestMemory

        init(cookie: UInt64, width: Int, height: Int, bpp: Int, firstFrame: UInt64, pages: Int,
             directoryRefs: [UInt32], bufferRefs: [UInt32], memory: SimGuestMemory) {
            self.cookie = cookie
            self.width = width
            self.height = height
            self.bpp = bpp
            stride = (width * bpp + 7) / 8
            size = stride * height
            self.firstFrame = firstFrame
            self.pages = pages
            self.directoryRefs = directoryRefs
            self.bufferRefs = bufferRefs
            self.memory = memory
        }

        var offset: Int { memory.offset(ofFrame: firstFrame) }

        /// Runs `body` over the buffer's bytes.
        public func withBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R? {
            try memory.mapping.withMutableBytes(at: offset, count: size, body)
        }

        /// Fills `rect` (clipped) with the 32-bit `value` (XRGB8888 buffers).
        public func fill(_ rect: Rect, color value: UInt32) {
            let r = rect.intersection(Rect(x: 0, y: 0, width: width, height: height))
            guard !r.isEmpty, bpp == 32 else { return }
            let s = stride
            _ = withBytes { px in
                for y in r.y..<r.maxY {
                    let row = (px.baseAddress! + y * s).assumingMemoryBound(to: UInt32.self)
                    for x in r.x..<r.maxX { row[x] = value }
                }
            }
        }

        /// The 32-bit pixel at (x, y), for XRGB8888 buffers.
        public func pixel(x: Int, y: Int) -> UInt32? {
            guard x >= 0, y >= 0, x < width, y < height, bpp == 32 else { return nil }
            return memory.mapping.load(UInt32.self, at: offset + y * stride + x * 4)
        }
    }

    public private(set) var connectors: [Connector] = []
    /// Whether the toolstack offered backend-allocated buffers (`be-alloc`).
    public private(set) var backendAlloc = false
    /// Every response received, in order, with its connector.
    public private(set) var responses: [(connector: Int, response: DisplifResponse)] = []
    /// Every flip-done event accepted, in order.
    public private(set) var flipsDone: [(connector: Int, cookie: UInt64)] = []
    /// Events dropped because their id was not the next one.
    public private(set) var eventsDropped = 0
    public var onFlipDone: ((Int, UInt64) -> Void)?
    /// Called each time the backend is seen Connected (the frontend may send requests).
    public var onBackendConnected: (() -> Void)?
    private var buffers: [UInt64: DumbBuffer] = [:]
    private var nextCookie: UInt64 = 1

    public init(domain: GuestDomain, devid: UInt32 = 0) {
        super.init(domain: domain, type: "vdispl", devid: devid)
    }

    var memory: SimGuestMemory { domain.memory }

    // MARK: Connection

    override func connectBackend() throws {
        // xen_drm_front_cfg_card: be-alloc, then connectors 0, 1, ... while resolution is there.
        backendAlloc = (try store.read("\(path)/\(DisplifLayout.keyBackendAlloc)")) == "1"
        var found: [Connector] = []
        for i in 0..<4 {
            guard let text = try store.read("\(path)/\(i)/\(DisplifLayout.keyResolution)"),
                  let r = DisplifResolution(xenstore: text, maxDimension: 4096) else { break }
            found.append(Connector(index: i, width: r.width, height: r.height))
        }
        guard !found.isEmpty else { throw XenBusError("\(path): no connector configured") }
        let ev = try domain.host.openEventChannels()
        evtchn = ev
        try domain.loop.watch(fd: ev.fd) { [weak self] _ in self?.channelFired() }
        for c in found {
            // xenbus_setup_ring: a zeroed page, granted read-write to the backend.
            c.requestFrame = try memory.allocate(frames: 1)
            c.eventFrame = try memory.allocate(frames: 1)
            c.ring = FrontRing<RingEntry64>(initialising: pageMapping(c.requestFrame))
            c.requestRef = try domain.grants.grantAccess(frame: c.requestFrame, to: backendDomid, readonly: false)
            c.eventRef = try domain.grants.grantAccess(frame: c.eventFrame, to: backendDomid, readonly: false)
            c.requestPort = try ev.bindUnbound(remoteDomain: backendDomid)
            c.eventPort = try ev.bindUnbound(remoteDomain: backendDomid)
        }
        connectors = found
        try store.transaction { t in
            for c in found {
                try t.write("\(path)/\(c.index)/\(DisplifLayout.keyRequestRingRef)", String(c.requestRef))
                try t.write("\(path)/\(c.index)/\(DisplifLayout.keyRequestChannel)", String(c.requestPort))
                try t.write("\(path)/\(c.index)/\(DisplifLayout.keyEventRingRef)", String(c.eventRef))
                try t.write("\(path)/\(c.index)/\(DisplifLayout.keyEventChannel)", String(c.eventPort))
            }
        }
        switchState(.initialised)
    }

    override func backendConnected() { onBackendConnected?() }

    override func releaseResources() {
        for c in connectors {
            domain.grants.endAccess(c.requestRef)
            domain.grants.endAccess(c.eventRef)
            for (_, done) in c.waiting { done(DisplifResponse(id: 0, operation: 0, status: XenErrno.io.status)) }
            c.waiting.removeAll()
        }
        for b in buffers.values { release(b) }
        buffers.removeAll()
        connectors.removeAll()
        releaseEventChannel()
    }

    /// A page of guest memory as its own mapping (a view; the domain's mapping outlives it).
    func pageMapping(_ frame: UInt64) -> GuestMapping {
        GuestMapping(base: memory.mapping.baseAddress! + memory.offset(ofFrame: frame), byteCount: guestPageSize, writable: true) { _, _ in }
    }

    /// The request ring's page of connector `index`, for tests that corrupt it.
    public func requestPageForTests(_ index: Int = 0) -> GuestMapping? {
        connectors.first { $0.index == index }.map { pageMapping($0.requestFrame) }
    }

    /// The event page of connector `index`, for tests that corrupt it.
    public func eventPageForTests(_ index: Int = 0) -> GuestMapping? {
        connectors.first { $0.index == index }.map { pageMapping($0.eventFrame) }
    }

    // MARK: Requests

    /// Puts `request` on connector `index`'s ring and notifies if the
    /// backend asked; `done` gets the response. Returns the request's id,
    /// or nil if the ring is full or the connector does not exist.
    @discardableResult
    public func request(_ request: DisplifRequest, on index: Int = 0, done: ((DisplifResponse) -> Void)? = nil) -> UInt16? {
        guard let c = connectors.first(where: { $0.index == index }) else { return nil }
        let id = c.nextID
        guard send(request.entry(id: id), on: c) else { return nil }
        c.nextID &+= 1
        if let done { c.waiting[id] = done }
        return id
    }

    /// Puts any entry on the ring (a hostile guest's too); false if the ring is full.
    @discardableResult
    public func sendRaw(_ entry: RingEntry64, on index: Int = 0) -> Bool {
        guard let c = connectors.first(where: { $0.index == index }) else { return false }
        return send(entry, on: c)
    }

    private func send(_ entry: RingEntry64, on c: Connector) -> Bool {
        guard var ring = c.ring, ring.putRequest(entry) else { return false }
        let notify = ring.pushRequests()
        c.ring = ring
        if notify { try? evtchn?.notify(port: c.requestPort) }
        return true
    }

    private func channelFired() {
        guard let ev = evtchn, let port = try? ev.pending() else { return }
        try? ev.unmask(port: port)
        for c in connectors {
            if port == c.requestPort { consumeResponses(c) }
            if port == c.eventPort { consumeEvents(c) }
        }
    }

    /// evtchnl_interrupt_ctrl: take every response, then ask for the next
    /// notification; completions run after the ring's state is stored (they
    /// may send the next request).
    private func consumeResponses(_ c: Connector) {
        guard var ring = c.ring else { return }
        var got: [DisplifResponse] = []
        repeat {
            guard case .success(let n) = ring.unconsumedResponses() else { break }
            for _ in 0..<n {
                guard let e = ring.nextResponse() else { break }
                got.append(DisplifResponse(e))
            }
        } while ring.finalCheckForResponses()
        c.ring = ring
        for r in got {
            responses.append((c.index, r))
            c.waiting.removeValue(forKey: r.id)?(r)
        }
    }

    /// evtchnl_interrupt_evt: events from in_cons to in_prod; one whose id is
    /// not the next expected is dropped.
    private func consumeEvents(_ c: Connector) {
        let page = pageMapping(c.eventFrame)
        let ring = DisplifEventRing.displifEvents(page)
        let prod = ring.loadProd()
        Barrier.read()
        var cons = ring.loadCons()
        guard prod &- cons <= UInt32(DisplifLayout.eventRingLength) else { return }
        while cons != prod {
            if let e = ring.copySlot(cons).map(DisplifEvent.init) {
                if e.id != c.expectedEventID {
                    eventsDropped += 1
                } else if e.type == DisplifLayout.eventPageFlip {
                    flipsDone.append((c.index, e.fbCookie))
                    onFlipDone?(c.index, e.fbCookie)
                }
                c.expectedEventID &+= 1
            }
            cons &+= 1
        }
        Barrier.full()
        ring.storeCons(cons)
    }

    // MARK: Buffers (drm/xen-front's dumb buffers)

    /// Allocates a dumb buffer in guest memory and grants it with its page
    /// directory (frontend-allocated, be-alloc=0); does not send anything.
    public func allocateBuffer(width: Int, height: Int, bpp: Int = 32) throws -> DumbBuffer {
        let stride = (width * bpp + 7) / 8
        let size = stride * height
        let pages = max((size + guestPageSize - 1) / guestPageSize, 1)
        let dirPages = DisplifPageDirectory.directoryPages(forBufferPages: pages)
        let first = try memory.allocate(frames: pages)
        let dirFirst = try memory.allocate(frames: dirPages)
        var dirRefs: [UInt32] = []
        for i in 0..<dirPages { dirRefs.append(try domain.grants.grantAccess(frame: dirFirst + UInt64(i), to: backendDomid, readonly: false)) }
        var refs: [UInt32] = []
        for i in 0..<pages { refs.append(try domain.grants.grantAccess(frame: first + UInt64(i), to: backendDomid, readonly: false)) }
        for (i, bytes) in DisplifPageDirectory.encode(directoryRefs: dirRefs, bufferRefs: refs).enumerated() {
            bytes.withUnsafeBytes { _ = memory.mapping.write($0, at: memory.offset(ofFrame: dirFirst + UInt64(i))) }
        }
        let cookie = nextCookie
        nextCookie += 1
        let b = DumbBuffer(cookie: cookie, width: width, height: height, bpp: bpp, firstFrame: first, pages: pages,
                           directoryRefs: dirRefs, bufferRefs: refs, memory: memory)
        buffers[cookie] = b
        return b
    }

    /// The DBUF_CREATE request for `b`, as xen_drm_front_dbuf_create sends it.
    public func createRequest(_ b: DumbBuffer) -> DisplifRequest {
        .dbufCreate(DisplifDbufCreate(dbufCookie: b.cookie, width: UInt32(b.width), height: UInt32(b.height), bpp: UInt32(b.bpp),
                                      bufferSize: UInt32(b.size), directoryRef: b.directoryRefs[0]))
    }

    /// Ends the grants of `b` (after DBUF_DESTROY, as Linux does for frontend-allocated buffers).
    public func release(_ b: DumbBuffer) {
        for r in b.directoryRefs + b.bufferRefs { domain.grants.endAccess(r) }
        buffers[b.cookie] = nil
    }
}
