#if canImport(Glibc)
import Glibc
#endif
import Console
import Damage
import EventLoop
import Host
import Logging
import Support
import XenBus
import XenProtocol

/// The vdispl backend for one device (xen/io/displif.h, the PV display
/// protocol Linux's drm/xen-front speaks): each configured connector is a
/// screen, shown on a console of its own.
///
/// **Handshake.** At Initialising the connectors are read from the
/// toolstack's keys in the frontend directory (`N/resolution`,
/// `N/unique-id`, `be-alloc`) and each claims a console (device
/// `vdispl-<devid>`, head N); then InitWait. When the frontend is
/// Initialised, each connector's request ring and event page are mapped by
/// grant (`N/req-ring-ref`, `N/evt-ring-ref`) and its two event channels
/// bound (`N/req-event-channel`, `N/evt-event-channel`), all on one
/// event-channel handle; then Connected.
///
/// **Requests.** Every request is copied off the ring once, validated, and
/// answered with status 0 or `-XEN_E*`; a bad one costs the guest that
/// request, never the device or the process. Buffers (DBUF_CREATE) are
/// frontend-allocated: the page directory is followed for exactly the pages
/// `buffer_sz` needs and the buffer is mapped read-only by grant. The pitch
/// is not on the wire: like drm/xen-front, both ends take
/// `ceil(width × bpp / 8)`, and a framebuffer (FB_ATTACH) uses its buffer's
/// rows from `data_ofs` on. Cookies are per device, whichever connector's
/// ring carries them; SET_CONFIG and PG_FLIP act on the connector whose
/// ring carried them.
///
/// **Pictures.** A connector shows the framebuffer of its last SET_CONFIG or
/// PG_FLIP, at (x, y) on a screen of the connector's resolution, converted
/// to XRGB8888, through the one `DamagePipeline`: a flip or a new
/// configuration makes the whole screen damage, and a periodic compare
/// (`vdisplPollInterval`, backing off to `vdisplPollIntervalMax` while
/// nothing changes) catches drawing into the shown buffer without a flip
/// (drm/xen-front reports no damage). The confirm stage copies what
/// changed into the console; the tick that copies a flipped buffer then
/// sends its XENDISPL_EVT_PG_FLIP event with the cookie, so flips complete
/// at the pipeline's pace (at once when idle, at most once per
/// `updateDelay` under load), like a display's refresh.
///
/// **Limits** (`BackendConfig`): connectors, buffers, framebuffers, mapped
/// bytes and frame size per device; pending flip events per connector
/// (one ring's worth). `be-alloc=1` (backend-allocated buffers) is refused
/// with -EOPNOTSUPP; GET_EDID with -EOPNOTSUPP (optional in displif.h: the
/// `resolution` key rules).
public final class VdisplDevice: XenBusDeviceHandler {
    let consoles: Consoles
    let config: BackendConfig
    var log: Logger = Log.logger("vdispl")

    /// A display buffer (DBUF_CREATE): frontend pages mapped read-only.
    final class DisplayBuffer {
        let cookie: UInt64
        let width: Int, height: Int, bpp: Int
        /// Bytes per row: ceil(width × bpp / 8), as drm/xen-front computes it.
        let stride: Int
        let dataOffset: Int
        let mapping: GuestMapping
        let pages: Int

        init(cookie: UInt64, width: Int, height: Int, bpp: Int, stride: Int, dataOffset: Int, mapping: GuestMapping, pages: Int) {
            self.cookie = cookie
            self.width = width
            self.height = height
            self.bpp = bpp
            self.stride = stride
            self.dataOffset = dataOffset
            self.mapping = mapping
            self.pages = pages
        }
    }

    /// A framebuffer (FB_ATTACH): pixels of a format over a display buffer.
    struct Framebuffer {
        let cookie: UInt64
        let buffer: DisplayBuffer
        let width: Int, height: Int
        let format: DisplifPixelFormat
    }

    /// What a connector shows (SET_CONFIG, then PG_FLIP).
    struct Scanout: Equatable {
        var fb: UInt64
        var x: Int, y: Int, width: Int, height: Int
    }

