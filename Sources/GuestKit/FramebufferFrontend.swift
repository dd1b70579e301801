import Damage
import WriteFault
import EventLoop
import Host
import Support
import XenBus
import XenProtocol

/// A frontend that behaves like Linux's xen-fbfront
/// (drivers/video/fbdev/xen-fbfront.c): 32 bpp,
/// 800×600 in 2 MiB unless the backend's `videoram`/`width`/`height` say
/// otherwise; keys written in one transaction; update rectangles merged into
/// one bounding box and stashed while the OUT ring is full, flushed on the
/// backend's next notification.
public final class FramebufferFrontend: FrontendBase {
    /// Test hooks for a hostile guest: change the shared page after it is
    /// filled in, or publish a different `page-ref`.
    public struct Hostile {
        public var editPage: ((GuestMapping, Int) -> Void)?
        public var pageRef: String?
        public init() {}
    }

    public var hostile = Hostile()
    /// Write `feature-update` = 1 (Linux does); without it the backend
    /// polls the framebuffer and no UPDATE events are sent.
    public var offerFeatureUpdate = true
    /// Frames: shared page, directory pages, framebuffer pages.
    public private(set) var pageFrame: UInt64 = 0
    public private(set) var fbFrame: UInt64 = 0
    public private(set) var memLength = 0
    public private(set) var width = 0
    public private(set) var height = 0
    public private(set) var stride = 0
    private var maxWidth = 0, maxHeight = 0
    public private(set) var updateWanted = false
    public private(set) var featureResize = false
    private var dirty: Rect?
    /// UPDATE events put into the ring, and times the ring was full.
    public private(set) var updatesSent = 0
    public private(set) var stashes = 0
    /// Write tracking (see `startWriteTracking`).
    private var engine: DamagePipeline?
    private var tracker: (any DirtyTracker)?
    private var wantsTracking = false
    private var trackingMode: DirtyTrackingMode = .auto
    private var trackingDelay: Duration = .milliseconds(50)
    /// The technique tracking the framebuffer's writes, nil if none.
    public var writeTracking: DirtyTrackingMode? { tracker?.mode }

    public init(domain: GuestDomain, devid: UInt32 = 0) {
        super.init(domain: domain, type: "vfb", devid: devid)
    }

    var mapping: GuestMapping { domain.memory.mapping }
    var pageOffset: Int { domain.memory.offset(ofFrame: pageFrame) }
    var fbOffset: Int { domain.memory.offset(ofFrame: fbFrame) }

    override func connectBackend() throws {
        // xenfb_probe: video=2,800,600; the backend can only lower videoram.
        var mb = 2
        if let v = readBackend("videoram").flatMap({ Int(xenstoreDecimal: $0) }), v > 0, v < mb { mb = v }
        var w = readBackend("width").flatMap { Int(xenstoreDecimal: $0) } ?? XenfbLayout.defaultWidth
        var h = readBackend("height").flatMap { Int(xenstoreDecimal: $0) } ?? XenfbLayout.defaultHeight
        var fbSize = mb << 20
        if w <= 0 || h <= 0 || w * h * 4 > fbSize {
            w = XenfbLayout.defaultWidth; h = XenfbLayout.defaultHeight; fbSize = 1_920_000
        }
        let fbPages = (fbSize + guestPageSize - 1) / guestPageSize
        let dirPages = (fbPages * 8 + guestPageSize - 1) / guestPageSize
        let mem = domain.memory
        pageFrame = try mem.allocate(frames: 1)
        let dirFrame = try mem.allocate(frames: dirPages)
        fbFrame = try mem.allocate(frames: fbPages)
        memLength = fbSize
        width = w; height = h; stride = w * 4
        maxWidth = w; maxHeight = h
        updateWanted = false
        featureResize = false
        dirty = nil
        // The directory pages hold the framebuffer's frame numbers; pd[i] names directory page i.
        for i in 0..<fbPages {
            mapping.store(fbFrame + UInt64(i), at: mem.offset(ofFrame: dirFrame) + i * 8)
        }
        let p = pageOffset
        mapping.store(Int32(w), at: p + XenfbLayout.width)
        mapping.store(Int32(h), at: p + XenfbLayout.height)
        mapping.store(UInt32(stride), at: p + XenfbLayout.lineLength)
        mapping.store(UInt32(fbSize), at: p + XenfbLayout.memLength)
        mapping.store(UInt8(32), at: p + XenfbLayout.depth)
        for i in 0..<dirPages { mapping.store(dirFrame + UInt64(i), at: p + XenfbLayout.pd64 + i * 8) }
        hostile.editPage?(mapping, p)

        if wantsTracking { try restartWriteTracking() }
        try allocateEventChannel()
        let ref = hostile.pageRef ?? String(pageFrame)
        try store.transaction { t in
            try t.write("\(path)/page-ref", ref)
            try t.write("\(path)/event-channel", String(port))
            try t.write("\(path)/protocol", "x86_64-abi")
            if offerFeatureUpdate { try t.write("\(path)/feature-update", "1") }
        }
        switchState(.initialised)
    }

    override func backendConnected() {
        updateWanted = readBackend("request-update") == "1"
        featureResize = readBackend("feature-resize") == "1"
    }

    override func releaseResources() {
        stopTracker()
        releaseEventChannel()
    }

    // MARK: Write tracking

    /// Sends UPDATE events for whatever is written to the framebuffer, found
    /// by the write-fault engine (as fb_deferred_io does in Linux, with a
    /// `delay` of HZ/20): drawing code then needs no `update` calls.
    public func startWriteTracking(mode: DirtyTrackingMode = .auto, delay: Duration = .milliseconds(50)) throws {
        trackingMode = mode
        trackingDelay = delay
        wantsTracking = true
        try restartWriteTracking()
    }

