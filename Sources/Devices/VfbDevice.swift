#if canImport(Glibc)
import Glibc
#endif
import Damage
import Console
import EventLoop
import Host
import Logging
import Support
import XenBus
import XenProtocol

/// The vfb backend for one device: maps the guest's `xenfb_page` and
/// framebuffer, validates the geometry, consumes UPDATE and RESIZE events and
/// copies changed pixels into the console's `Frame` (the shadow copy displays read)
/// on a coalescing tick. Frontends without `feature-update` are compared
/// against the frame periodically instead, while connected.
public final class VfbDevice: XenBusDeviceHandler {
    let console: Console
    let config: BackendConfig
    var log: Logger = Log.logger("vfb")

    private var page: GuestMapping?
    private var framebuffer: GuestMapping?
    private var evtchn: EventChannels?
    private var localPort: UInt32 = 0
    private weak var device: XenBusDevice?
    /// Private OUT-ring consumer index: `out_cons` on the page is written, never trusted.
    private var outCons: UInt32 = 0
    private var fbLen = 0
    public private(set) var geometry: VfbGeometry?
    public private(set) var featureUpdate = false
    private var queued: [Rect] = []
    private var fullScreen = false
    private var flushTimer: EventLoop.TimerID?
    private var pollTimer: EventLoop.TimerID?
    private var rewroteState = false
    private var warnings = 0
    /// Counters for tests and logs.
    public private(set) var updatesReceived = 0
    public private(set) var resizesRefused = 0
    public private(set) var fullScreenFlushes = 0

    public init(console: Console, config: BackendConfig) {
        self.console = console
        self.config = config
    }

    /// Logs a guest-caused problem, at most 20 times per device (XSA-180).
    private func warn(_ message: @autoclosure () -> String) {
        warnings += 1
        if warnings <= 20 { log.warning("\(message())") }
        if warnings == 20 { log.warning("further warnings for this device suppressed") }
    }

    // MARK: XenBusDeviceHandler

    public func initialise(_ device: XenBusDevice) throws {
        log = device.log
        self.device = device
        try device.writeBackend("feature-resize", "1")
    }

    public func connect(_ device: XenBusDevice) throws {
        self.device = device
        guard let refText = device.readFrontend("page-ref"), let pageRef = UInt64(xenstoreDecimal: refText) else {
            throw XenBusError("frontend key page-ref is missing or not decimal")
        }
        guard let portText = device.readFrontend("event-channel"), let remotePort = UInt32(xenstoreDecimal: portText) else {
            throw XenBusError("frontend key event-channel is missing or not decimal")
        }
        let proto = device.readFrontend("protocol")
        featureUpdate = device.readFrontend("feature-update") == "1"

        let page = try device.host.mapForeign(domid: device.domid, frames: [pageRef], writable: true)
        self.page = page
        // One copy of the header and page directory; everything below parses the copy.
        guard let header = page.bytes(at: 0, count: XenfbLayout.inRingOffset) else { throw XenBusError("shared page too small") }
        let (fb, frames, geometry) = try Self.describeFramebuffer(header: header, protocol: proto, limit: config.framebufferLimit)
        let dirs = try device.host.mapForeign(domid: device.domid, frames: frames, writable: false)
        // One copy of the directory pages; the frame list is decoded from the copy.
        guard let list = dirs.bytes(at: 0, count: fb.pages * fb.entrySize),
              let fbFrames = list.withUnsafeBytes({ XenfbPageHeader.frameList(in: $0, entrySize: fb.entrySize, count: fb.pages) }) else {
            dirs.unmap()
            throw XenBusError("page directory too small")
        }
        dirs.unmap()
        framebuffer = try device.host.mapForeign(domid: device.domid, frames: fbFrames, writable: false)
        fbLen = fb.length

        let ev = try device.host.openEventChannels()
        evtchn = ev
        localPort = try ev.bindInterdomain(remoteDomain: device.domid, remotePort: remotePort)
        try device.loop.watch(fd: ev.fd) { [weak self] _ in self?.eventChannelFired() }

        outCons = page.load(UInt32.self, at: XenfbLayout.outCons) ?? 0
        apply(geometry)
        if featureUpdate {
            try device.writeBackend("request-update", "1")
        } else {
            pollTimer = device.loop.addTimer(after: config.pollInterval, repeating: config.pollInterval) { [weak self] in self?.poll() }
        }
        rewroteState = false
        log.info("connected: \(geometry), \(fb.length) bytes in \(fb.pages) pages, protocol \(proto ?? "(none)"), feature-update \(featureUpdate)")
    }