    /// One connector: a screen, its rings and what it shows.
    public final class Connector {
        public let index: Int
        public let resolution: DisplifResolution
        public let uniqueID: String
        public let console: Console
        /// The console's number (QMP screendump, the displays).
        public let consoleIndex: Int
        var requestRing: BackRing<RingEntry64>?
        var eventPage: GuestMapping?
        var requestPort: UInt32?
        var eventPort: UInt32?
        /// Private in_prod of the event page: written, never read back.
        var eventProd: UInt32 = 0
        /// XENDISPL_EVT_PG_FLIP ids count from 0 on each connection.
        var nextEventID: UInt16 = 0
        var scanout: Scanout?
        /// The screen must be repainted outside what is shown (it changed).
        var repaint = true
        var pendingFlips: [UInt64] = []
        var pipeline: DamagePipeline?
        /// The compare for drawing without a flip: one-shot, re-armed with a
        /// delay that doubles while compares find nothing.
        var pollTimer: EventLoop.TimerID?
        var pollDelay: Duration = .zero
        var polling = false
        /// The delay until the next compare (tests, logs).
        public var pollInterval: Duration { pollDelay }
        var warnedRing = false
        /// Flip events sent (tests, logs).
        public internal(set) var flipsCompleted = 0
        /// Flips waiting for the screen to show them.
        public var pendingFlipCount: Int { pendingFlips.count }

        init(index: Int, resolution: DisplifResolution, uniqueID: String, console: Console, consoleIndex: Int) {
            self.index = index
            self.resolution = resolution
            self.uniqueID = uniqueID
            self.console = console
            self.consoleIndex = consoleIndex
        }
    }

    public private(set) var connectors: [Connector] = []
    var buffers: [UInt64: DisplayBuffer] = [:]
    var framebuffers: [UInt64: Framebuffer] = [:]
    /// Pages all buffers map now (bounded by `vdisplMaxMappedBytes`).
    public private(set) var mappedPages = 0
    private weak var device: XenBusDevice?
    private var channels: EventChannels?
    private var loop: EventLoop?
    private var domid: UInt32 = 0
    private var host: Host?
    private var warnings = 0
    private var reprocess: Set<Int> = []
    /// Counters for tests and logs.
    public private(set) var requestsHandled = 0
    public private(set) var requestsRefused = 0

    public init(consoles: Consoles, config: BackendConfig) {
        self.consoles = consoles
        self.config = config
    }

