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
/// publishes the picture into the console.
///
/// Its damage takes the one `DamagePipeline`: the guest's UPDATE rectangles
/// are the source (Linux's xen-fbfront tracks its writes with deferred I/O
/// and batches them already, so the pipeline publishes at once when idle and
/// coalesces only under load), and the confirm stage copies what really
/// changed from guest memory into the console's frame (a shadow compare at 32
/// bpp, a convert-and-compare at 8/16/24). A frontend without
/// `feature-update` has the periodic source instead: the whole frame is a
/// candidate every `pollInterval`, and the confirm stage finds the changes.
/// A RESIZE takes effect at the next tick, so a storm of them reallocates the
/// frame at most once per tick.
public final class VfbDevice: XenBusDeviceHandler {
    let console: Console
    let config: BackendConfig
    var log: Logger = Log.logger("vfb")

    private var channel: FrontendChannel?
    /// The shared page (the channel's, or one `attach` was given).
    private var page: GuestMapping?
    private var framebuffer: GuestMapping?
    private weak var device: XenBusDevice?
    /// Private OUT-ring consumer index: `out_cons` on the page is written, never trusted.
    private var outCons: UInt32 = 0
    private var fbLen = 0
    public private(set) var geometry: VfbGeometry?
    public private(set) var featureUpdate = false
    private var pipeline: DamagePipeline?
    /// A RESIZE was accepted: the console's frame changes at the next tick.
    private var resizePending = false
    private var rewroteState = false
    private var warnings = 0
    /// Counters for tests and logs.
    public private(set) var updatesReceived = 0
    public private(set) var resizesRefused = 0
    /// RESIZEs that reached the console (at most one per tick).
    public private(set) var resizesApplied = 0
    /// The damage pipeline's counters (ticks, batches published...).
    public var statistics: DamagePipeline.Statistics? { pipeline?.statistics }

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
        let proto = try device.readFrontend("protocol")
        featureUpdate = try device.readFrontend("feature-update") == "1"
        let channel = try FrontendChannel(device) { [weak self] in self?.processOutRing() }
        self.channel = channel
        let page = channel.page
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
        outCons = page.load(UInt32.self, at: XenfbLayout.outCons) ?? 0
        try start(geometry, loop: device.loop)
        if featureUpdate { try device.writeBackend("request-update", "1") }
        rewroteState = false
        log.info("connected: \(geometry), \(fb.length) bytes in \(fb.pages) pages, protocol \(proto ?? "(none)"), feature-update \(featureUpdate)")
    }

    public func frontendConnected(_ device: XenBusDevice) throws {
        // QEMU rewrites state 4 once: a frontend that missed InitWait sees Connected again.
        if !rewroteState {
            try device.writeBackend("state", XenbusState.connected.xenstoreValue)
            rewroteState = true
        }
    }

    public func disconnect(_ device: XenBusDevice) {
        pipeline?.stop()
        pipeline = nil
        resizePending = false
        channel?.close()
        channel = nil
        page?.unmap()
        page = nil
        framebuffer?.unmap()
        framebuffer = nil
        geometry = nil
    }

    /// Takes an already mapped shared page and framebuffer as `connect` does
    /// once it has mapped them, without a XenBus device or event channel, so
    /// the OUT-ring parser and the copy into the frame can be driven directly
    /// (the fuzz targets in Fuzz/). `geometry` must come from
    /// `describeFramebuffer` for a framebuffer of `fbLen` bytes. The pipeline
    /// is not started: nothing runs until `flush`.
    public func attach(page: GuestMapping, framebuffer: GuestMapping, fbLen: Int, geometry: VfbGeometry, loop: EventLoop) {
        self.page = page
        self.framebuffer = framebuffer
        self.fbLen = fbLen
        featureUpdate = true
        outCons = page.load(UInt32.self, at: XenfbLayout.outCons) ?? 0
        do {
            try start(geometry, loop: loop, run: false)
        } catch {
            warn("cannot attach: \(error)")
        }
    }

    /// Update rectangles waiting for the next tick (within the geometry).
    public var pendingRects: [Rect] { pipeline?.pendingDamage ?? [] }

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
                stride: Int(h.lineLength), offset: 0, maxFrameBytes: limit)
            guard let dirs = XenfbPageHeader.directories(in: bytes, wide: wide, count: dirCount) else {
                throw GeometryError.tooManyDirectories(dirCount, max: maxDirs)
            }
            return (FramebufferLayout(length: memLength, pages: pages, entrySize: entry), dirs, geometry)
        }
    }

    /// The pipeline's view of a validated geometry.
    private static func pipelineGeometry(_ g: VfbGeometry) -> FramebufferGeometry? {
        FramebufferGeometry(width: g.width, height: g.height, lineLength: g.stride, depth: g.depth, offset: g.offset)
    }

    /// Sets up the damage pipeline for the connected geometry; the whole
    /// frame is its first damage.
    private func start(_ g: VfbGeometry, loop: EventLoop, run: Bool = true) throws {
        guard let fg = Self.pipelineGeometry(g) else { throw XenBusError("inconsistent geometry \(g)") }
        geometry = g
        resizePending = true
        let pipeline = DamagePipeline(
            loop: loop, tracker: nil, geometry: fg, delay: config.updateDelay, maxRects: config.maxQueuedRects,
            scheduling: .leading, pollInterval: featureUpdate ? nil : config.pollInterval,
            confirm: { [unowned self] rects in self.confirm(rects) },
            onUpdate: { [unowned self] rects in self.console.update(rects) })
        self.pipeline = pipeline
        if run { try pipeline.start() }
        pipeline.add([fg.bounds])
    }

    // MARK: OUT ring

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
        channel?.notify()
    }

    private func handle(_ event: XenfbOutEvent) {
        switch event {
        case .update(let x, let y, let width, let height):
            updatesReceived += 1
            // Int arithmetic on i32 inputs: x + w cannot overflow. The
            // pipeline clips to the geometry; bogus or empty rects vanish.
            pipeline?.add([Rect(x: Int(x), y: Int(y), width: Int(width), height: Int(height))])
        case .resize(let width, let height, let lineLength, let bpp, let start):
            let w = Int(width), h = Int(height), stride = Int(lineLength), depth = Int(bpp), offset = Int(start)
            do {
                let g = try VfbGeometry.configure(fbLen: fbLen, width: w, height: h, depth: depth, stride: stride, offset: offset,
                                                  maxFrameBytes: config.framebufferLimit)
                guard let fg = Self.pipelineGeometry(g) else { throw GeometryError.empty(width: g.width, height: g.height) }
                if g != geometry { log.info("resize to \(g)") }
                // The device reads the new layout from now on; the console's
                // frame follows at the next tick, once however many came.
                geometry = g
                resizePending = true
                pipeline?.setGeometry(fg)
            } catch {
                resizesRefused += 1
                warn("refused resize to \(w)x\(h)x\(depth) stride \(stride) offset \(offset): \(error)")
            }
        case .unknown:
            break // unknown types are ignored
        }
    }

    // MARK: The confirm stage

    /// Publishes a pending resize, then copies what really changed inside
    /// `rects` from guest memory into the console's frame and returns it.
    private func confirm(_ candidates: [Rect]) -> [Rect] {
        guard let g = geometry, let fb = framebuffer else { return [] }
        var rects = candidates
        if resizePending {
            resizePending = false
            if console.frame.width != g.width || console.frame.height != g.height {
                console.resize(width: g.width, height: g.height)
                resizesApplied += 1
            }
            rects = [Rect(x: 0, y: 0, width: g.width, height: g.height)]
        }
        let maxRects = config.maxQueuedRects
        return console.withFrame { frame in
            if g.depth == 32 {
                let shadow = PixelBuffer(pixels: frame.pixels, width: frame.width, height: frame.height, stride: frame.stride)
                // The guest side covers exactly the validated geometry
                // (offset + height × stride ≤ fb_len, width × 4 ≤ stride),
                // through GuestMapping's bounds-checked range; ShadowCompare
                // only reads the live side.
                return fb.withBytes(at: g.offset, count: g.height * g.stride) { bytes in
                    let live = PixelBuffer(pixels: UnsafeMutableRawPointer(mutating: bytes.baseAddress!),
                                           width: g.width, height: g.height, stride: g.stride)
                    return ShadowCompare.confirm(rects, live: live, shadow: shadow, maxRects: maxRects)
                } ?? []
            }
            return Self.convertAndConfirm(rects, geometry: g, framebuffer: fb, frame: frame, maxRects: maxRects)
        }
    }

    /// The confirm stage at 8, 16 and 24 bpp: converts each candidate row to
    /// XRGB, compares it with the frame's row, copies it if it differs, and
    /// returns bands of the rows that changed.
    static func convertAndConfirm(_ rects: [Rect], geometry g: VfbGeometry, framebuffer fb: GuestMapping,
                                  frame: Frame, maxRects: Int) -> [Rect] {
        let clip = Rect(x: 0, y: 0, width: min(g.width, frame.width), height: min(g.height, frame.height))
        var row = [UInt32](repeating: 0, count: clip.width)
        var changed: [Rect] = []
        for candidate in rects {
            let r = candidate.intersection(clip)
            guard !r.isEmpty else { continue }
            var runStart = -1
            for y in r.y ..< r.maxY {
                let dst = frame.pixels + y * frame.stride + r.x * 4
                let differs: Bool = row.withUnsafeMutableBytes { tmp in
                    let converted = fb.withBytes(at: g.offset + y * g.stride + r.x * g.bytesPerPixel, count: r.width * g.bytesPerPixel) {
                        PixelConversion.convert(depth: g.depth, source: $0, count: r.width, dest: tmp.baseAddress!)
                        return true
                    } ?? false
                    guard converted, memcmp(tmp.baseAddress!, dst, r.width * 4) != 0 else { return false }
                    dst.copyMemory(from: tmp.baseAddress!, byteCount: r.width * 4)
                    return true
                }
                if differs {
                    if runStart < 0 { runStart = y }
                } else if runStart >= 0 {
                    changed.append(Rect(x: r.x, y: runStart, width: r.width, height: y - runStart))
                    runStart = -1
                }
            }
            if runStart >= 0 { changed.append(Rect(x: r.x, y: runStart, width: r.width, height: r.maxY - runStart)) }
        }
        return Coalescer.coalesce(changed, maxRects: maxRects, mergeSlack: 4096)
    }

    /// Runs the pipeline's tick now (tests, fuzzing, `refreshNow`).
    public func flush() {
        pipeline?.flush()
    }
}

extension VfbDevice {
    /// Takes in, now, everything the guest has announced: drains the OUT
    /// ring and runs the pipeline's tick at once (for a frontend without
    /// `feature-update`, a compare of the whole frame). QMP `screendump`
    /// calls it so the file shows the guest's current frame, as QEMU's
    /// screendump forces a display refresh first.
    public func refreshNow() {
        guard let g = geometry else { return }
        processOutRing()
        if !featureUpdate { pipeline?.add([Rect(x: 0, y: 0, width: g.width, height: g.height)]) }
        pipeline?.flush()
    }
}