    public func frontendConnected(_ device: XenBusDevice) {
        // QEMU rewrites state 4 once: a frontend that missed InitWait sees Connected again.
        if !rewroteState {
            rewroteState = true
            try? device.writeBackend("state", XenbusState.connected.xenstoreValue)
        }
    }

    public func disconnect(_ device: XenBusDevice) {
        if let t = flushTimer { device.loop.cancelTimer(t); flushTimer = nil }
        if let t = pollTimer { device.loop.cancelTimer(t); pollTimer = nil }
        if let ev = evtchn {
            device.loop.unwatch(fd: ev.fd)
            try? ev.unbind(port: localPort)
            ev.close()
        }
        evtchn = nil
        page?.unmap()
        page = nil
        framebuffer?.unmap()
        framebuffer = nil
        geometry = nil
        queued.removeAll()
        fullScreen = false
    }

    /// Takes an already mapped shared page and framebuffer as `connect` does
    /// once it has mapped them, without a XenBus device or event channel, so
    /// the OUT-ring parser and the copy into the frame can be driven directly
    /// (the fuzz targets in Fuzz/). `geometry` must come from
    /// `describeFramebuffer` for a framebuffer of `fbLen` bytes.
    public func attach(page: GuestMapping, framebuffer: GuestMapping, fbLen: Int, geometry: VfbGeometry) {
        self.page = page
        self.framebuffer = framebuffer
        self.fbLen = fbLen
        outCons = page.load(UInt32.self, at: XenfbLayout.outCons) ?? 0
        apply(geometry)
    }

    /// Update rectangles waiting for the next flush (within the geometry).
    public var pendingRects: [Rect] { queued }

    // MARK: Framebuffer description

    public struct FramebufferLayout: Sendable {
        public var length: Int
        public var pages: Int
        public var entrySize: Int
    }

    /// Checks the description in the shared page copy and returns the
    /// framebuffer's size, the directory frames to map, and the geometry.
    public static func describeFramebuffer(header: [UInt8], protocol proto: String?, limit: Int) throws -> (FramebufferLayout, [UInt64], VfbGeometry) {
        try header.withUnsafeBytes { bytes in
            guard let h = XenfbPageHeader(bytes) else { throw XenBusError("shared page too small") }
            // Never mix the 32- and 64-bit layouts: decide once (xen/io/protocols.h names).
            let wide: Bool
            switch proto {
            case "x86_32-abi": wide = false
            case nil: wide = h.firstDirectory64 != 0
            default: wide = true // x86_64-abi, arm-abi, or unknown: native
            }
            let memLength = Int(h.memLength)
            guard memLength > 0 else { throw GeometryError.emptyFramebuffer }
            guard memLength <= limit else { throw GeometryError.memLengthOverLimit(memLength, limit: limit) }
            let entry = wide ? 8 : 4
            let pages = (memLength + guestPageSize - 1) / guestPageSize
            let perDirectory = guestPageSize / entry
            let dirCount = (pages + perDirectory - 1) / perDirectory
            let maxDirs = wide ? XenfbLayout.maxDirectories64 : XenfbLayout.maxDirectories32
            guard dirCount <= maxDirs else { throw GeometryError.tooManyDirectories(dirCount, max: maxDirs) }
            let geometry = try VfbGeometry.configure(
                fbLen: memLength, width: Int(h.width), height: Int(h.height), depth: Int(h.depth),
                stride: Int(h.lineLength), offset: 0)
            guard let dirs = XenfbPageHeader.directories(in: bytes, wide: wide, count: dirCount) else {
                throw GeometryError.tooManyDirectories(dirCount, max: maxDirs)
            }
            return (FramebufferLayout(length: memLength, pages: pages, entrySize: entry), dirs, geometry)
        }
    }