    /// Display buffers and framebuffers the device holds now.
    public var bufferCount: Int { buffers.count }
    public var framebufferCount: Int { framebuffers.count }

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
        if try device.readFrontend(DisplifLayout.keyBackendAlloc) == "1" {
            log.warning("be-alloc=1: backend-allocated buffers are not provided; the frontend must allocate them (be-alloc=0)")
        }
        var found: [Connector] = []
        for i in 0..<max(config.vdisplMaxConnectors, 0) {
            guard let text = try device.readFrontend("\(i)/\(DisplifLayout.keyResolution)") else { break }
            guard let resolution = DisplifResolution(xenstore: text, maxDimension: Frame.maxDimension),
                  resolution.width * resolution.height * 4 <= config.vdisplMaxFrameBytes else {
                throw XenBusError("connector \(i): resolution \"\(text.prefix(24))\" is not WIDTHxHEIGHT within \(config.vdisplMaxFrameBytes) bytes of XRGB")
            }
            let unique = try device.readFrontend("\(i)/\(DisplifLayout.keyUniqueID)") ?? ""
            let name = String(unique.unicodeScalars.prefix(64).filter { $0.value >= 0x20 && $0.value < 0x7f })
            let owner = Consoles.Owner(device: "vdispl-\(device.devid)", head: i)
            guard let (index, console) = consoles.claim(owner, width: resolution.width, height: resolution.height) else {
                throw XenBusError("connector \(i): no console left for \(owner) (at most \(consoles.limit) screens)")
            }
            if console.frame.width != resolution.width || console.frame.height != resolution.height {
                console.resize(width: resolution.width, height: resolution.height)
            }
            found.append(Connector(index: i, resolution: resolution, uniqueID: name, console: console, consoleIndex: index))
        }
        if try found.count == config.vdisplMaxConnectors && device.readFrontend("\(found.count)/\(DisplifLayout.keyResolution)") != nil {
            log.warning("more than \(config.vdisplMaxConnectors) connectors configured; the others are not served")
        }
        guard !found.isEmpty else { throw XenBusError("no connector configured (frontend key 0/resolution is missing)") }
        connectors = found
        try device.writeBackend(DisplifLayout.keyVersions, "1,2")
        for c in found {
            log.info("connector \(c.index) (\(c.uniqueID.isEmpty ? "no unique-id" : c.uniqueID)) \(c.resolution) on console \(c.consoleIndex)")
        }
    }

    public func connect(_ device: XenBusDevice) throws {
        self.device = device
        loop = device.loop
        domid = device.domid
        host = device.host
        let channels = try device.host.openEventChannels()
        self.channels = channels
        try device.loop.watch(fd: channels.fd) { [weak self] _ in self?.notified() }
        for c in connectors {
            let p = "\(c.index)/"
            let ringRef = try Self.decimal(UInt32.self, device, p + DisplifLayout.keyRequestRingRef)
            let requestPort = try Self.decimal(UInt32.self, device, p + DisplifLayout.keyRequestChannel)
            let eventRef = try Self.decimal(UInt32.self, device, p + DisplifLayout.keyEventRingRef)
            let eventPort = try Self.decimal(UInt32.self, device, p + DisplifLayout.keyEventChannel)
            let ringPage = try device.host.mapGrants(domid: device.domid, refs: [ringRef], writable: true)
            let eventPage: GuestMapping
            do {
                eventPage = try device.host.mapGrants(domid: device.domid, refs: [eventRef], writable: true)
            } catch {
                ringPage.unmap()
                throw error
            }
            try attach(c, requestPage: ringPage, eventPage: eventPage, loop: device.loop)
            c.requestPort = try channels.bindInterdomain(remoteDomain: device.domid, remotePort: requestPort)
            c.eventPort = try channels.bindInterdomain(remoteDomain: device.domid, remotePort: eventPort)
            try run(c, loop: device.loop)
        }
        log.info("connected: \(connectors.count) connector(s)")
        // Requests may be waiting already.
        for c in connectors { processRequests(c) }
    }

    /// Sets up connector `c` on mapped pages: its request ring, its event
    /// page and its damage pipeline (not started).
    private func attach(_ c: Connector, requestPage: GuestMapping, eventPage: GuestMapping, loop: EventLoop) throws {
        guard let ring = BackRing<RingEntry64>(page: requestPage) else {
            requestPage.unmap()
            eventPage.unmap()
            throw XenBusError("connector \(c.index): request ring page too small")
        }
        c.requestRing = ring
        c.eventPage = eventPage
        c.eventProd = eventPage.load(UInt32.self, at: DisplifLayout.eventInProd) ?? 0
        c.nextEventID = 0
        c.scanout = nil
        c.repaint = true
        c.pendingFlips.removeAll()
        c.warnedRing = false
        c.pollDelay = config.vdisplPollInterval
        let bounds = FramebufferGeometry(width: c.resolution.width, height: c.resolution.height, lineLength: c.resolution.width * 4)!
        c.pipeline = DamagePipeline(
            loop: loop, tracker: nil, geometry: bounds, delay: config.updateDelay, maxRects: config.maxQueuedRects,
            scheduling: .leading,
            confirm: { [unowned self, unowned c] rects in self.confirm(rects, on: c) },
            onUpdate: { [unowned c] rects in c.console.update(rects) })
    }

    /// Starts connector `c`'s pipeline and its compares.
    private func run(_ c: Connector, loop: EventLoop) throws {
        try c.pipeline?.start()
        armPoll(c, loop: loop)
    }

    private func armPoll(_ c: Connector, loop: EventLoop) {
        if let t = c.pollTimer { loop.cancelTimer(t) }
        c.pollTimer = loop.addTimer(after: c.pollDelay) { [weak self, weak c] in
            guard let self, let c else { return }
            c.pollTimer = nil
            if c.scanout != nil {
                c.polling = true
                c.pipeline?.add([c.console.frame.bounds])
            }
            self.armPoll(c, loop: loop)
        }
    }

    /// The screen changed or will (a compare found a change, a new
    /// configuration): compare often again.
    private func pollSoon(_ c: Connector) {
        guard c.pollDelay != config.vdisplPollInterval else { return }
        c.pollDelay = config.vdisplPollInterval
        if let loop, c.pollTimer != nil { armPoll(c, loop: loop) }
    }

    /// Takes connectors on already mapped pages as `initialise` and
    /// `connect` do, without xenstore or event channels, so the request
    /// ring and the copy into the consoles can be driven directly (the
    /// fuzz target in Fuzz/): `processRequests`, then `refreshNow`. Buffers
    /// are mapped through `host`'s grants of domain `domid`. Nothing runs on
    /// `loop` by itself.
    public func attach(resolutions: [DisplifResolution], pages: [(request: GuestMapping, events: GuestMapping)],
                       host: Host, domid: UInt32, loop: EventLoop) throws {
        self.host = host
        self.domid = domid
        connectors = []
        for (i, (r, p)) in zip(resolutions, pages).enumerated() {
            guard let (index, console) = consoles.claim(Consoles.Owner(device: "vdispl-0", head: i), width: r.width, height: r.height) else { break }
            if console.frame.width != r.width || console.frame.height != r.height { console.resize(width: r.width, height: r.height) }
            let c = Connector(index: i, resolution: r, uniqueID: "", console: console, consoleIndex: index)
            try attach(c, requestPage: p.request, eventPage: p.events, loop: loop)
            connectors.append(c)
        }
    }

    public func frontendConnected(_ device: XenBusDevice) throws {}

    public func disconnect(_ device: XenBusDevice) {
        if let channels {
            loop?.unwatch(fd: channels.fd)
            channels.close()
        }
        channels = nil
        for c in connectors {
            c.pipeline?.stop()
            c.pipeline = nil
            if let t = c.pollTimer { loop?.cancelTimer(t) }
            c.pollTimer = nil
            c.requestRing?.page.unmap()
            c.requestRing = nil
            c.eventPage?.unmap()
            c.eventPage = nil
            c.requestPort = nil
            c.eventPort = nil
            c.scanout = nil
            c.pendingFlips.removeAll()
        }
        for b in buffers.values { b.mapping.unmap() }
        buffers.removeAll()
        framebuffers.removeAll()
        mappedPages = 0
        reprocess.removeAll()
    }

    /// A decimal frontend key; refuses the device if it is missing or malformed.
    private static func decimal<T: FixedWidthInteger>(_: T.Type, _ device: XenBusDevice, _ key: String) throws -> T {
        guard let text = try device.readFrontend(key), let v = T(xenstoreDecimal: text) else {
            throw XenBusError("frontend key \(key) is missing or not decimal")
        }
        return v
    }

    // MARK: Event channels

    /// One `pending()` per wake-up (the fd is level-triggered; another
    /// pending port keeps it readable), then the port's work.
    private func notified() {
        guard let channels else { return }
        let port: UInt32
        do throws(HostError) {
            guard let p = try channels.pending() else { return }
            try channels.unmask(port: p)
            port = p
        } catch {
            warn("event channel: \(error)")
            return
        }
        guard let c = connectors.first(where: { $0.requestPort == port }) else { return } // the event page's: nothing to do
        processRequests(c)
    }

    private func notify(_ port: UInt32?) {
        guard let port, let channels else { return }
        do throws(HostError) { try channels.notify(port: port) } catch { warn("cannot notify the frontend: \(error)") }
    }

    // MARK: Request ring

    /// Answers what is on `c`'s request ring: at most one ring's worth per
    /// call, then the rest from a timer, after the loop has looked at
    /// everything else. An impossible `req_prod` stops the ring (no request
    /// is read) until the frontend makes it consistent again.
    public func processRequests(_ c: Connector) {
        guard var ring = c.requestRing else { return }
        var handled: UInt32 = 0
        var overBudget = false
        work: while true {
            switch ring.unconsumedRequests() {
            case .failure(let error):
                if !c.warnedRing { c.warnedRing = true; warn("connector \(c.index): \(error); ignoring the ring until it is consistent") }
                break work
            case .success(0):
                if ring.finalCheckForRequests() { continue work }
                break work
            case .success(let n):
                c.warnedRing = false
                guard handled < ring.size else { overBudget = true; break work }
                for _ in 0..<min(n, ring.size - handled) {
                    guard let entry = ring.nextRequest() else { break work }
                    ring.putResponse(handle(entry, on: c).entry)
                    handled += 1
                }
            }
        }
        let notifyFrontend = handled > 0 && ring.pushResponses()
        c.requestRing = ring
        if notifyFrontend { notify(c.requestPort) }
        if overBudget, let loop, !reprocess.contains(c.index) {
            reprocess.insert(c.index)
            let index = c.index
            _ = loop.addTimer(after: .zero) { [weak self] in
                guard let self else { return }
                self.reprocess.remove(index)
                if let c = self.connectors.first(where: { $0.index == index }) { self.processRequests(c) }
            }
        }
    }

    /// One request: performed, or refused with an errno; the response
    /// echoes its id and operation.
    func handle(_ entry: RingEntry64, on c: Connector) -> DisplifResponse {
        let (id, operation) = DisplifRequest.header(entry)
        let request = DisplifRequest(entry)
        requestsHandled += 1
        do throws(VdisplError) {
            try perform(request, on: c)
            return DisplifResponse(id: id, operation: operation, status: 0)
        } catch {
            requestsRefused += 1
            warn("connector \(c.index): refused \(Self.name(operation)): \(error.message)")
            return DisplifResponse(id: id, operation: operation, status: error.errno.status)
        }
    }

    static func name(_ operation: UInt8) -> String {
        switch operation {
        case DisplifLayout.opDbufCreate: return "DBUF_CREATE"
        case DisplifLayout.opDbufDestroy: return "DBUF_DESTROY"
        case DisplifLayout.opFbAttach: return "FB_ATTACH"
        case DisplifLayout.opFbDetach: return "FB_DETACH"
        case DisplifLayout.opSetConfig: return "SET_CONFIG"
        case DisplifLayout.opPageFlip: return "PG_FLIP"
        case DisplifLayout.opGetEDID: return "GET_EDID"
        default: return "operation \(operation)"
        }
    }

    private func perform(_ request: DisplifRequest, on c: Connector) throws(VdisplError) {
        switch request {
        case .dbufCreate(let r): try createBuffer(r)
        case .dbufDestroy(let cookie): try destroyBuffer(cookie)
        case .fbAttach(let d, let f, let w, let h, let format): try attach(buffer: d, framebuffer: f, width: w, height: h, format: format)
        case .fbDetach(let cookie): try detach(cookie)
        case .setConfig(let config): try setConfig(config, on: c)
        case .pageFlip(let cookie): try flip(to: cookie, on: c)
        case .getEDID: throw VdisplError(.opnotsupp, "GET_EDID is not provided; the resolution key gives the mode")
        case .unknown(let op): throw VdisplError(.opnotsupp, "unknown operation \(op)")
        }
    }

    // MARK: Buffers

    private func createBuffer(_ r: DisplifDbufCreate) throws(VdisplError) {
        guard r.dbufCookie != 0 else { throw VdisplError(.inval, "dbuf_cookie 0 is invalid") }
        guard buffers[r.dbufCookie] == nil else { throw VdisplError(.exist, "dbuf_cookie \(r.dbufCookie) exists") }
        // Only bit 0 has a meaning; drm/xen-front leaves the rest of the slot as it was.
        guard r.flags & DisplifLayout.flagRequestAlloc == 0 else {
            throw VdisplError(.opnotsupp, "backend-allocated buffers (XENDISPL_DBUF_FLG_REQ_ALLOC) are not provided")
        }
        guard buffers.count < config.vdisplMaxBuffers else {
            throw VdisplError(.nospc, "already \(buffers.count) display buffers (at most \(config.vdisplMaxBuffers))")
        }
        let width = Int(r.width), height = Int(r.height), bpp = Int(r.bpp)
        guard (1...Frame.maxDimension).contains(width), (1...Frame.maxDimension).contains(height) else {
            throw VdisplError(.inval, "size \(r.width)x\(r.height) is not within 1...\(Frame.maxDimension) a side")
        }
        guard [8, 16, 24, 32].contains(bpp) else { throw VdisplError(.inval, "bpp \(r.bpp) is not 8, 16, 24 or 32") }
        // All of this is Int arithmetic on values bounded above: no overflow.
        let stride = (width * bpp + 7) / 8
        let size = Int(r.bufferSize), dataOffset = Int(r.dataOffset)
        let needed = dataOffset + stride * height
        guard size >= needed else {
            throw VdisplError(.inval, "buffer_sz \(size) is below data_ofs \(dataOffset) + \(height) rows of \(stride) bytes")
        }
        let pages = (size + guestPageSize - 1) / guestPageSize
        guard size <= config.vdisplMaxMappedBytes, mappedPages + pages <= config.vdisplMaxMappedBytes / guestPageSize else {
            throw VdisplError(.nomem, "\(size) more bytes would map over \(config.vdisplMaxMappedBytes) bytes of guest memory")
        }
        guard let host else { throw VdisplError(.io, "not connected") }
        let refs = try readDirectory(start: r.directoryRef, pages: pages, host: host)
        let mapping: GuestMapping
        do throws(HostError) {
            mapping = try host.mapGrants(domid: domid, refs: refs, writable: false)
        } catch {
            throw VdisplError(.fault, "\(error)")
        }
        buffers[r.dbufCookie] = DisplayBuffer(cookie: r.dbufCookie, width: width, height: height, bpp: bpp, stride: stride,
                                              dataOffset: dataOffset, mapping: mapping, pages: pages)
        mappedPages += pages
        log.debug("buffer \(r.dbufCookie): \(width)x\(height) bpp \(bpp), \(pages) pages")
    }

    /// Follows the page directory from `start` for the references of
    /// `pages` buffer pages: each directory page is mapped read-only,
    /// copied once, and unmapped; exactly as many pages are read as the
    /// buffer needs, so a directory that loops costs nothing more.
    private func readDirectory(start: UInt32, pages: Int, host: Host) throws(VdisplError) -> [UInt32] {
        var refs: [UInt32] = []
        refs.reserveCapacity(pages)
        var ref = start
        for page in 0..<DisplifPageDirectory.directoryPages(forBufferPages: pages) {
            let count = min(pages - refs.count, DisplifLayout.grantsPerDirectoryPage)
            let map: GuestMapping
            do throws(HostError) {
                map = try host.mapGrants(domid: domid, refs: [ref], writable: false)
            } catch {
                throw VdisplError(.fault, "page directory page \(page) (grant \(ref)): \(error)")
            }
            let copy = map.bytes(at: 0, count: 4 + 4 * count)
            map.unmap()
            guard let bytes = copy, let (next, list) = bytes.withUnsafeBytes({ DisplifPageDirectory.decode($0, count: count) }) else {
                throw VdisplError(.inval, "page directory page \(page) is short")
            }
            refs += list
            ref = next
            if refs.count < pages && next == 0 {
                throw VdisplError(.inval, "page directory ends after \(refs.count) of \(pages) pages")
            }
        }
        return refs
    }

    private func destroyBuffer(_ cookie: UInt64) throws(VdisplError) {
        guard let buffer = buffers.removeValue(forKey: cookie) else { throw VdisplError(.noent, "no display buffer \(cookie)") }
        // Framebuffers over it go with it (a frontend detaches them first).
        for (fbCookie, fb) in framebuffers where fb.buffer === buffer { forget(framebuffer: fbCookie) }
        buffer.mapping.unmap()
        mappedPages -= buffer.pages
    }

    private func attach(buffer cookie: UInt64, framebuffer fbCookie: UInt64, width w: UInt32, height h: UInt32,
                        format code: UInt32) throws(VdisplError) {
        guard fbCookie != 0 else { throw VdisplError(.inval, "fb_cookie 0 is invalid") }
        guard framebuffers[fbCookie] == nil else { throw VdisplError(.exist, "fb_cookie \(fbCookie) exists") }
        guard framebuffers.count < config.vdisplMaxFramebuffers else {
            throw VdisplError(.nospc, "already \(framebuffers.count) framebuffers (at most \(config.vdisplMaxFramebuffers))")
        }
        guard let buffer = buffers[cookie] else { throw VdisplError(.noent, "no display buffer \(cookie)") }
        guard let format = DisplifPixelFormat(rawValue: code) else {
            throw VdisplError(.inval, "pixel format \(DisplifPixelFormat.name(code)) (0x\(String(code, radix: 16))) is not supported")
        }
        let width = Int(w), height = Int(h)
        guard (1...Frame.maxDimension).contains(width), height > 0, height <= buffer.height,
              PixelConversion.byteRange(format: format, x: 0, count: width).count <= buffer.stride else {
            throw VdisplError(.inval, "\(w)x\(h) \(format) does not fit buffer \(cookie) (\(buffer.height) rows of \(buffer.stride) bytes)")
        }
        guard format != .yuyv || width % 2 == 0 else { throw VdisplError(.inval, "YUYV needs an even width, not \(w)") }
        framebuffers[fbCookie] = Framebuffer(cookie: fbCookie, buffer: buffer, width: width, height: height, format: format)
    }

    private func detach(_ cookie: UInt64) throws(VdisplError) {
        guard framebuffers[cookie] != nil else { throw VdisplError(.noent, "no framebuffer \(cookie)") }
        forget(framebuffer: cookie)
    }

    /// Drops a framebuffer; a connector showing it keeps its last picture.
    private func forget(framebuffer cookie: UInt64) {
        framebuffers[cookie] = nil
        for c in connectors where c.scanout?.fb == cookie { c.scanout = nil }
    }

    // MARK: Connectors

    private func setConfig(_ r: DisplifSetConfig, on c: Connector) throws(VdisplError) {
        if r.isReset {
            c.scanout = nil
            c.repaint = true
            c.pipeline?.add([c.console.frame.bounds])
            return
        }
        guard let fb = framebuffers[r.fbCookie] else { throw VdisplError(.noent, "no framebuffer \(r.fbCookie)") }
        guard Int(r.bpp) == fb.format.bitsPerPixel else {
            throw VdisplError(.inval, "bpp \(r.bpp) is not \(fb.format)'s \(fb.format.bitsPerPixel)")
        }
        let res = c.resolution
        guard r.width > 0, r.height > 0, Int(r.x) < res.width, Int(r.y) < res.height else {
            throw VdisplError(.inval, "\(r.width)x\(r.height) at \(r.x),\(r.y) is not on the \(res) screen")
        }
        let shown = Scanout(fb: r.fbCookie, x: Int(r.x), y: Int(r.y), width: Int(r.width), height: Int(r.height))
        if c.scanout.map({ $0.x != shown.x || $0.y != shown.y || $0.width != shown.width || $0.height != shown.height }) ?? true {
            c.repaint = true
        }
        c.scanout = shown
        pollSoon(c)
        c.pipeline?.add([c.console.frame.bounds])
    }

    private func flip(to cookie: UInt64, on c: Connector) throws(VdisplError) {
        guard framebuffers[cookie] != nil else { throw VdisplError(.noent, "no framebuffer \(cookie)") }
        guard var shown = c.scanout else { throw VdisplError(.inval, "the connector is off (no SET_CONFIG)") }
        guard c.pendingFlips.count < DisplifLayout.eventRingLength else {
            throw VdisplError(.busy, "\(c.pendingFlips.count) flips are waiting for the screen")
        }
        shown.fb = cookie
        c.scanout = shown
        c.pendingFlips.append(cookie)
        // No sooner compare: a program that flips draws into the hidden buffer.
        c.pipeline?.add([c.console.frame.bounds])
    }

    /// Sends a flip-done event for each flip the last copy showed.
    private func completeFlips(_ c: Connector) {
        guard !c.pendingFlips.isEmpty else { return }
        let cookies = c.pendingFlips
        c.pendingFlips.removeAll(keepingCapacity: true)
        guard let page = c.eventPage else { return }
        let ring = DisplifEventRing.displifEvents(page)
        let cons = ring.loadCons()
        Barrier.full()
        var sent = 0
        for cookie in cookies {
            let used = c.eventProd &- cons
            guard used < UInt32(DisplifLayout.eventRingLength) else {
                warn("connector \(c.index): event page full or inconsistent (in_cons \(cons), in_prod \(c.eventProd)); flip event for \(cookie) dropped")
                break
            }
            ring.put(DisplifEvent(id: c.nextEventID, fbCookie: cookie).entry, at: c.eventProd)
            c.nextEventID &+= 1
            c.eventProd &+= 1
            sent += 1
        }
        guard sent > 0 else { return }
        Barrier.write()
        ring.storeProd(c.eventProd)
        c.flipsCompleted += sent
        notify(c.eventPort)
    }

    // MARK: The confirm stage

    /// Copies what changed inside `rects` of the shown framebuffer into the
    /// console's frame (black around it), returns the changed rects, and
    /// completes the flips this copy shows.
    private func confirm(_ rects: [Rect], on c: Connector) -> [Rect] {
        defer { completeFlips(c) }
        let visible: Rect
        var source: (Framebuffer, Scanout)?
        if let s = c.scanout, let fb = framebuffers[s.fb] {
            visible = Rect(x: s.x, y: s.y, width: min(s.width, fb.width), height: min(s.height, fb.height))
                .intersection(Rect(x: 0, y: 0, width: c.resolution.width, height: c.resolution.height))
            source = (fb, s)
        } else {
            visible = Rect(x: 0, y: 0, width: 0, height: 0)
        }
        let repaint = c.repaint
        c.repaint = false
        let maxRects = config.maxQueuedRects
        let changed = c.console.withFrame { frame in
            var changed: [Rect] = []
            if repaint { changed += Self.blank(frame, except: visible) }
            if let (fb, s) = source, !visible.isEmpty {
                changed += Self.copy(rects, of: fb, at: s, visible: visible, into: frame, maxRects: maxRects)
            }
            return Coalescer.coalesce(changed, maxRects: maxRects, mergeSlack: 4096)
        }
        if c.polling {
            // A compare that found nothing: look less often; one that did: often again.
            c.polling = false
            if changed.isEmpty {
                let doubled = c.pollDelay * 2
                c.pollDelay = doubled < config.vdisplPollIntervalMax ? doubled : config.vdisplPollIntervalMax
            } else {
                pollSoon(c)
            }
        }
        return changed
    }

    /// Paints the frame black outside `visible`; returns what was painted.
    static func blank(_ frame: Frame, except visible: Rect) -> [Rect] {
        let all = frame.bounds
        var parts: [Rect] = []
        if visible.isEmpty {
            parts = [all]
        } else {
            parts = [Rect(x: 0, y: 0, width: all.width, height: visible.y),
                     Rect(x: 0, y: visible.maxY, width: all.width, height: all.height - visible.maxY),
                     Rect(x: 0, y: visible.y, width: visible.x, height: visible.height),
                     Rect(x: visible.maxX, y: visible.y, width: all.width - visible.maxX, height: visible.height)]
                .map { $0.intersection(all) }.filter { !$0.isEmpty }
        }
        for r in parts {
            for y in r.y ..< r.maxY {
                (frame.pixels + y * frame.stride + r.x * 4).initializeMemory(as: UInt8.self, repeating: 0, count: r.width * 4)
            }
        }
        return parts
    }

    /// Converts the candidate rows of `fb` shown at `s` into the frame,
    /// compares each with the frame's row and copies it if it differs;
    /// returns bands of the rows that changed. Every read of guest memory
    /// goes through the buffer's bounds-checked mapping.
    static func copy(_ rects: [Rect], of fb: Framebuffer, at s: Scanout, visible: Rect, into frame: Frame, maxRects: Int) -> [Rect] {
        let b = fb.buffer
        var row = [UInt32](repeating: 0, count: visible.width)
        var changed: [Rect] = []
        for candidate in rects {
            let r = candidate.intersection(visible)
            guard !r.isEmpty else { continue }
            let sx = r.x - s.x
            let bytes = PixelConversion.byteRange(format: fb.format, x: sx, count: r.width)
            var runStart = -1
            for y in r.y ..< r.maxY {
                let rowOffset = b.dataOffset + (y - s.y) * b.stride
                let dst = frame.pixels + y * frame.stride + r.x * 4
                let differs: Bool
                if fb.format == .xrgb8888 {
                    // The frame's own format: compare in place, copy what differs.
                    differs = b.mapping.withBytes(at: rowOffset + bytes.lowerBound, count: bytes.count) { src in
                        guard memcmp(src.baseAddress!, dst, r.width * 4) != 0 else { return false }
                        dst.copyMemory(from: src.baseAddress!, byteCount: r.width * 4)
                        return true
                    } ?? false
                } else { differs = row.withUnsafeMutableBytes { tmp in
                    let converted = b.mapping.withBytes(at: rowOffset + bytes.lowerBound, count: bytes.count) {
                        PixelConversion.convert(format: fb.format, source: $0, x: sx, count: r.width, dest: tmp.baseAddress!)
                        return true
                    } ?? false
                    guard converted, memcmp(tmp.baseAddress!, dst, r.width * 4) != 0 else { return false }
                    dst.copyMemory(from: tmp.baseAddress!, byteCount: r.width * 4)
                    return true
                } }
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

    /// Takes in the shown buffers now (QMP screendump), and sends the flip
    /// events that copy completes.
    public func refreshNow() {
        for c in connectors {
            processRequests(c)
            c.pipeline?.add([c.console.frame.bounds])
            c.pipeline?.flush()
        }
    }
}

/// A request the backend refuses: the errno for the response, and a message for the log.
struct VdisplError: Error {
    let errno: XenErrno
    let message: String
    init(_ errno: XenErrno, _ message: String) {
        self.errno = errno
        self.message = message
    }
}