    private func restartWriteTracking() throws {
        stopTracker()
        let pages = (memLength + guestPageSize - 1) / guestPageSize
        guard pages > 0, let base = mapping.baseAddress, let geometry = FramebufferGeometry(width: width, height: height, lineLength: stride)
        else { throw XenBusError("vfb frontend: no framebuffer to track yet") }
        let t = try makeDirtyTracker(base: base + fbOffset, byteCount: pages * guestPageSize, mode: trackingMode)
        let e = DamagePipeline(loop: domain.loop, tracker: t, geometry: geometry, delay: trackingDelay) { [weak self] rects in
            for r in rects { self?.update(r) }
        }
        try e.start()
        tracker = t
        engine = e
    }

    public func stopWriteTracking() {
        wantsTracking = false
        stopTracker()
    }

    private func stopTracker() {
        engine?.stop()
        engine = nil
        tracker?.close()
        tracker = nil
    }

    override func interrupt() {
        // xenfb_event_handler: no IN events are understood; consume them, then flush the stash.
        let p = pageOffset
        if let prod = mapping.load(UInt32.self, at: p + XenfbLayout.inProd),
           mapping.load(UInt32.self, at: p + XenfbLayout.inCons) != prod {
            mapping.store(prod, at: p + XenfbLayout.inCons)
            notify()
        }
        refresh(nil)
    }

    // MARK: Drawing

    /// Runs `body` over the visible framebuffer: `stride`-byte rows of XRGB pixels.
    public func withPixels<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R? {
        try mapping.withMutableBytes(at: fbOffset, count: stride * height, body)
    }

    /// Fills `rect` (clipped) with `color` (0x00RRGGBB); does not send an update.
    public func fill(_ rect: Rect, color: UInt32) {
        let r = rect.intersection(Rect(x: 0, y: 0, width: width, height: height))
        guard !r.isEmpty else { return }
        let s = stride
        _ = withPixels { px in
            for y in r.y..<r.maxY {
                let row = (px.baseAddress! + y * s).assumingMemoryBound(to: UInt32.self)
                for x in r.x..<r.maxX { row[x] = color }
            }
        }
    }

    /// Sets one pixel (ignored outside the screen).
    public func setPixel(x: Int, y: Int, color: UInt32) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        mapping.store(color, at: fbOffset + y * stride + x * 4)
    }

    public func pixel(x: Int, y: Int) -> UInt32? {
        guard x >= 0, y >= 0, x < width, y < height else { return nil }
        return mapping.load(UInt32.self, at: fbOffset + y * stride + x * 4)
    }

    /// Tells the backend that `rect` changed, as the fbdev ops do.
    public func update(_ rect: Rect) {
        refresh(rect.intersection(Rect(x: 0, y: 0, width: width, height: height)))
    }

    /// xenfb_refresh: merge with the stash; stash if the ring is full, else send.
    private func refresh(_ rect: Rect?) {
        guard updateWanted, state == .connected else { return }
        var box = rect ?? Rect(x: 0, y: 0, width: 0, height: 0)
        if let d = dirty { box = box.union(d) }
        guard !box.isEmpty else { dirty = nil; return }
        if queueFull() {
            dirty = box
            stashes += 1
            return
        }
        dirty = nil
        send(XenfbOutEvent.update(x: Int32(box.x), y: Int32(box.y), width: Int32(box.width), height: Int32(box.height)).slot)
        updatesSent += 1
    }

    private func queueFull() -> Bool {
        let p = pageOffset
        let prod = mapping.load(UInt32.self, at: p + XenfbLayout.outProd) ?? 0
        let cons = mapping.load(UInt32.self, at: p + XenfbLayout.outCons) ?? 0
        return prod &- cons >= UInt32(XenfbLayout.outRingLength)
    }

    /// Puts any event into the OUT ring, even a hostile one (no checks).
    public func send(_ slot: RingSlot) {
        let ring = SharedRing.vfbOut(pageMapping())
        let prod = ring.loadProd()
        ring.put(slot, at: prod)
        Barrier.write()
        ring.storeProd(prod &+ 1)
        notify()
    }

    /// The shared page, for tests that corrupt it on purpose.
    public func pageMappingForTests() -> GuestMapping { pageMapping() }

    /// The shared page alone, as a view the ring helpers can use.
    func pageMapping() -> GuestMapping {
        // A sub-view of guest RAM; the domain's mapping outlives it.
        let base = mapping.baseAddress! + pageOffset
        return GuestMapping(base: base, byteCount: guestPageSize, writable: true) { _, _ in }
    }

    /// Sends RESIZE as xenfb_set_par does: only with `feature-resize`, never
    /// larger than the initial mode, same depth, offset 0. Returns whether it was sent.
    @discardableResult
    public func resize(width w: Int, height h: Int) -> Bool {
        guard featureResize, state == .connected, w > 0, h > 0, w <= maxWidth, h <= maxHeight else { return false }
        sendResize(width: w, height: h, stride: w * 4, depth: 32, offset: 0)
        width = w; height = h; stride = w * 4
        if tracker != nil { try? restartWriteTracking() }
        return true
    }

    /// Sends any RESIZE event (a hostile guest's too); the local geometry is unchanged.
    public func sendResize(width w: Int, height h: Int, stride s: Int, depth: Int, offset: Int) {
        send(XenfbOutEvent.resize(width: Int32(truncatingIfNeeded: w), height: Int32(truncatingIfNeeded: h),
                                  stride: Int32(truncatingIfNeeded: s), depth: Int32(truncatingIfNeeded: depth),
                                  offset: Int32(truncatingIfNeeded: offset)).slot)
    }
}