    private func apply(_ g: VfbGeometry) {
        geometry = g
        if console.frame.width != g.width || console.frame.height != g.height {
            console.resize(width: g.width, height: g.height)
        }
        // Rectangles queued for the old geometry may lie outside the new one;
        // the full-screen update covers them (found by Fuzz/FuzzVfbRing).
        queued.removeAll()
        fullScreen = true
        scheduleFlush()
    }

    // MARK: OUT ring

    private func eventChannelFired() {
        guard let ev = evtchn else { return }
        // One pending() per wake-up: the fd is level-triggered, and a
        // blocking xenevtchn fd must never be read when nothing is pending.
        if let port = try? ev.pending() { try? ev.unmask(port: port) }
        processOutRing()
    }

    /// Drains the OUT ring: each 40-byte slot is copied once and parsed from
    /// the copy (XSA-155); the private consumer index is the only one trusted.
    public func processOutRing() {
        guard let page else { return }
        let ring = SharedRing.vfbOut(page)
        let prod = ring.loadProd()
        Barrier.read()
        guard prod &- outCons <= UInt32(XenfbLayout.outRingLength) else {
            warn("OUT ring producer \(prod) is more than \(XenfbLayout.outRingLength) ahead of consumer \(outCons); ignoring the ring")
            return
        }
        guard prod != outCons else { return }
        var cons = outCons
        while cons != prod {
            if let slot = ring.copySlot(cons) { handle(XenfbOutEvent(slot)) }
            cons &+= 1
        }
        Barrier.full()
        outCons = cons
        ring.storeCons(cons)
        // Linux flushes a stashed update on this notification: always send it.
        if let ev = evtchn { try? ev.notify(port: localPort) }
    }

    private func handle(_ event: XenfbOutEvent) {
        switch event {
        case .update(let x, let y, let width, let height):
            updatesReceived += 1
            guard let g = geometry else { return }
            // Int arithmetic on i32 inputs: x + w cannot overflow.
            let r = Rect(x: Int(x), y: Int(y), width: Int(width), height: Int(height))
            let clipped = r.intersection(Rect(x: 0, y: 0, width: g.width, height: g.height))
            guard !clipped.isEmpty else { return } // bogus or empty: dropped
            if queued.count >= config.maxQueuedRects {
                fullScreen = true
            } else if clipped.width == g.width && clipped.height > g.height / 2 {
                fullScreen = true // scroll detector
            } else {
                queued.append(clipped)
            }
            scheduleFlush()
        case .resize(let width, let height, let lineLength, let bpp, let start):
            let w = Int(width), h = Int(height), stride = Int(lineLength), depth = Int(bpp), offset = Int(start)
            do {
                let g = try VfbGeometry.configure(fbLen: fbLen, width: w, height: h, depth: depth, stride: stride, offset: offset)
                log.info("resize to \(g)")
                apply(g)
            } catch {
                resizesRefused += 1
                warn("refused resize to \(w)x\(h)x\(depth) stride \(stride) offset \(offset): \(error)")
            }
        case .unknown:
            break // unknown types are ignored
        }
    }

    // MARK: Copying into the frame

    private func scheduleFlush() {
        guard flushTimer == nil, let loop = device?.loop else { return }
        flushTimer = loop.addTimer(after: config.updateDelay) { [weak self] in
            self?.flushTimer = nil
            self?.flush()
        }
    }

    /// The coalescing tick: merges the queued rectangles (or takes the whole
    /// screen), copies what really changed from guest memory into the frame,
    /// then tells the displays. 32-bit frames go through the shadow compare,
    /// so an over-reported rectangle costs a compare, not a repaint.
    public func flush() {
        guard let g = geometry else { return }
        let screen = Rect(x: 0, y: 0, width: g.width, height: g.height)
        if fullScreen { fullScreenFlushes += 1 }
        let rects = fullScreen ? [screen] : Coalescer.coalesce(queued, maxRects: config.maxQueuedRects, mergeSlack: 4096)
        fullScreen = false
        queued.removeAll(keepingCapacity: true)
        guard !rects.isEmpty else { return }
        if g.depth == 32, let changed = withLiveFrame(g, { ShadowCompare.confirm(rects, live: $0, shadow: $1) }) {
            if !changed.isEmpty { console.update(changed) }
            return
        }
        for r in rects { copy(r, geometry: g) }
        console.update(rects)
    }

    /// Runs `body` with the guest's 32-bit framebuffer and the frame as pixel
    /// buffers. The guest side covers exactly the validated geometry
    /// (offset + height × stride ≤ fb_len, width × 4 ≤ stride), through
    /// `GuestMapping`'s bounds-checked range.
    private func withLiveFrame<R>(_ g: VfbGeometry, _ body: (PixelBuffer, PixelBuffer) -> R) -> R? {
        guard let fb = framebuffer, g.depth == 32 else { return nil }
        let frame = console.frame
        let shadow = PixelBuffer(pixels: frame.pixels, width: frame.width, height: frame.height, stride: frame.stride)
        return fb.withBytes(at: g.offset, count: g.height * g.stride) { bytes in
            // ShadowCompare only reads the live side.
            let live = PixelBuffer(pixels: UnsafeMutableRawPointer(mutating: bytes.baseAddress!), width: g.width, height: g.height, stride: g.stride)
            return body(live, shadow)
        }
    }

    /// Copies one rectangle (inside the geometry) of guest pixels into the frame.
    private func copy(_ r: Rect, geometry g: VfbGeometry) {
        guard let fb = framebuffer else { return }
        let frame = console.frame
        let rect = r.intersection(Rect(x: 0, y: 0, width: min(g.width, frame.width), height: min(g.height, frame.height)))
        guard !rect.isEmpty else { return }
        let bpp = g.bytesPerPixel
        for row in rect.y..<rect.maxY {
            let src = g.offset + row * g.stride + rect.x * bpp
            let dst = frame.pixels + row * frame.stride + rect.x * 4
            _ = fb.withBytes(at: src, count: rect.width * bpp) { bytes in
                PixelConversion.convert(depth: g.depth, source: bytes, count: rect.width, dest: dst)
            }
        }
    }

    /// For frontends without `feature-update`: compares the guest framebuffer
    /// with the frame (64×64 tiles at 32 bpp, bands of rows otherwise) and
    /// copies what differs.
    private func poll() {
        guard let g = geometry, let fb = framebuffer else { return }
        if g.depth == 32, let tiles = withLiveFrame(g, { ShadowCompare.scanTiles(live: $0, shadow: $1) }) {
            let rects = Coalescer.coalesce(tiles, maxRects: config.maxQueuedRects, mergeSlack: 4096)
            if !rects.isEmpty { console.update(rects) }
            return
        }
        let frame = console.frame
        let width = min(g.width, frame.width), height = min(g.height, frame.height)
        let band = 16
        var row = [UInt32](repeating: 0, count: width)
        var changed: [Rect] = []
        var y0 = 0
        while y0 < height {
            let y1 = min(y0 + band, height)
            var differs = false
            for y in y0..<y1 {
                let dst = frame.pixels + y * frame.stride
                let converted: Bool? = row.withUnsafeMutableBytes { tmp in
                    fb.withBytes(at: g.offset + y * g.stride, count: width * g.bytesPerPixel) { bytes in
                        PixelConversion.convert(depth: g.depth, source: bytes, count: width, dest: tmp.baseAddress!)
                    }.map { true }
                }
                guard converted == true else { continue }
                if row.withUnsafeBytes({ memcmp($0.baseAddress!, dst, width * 4) }) != 0 {
                    differs = true
                    row.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: width * 4) }
                }
            }
            if differs { changed.append(Rect(x: 0, y: y0, width: width, height: y1 - y0)) }
            y0 = y1
        }
        if !changed.isEmpty { console.update(changed) }
    }
}

extension VfbDevice {
    /// Takes in, now, everything the guest has announced: drains the OUT
    /// ring and runs the coalescing tick at once (or, for a frontend without
    /// `feature-update`, compares the framebuffer). QMP `screendump` calls it
    /// so the file shows the guest's current frame, as QEMU's screendump
    /// forces a display refresh first.
    public func refreshNow() {
        guard geometry != nil else { return }
        processOutRing()
        if let t = flushTimer, let loop = device?.loop {
            loop.cancelTimer(t)
            flushTimer = nil
        }
        if featureUpdate { flush() } else { poll() }
    }
}
