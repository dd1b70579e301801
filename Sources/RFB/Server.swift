#if canImport(Glibc)
import Glibc
#endif
import CRFB
import Logging
import Support
import Synchronization

/// xenvfb's VNC (RFB 3.3/3.7/3.8) server.
///
/// **Threading.** The server runs one thread of its own with its own epoll
/// loop over the listening sockets, the client sockets and an eventfd. Every
/// socket is non-blocking and every client has an incremental parser, so a
/// client that stalls mid-message, never reads, or connects and says nothing
/// costs only its own slot; handshakes time out; at most `maxConnections`
/// connections exist. The caller's threads only record what changed
/// (`markDirty`, `resize`, passwords) under a short lock and wake the server
/// thread; they never encode or do socket I/O. Events (keys, pointer,
/// clients coming and going) are delivered on the server thread.
///
/// **The frame** is read through `RFBFrameSource.withPixels`, one band of at
/// most 32,768 pixels at a time, translated into the client's pixel format
/// inside the lock and encoded outside it: no client gets a whole-frame copy.
/// Raw in the server's own format to a plain TCP client with nothing queued
/// goes from the frame's rows to the socket (one non-blocking sendmsg per
/// rectangle, inside the lock; `RFBSession.directSend`).
///
/// **Bounds.** Each client's unsent damage is a bitmap of 16×16 tiles; its
/// output queue stops growing at 256 KiB plus one batch (updates pause, input
/// is not read until it drains); every length a client sends is capped
/// (encodings, clipboard, WebSocket frames and headers). See README.md.
///
/// **Protocol**, as QEMU's VNC server speaks it: security None or VNC
/// authentication, or with TLS VeNCrypt X509None/X509Vnc (GnuTLS, loaded
/// only then; `Connection`); ServerInit 32 bpp depth 24 little-endian XRGB; any
/// true-colour format of 8/16/32 bpp either endianness, or an 8/16/32-bit
/// colour map (BGR233); Raw, RRE, CoRRE, Hextile, Zlib, lossless Tight, ZRLE
/// and TRLE; DesktopSize, ExtendedDesktopSize (SetDesktopSize is refused),
/// QEMU extended key events and pointer type (absolute), each update
/// answering one request. WebSocket (RFC 6455) on listeners of its own,
/// wss:// with TLS.
public final class RFBServer: Sendable {
    public let options: RFBServerOptions
    private let shared: Mutex<Shared>
    private let wakeFD: Int32
    private let core: ServerCore
    private let thread: Mutex<pthread_t?>

    private struct Shared {
        var dirty: [RFBRect] = []
        var size: (width: Int, height: Int)?
        var wakePending = false
        var stopping = false
        var password: [UInt8]?
        var passwordDeadline: Int?
        var clients: [UInt64: RFBClientInfo] = [:]
        var info: RFBServerInfo
    }

    /// Opens the listening sockets and starts the server thread. Throws if a
    /// socket cannot be opened (nothing is left open then).
    public init(options: RFBServerOptions, source: any RFBFrameSource,
                onEvent: @escaping @Sendable (RFBEvent) -> Void) throws(RFBError) {
        self.options = options
        // TLS first: a missing library or a bad certificate fails before any socket opens.
        let credentials = try options.tls.map { o throws(RFBError) in try TLSCredentials(o) }
        var listeners: [Listener] = []
        do throws(RFBError) {
            listeners += try Listener.open(options.address, webSocket: false)
            for w in options.webSockets {
                if case .unix = w { throw RFBError("a WebSocket listener needs a TCP address") }
                listeners += try Listener.open(w, webSocket: true)
            }
        } catch {
            listeners.forEach { $0.close() }
            throw error
        }
        let epollFD = crfb_epoll_create()
        let wakeFD = crfb_eventfd()
        guard epollFD >= 0, wakeFD >= 0 else {
            let e = errno
            listeners.forEach { $0.close() }
            if epollFD >= 0 { Glibc.close(epollFD) }
            if wakeFD >= 0 { Glibc.close(wakeFD) }
            throw RFBError("cannot create the server's epoll/eventfd: \(String(cString: strerror(e)))")
        }
        self.wakeFD = wakeFD
        let vnc = listeners.filter { !$0.webSocket }.map(\.info)
        let info = RFBServerInfo(listen: vnc[0], listeners: vnc, websockets: listeners.filter(\.webSocket).map(\.info),
                                 auth: options.passwordRequired ? "vnc" : "none", clients: [],
                                 vencrypt: options.tls == nil ? nil : options.passwordRequired ? "x509-vnc" : "x509-none",
                                 webSocketTLS: options.tls != nil)
        shared = Mutex(Shared(info: info))
        var log = Log.logger("vnc")
        let l = vnc[0]
        log[metadataKey: "listen"] = "\(l.family == "ipv6" ? "[\(l.host)]" : l.host)\(l.family == "unix" ? "" : ":\(l.service)")"
        core = ServerCore(options: options, listeners: listeners, epollFD: epollFD, wakeFD: wakeFD, log: log,
                          source: source, credentials: credentials, onEvent: onEvent)
        thread = Mutex(nil)
        core.server = self
        for (i, l) in listeners.enumerated() {
            _ = crfb_epoll_ctl(epollFD, 1, l.fd, CRFB_EPOLLIN, UInt64(i + 1))
        }
        _ = crfb_epoll_ctl(epollFD, 1, wakeFD, CRFB_EPOLLIN, 0)
        let box = Unmanaged.passRetained(core).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let core = Unmanaged<ServerCore>.fromOpaque(arg!).takeRetainedValue()
            core.run()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<ServerCore>.fromOpaque(box).release()
            core.shutdown()
            throw RFBError("cannot start the server thread: \(String(cString: strerror(rc)))")
        }
        thread.withLock { $0 = t }
        let websockets = info.websockets.map { "\($0.host):\($0.service)" }.joined(separator: ",")
        log.info("VNC server listening", metadata: ["auth": "\(info.queryVNCAuth)",
                                                    "websocket": "\(websockets.isEmpty ? "off" : websockets + (credentials != nil ? " (wss)" : ""))"])
    }

    deinit { close() }

    // MARK: Calls from any thread

    /// The frame has a new size; clients that can follow are told, the rest
    /// keep their size and get what fits (as QEMU).
    public func resize(width: Int, height: Int) {
        let w = min(max(width, 0), 65535), h = min(max(height, 0), 65535)
        wake { $0.size = (w, h) }
    }

    /// These parts of the frame changed. Cheap: records and wakes the server thread.
    public func markDirty(_ rects: [RFBRect]) {
        guard !rects.isEmpty else { return }
        wake { s in
            s.dirty += rects
            if s.dirty.count > 64 {
                // Past 64 pending rectangles their bounding box stands for them.
                var x0 = Int.max, y0 = Int.max, x1 = Int.min, y1 = Int.min
                for r in s.dirty where !r.isEmpty {
                    x0 = min(x0, r.x); y0 = min(y0, r.y)
                    x1 = max(x1, r.x.addingReportingOverflow(r.width).overflow ? Int.max : r.maxX)
                    y1 = max(y1, r.y.addingReportingOverflow(r.height).overflow ? Int.max : r.maxY)
                }
                s.dirty = x0 <= x1 && y0 <= y1 ? [RFBRect(x: x0, y: y0, width: x1 &- x0, height: y1 &- y0)] : []
            }
        }
    }

    /// Sets the VNC password (QMP `change-vnc-password` / `set_password`):
    /// its first 8 bytes count (VNC DES). nil or empty lets nobody in. The
    /// expiry goes back to never. The old password is overwritten in memory.
    public func setPassword(_ password: String?) {
        let bytes = password.map { Array($0.utf8.prefix(8)) }
        shared.withLock { s in
            if s.password != nil { wipe(&s.password!) }
            s.password = (bytes?.isEmpty ?? true) ? nil : bytes
            s.passwordDeadline = nil
        }
        core.log.info(password?.isEmpty == false ? "VNC password set" : "VNC password cleared")
    }

    /// When the password stops being accepted (QMP `expire_password`).
    public func expirePassword(_ expiry: RFBPasswordExpiry) {
        let deadline = expiry.deadline(now: Self.unixTime())
        shared.withLock { $0.passwordDeadline = deadline }
    }

    /// What QMP `query-vnc` reports.
    public var info: RFBServerInfo {
        shared.withLock { s in
            var i = s.info
            i.clients = s.clients.sorted { $0.key < $1.key }.map(\.value)
            return i
        }
    }

    /// Closes every connection and listening socket and ends the thread.
    /// Idempotent; from a callback on the server thread it only asks the loop to stop.
    public func close() {
        let first = shared.withLock { s -> Bool in
            defer { s.stopping = true }
            return !s.stopping
        }
        if first { signalWake() }
        guard let t = thread.withLock({ t -> pthread_t? in defer { t = nil }; return t }) else { return }
        if pthread_equal(t, pthread_self()) != 0 {
            pthread_detach(t)
        } else {
            pthread_join(t, nil)
        }
    }

    // MARK: Internals shared with the server thread

    private func wake(_ update: (inout Shared) -> Void) {
        let needSignal = shared.withLock { s -> Bool in
            update(&s)
            defer { s.wakePending = true }
            return !s.wakePending
        }
        if needSignal { signalWake() }
    }

    private func signalWake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(wakeFD, $0.baseAddress, 8) }
    }

    /// Takes what the callers recorded (server thread).
    fileprivate func takePending() -> (dirty: [RFBRect], size: (width: Int, height: Int)?, stopping: Bool) {
        shared.withLock { s in
            defer { s.dirty = []; s.size = nil; s.wakePending = false }
            return (s.dirty, s.size, s.stopping)
        }
    }

    fileprivate func setClient(_ tag: UInt64, _ info: RFBClientInfo?) {
        shared.withLock { $0.clients[tag] = info }
    }

    fileprivate func checkPassword(challenge: [UInt8], response: [UInt8]) -> SessionContext.AuthOutcome {
        var password = shared.withLock { s -> [UInt8]? in
            if let d = s.passwordDeadline, d < Self.unixTime() { return [] }
            return s.password
        }
        defer { if password != nil { wipe(&password!) } }
        guard let secret = password else { return .noPassword }
        if secret.isEmpty { return .expired }
        var expected = vncAuthResponse(challenge: challenge, password: secret)
        defer { wipe(&expected) }
        // Constant time: every byte is compared.
        var difference: UInt8 = 0
        for i in 0..<16 { difference |= expected[i] ^ (i < response.count ? response[i] : 0) }
        return difference == 0 && response.count == 16 ? .ok : .wrongPassword
    }

    static func unixTime() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return now.tv_sec
    }
}

func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { if let b = $0.baseAddress { explicit_bzero(b, $0.count) } }
}

/// The server thread's state. Touched only by that thread (after init).
private final class ServerCore: @unchecked Sendable {
    let options: RFBServerOptions
    let listeners: [Listener]
    let epollFD: Int32
    let wakeFD: Int32
    let log: Logger
    let context: SessionContext
    let onEvent: @Sendable (RFBEvent) -> Void
    let credentials: TLSCredentials?
    weak var server: RFBServer?
    private var connections: [UInt64: Connection] = [:]
    private var nextTag: UInt64 = 1 << 32
    private var lastRefusalLog: UInt64 = 0
    private var refusedSinceLog = 0
    /// Some client has an update in progress and nothing queued (see `Connection.service`).
    private var busy = false
    private let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16384, alignment: 16)

    init(options: RFBServerOptions, listeners: [Listener], epollFD: Int32, wakeFD: Int32, log: Logger,
         source: any RFBFrameSource, credentials: TLSCredentials?, onEvent: @escaping @Sendable (RFBEvent) -> Void) {
        self.options = options
        self.credentials = credentials
        self.listeners = listeners
        self.epollFD = epollFD
        self.wakeFD = wakeFD
        self.log = log
        self.onEvent = onEvent
        context = SessionContext(source: source, desktopName: options.desktopName, passwordRequired: options.passwordRequired,
                                 log: log, checkPassword: { _, _ in .noPassword }, emit: onEvent)
    }

    deinit { readBuffer.deallocate() }

    static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    func run() {
        _ = crfb_set_thread_name("vnc-server")
        context.checkPassword = { [weak self] challenge, response in
            self?.server?.checkPassword(challenge: challenge, response: response) ?? .noPassword
        }
        var events = [UInt32](repeating: 0, count: 64)
        var tags = [UInt64](repeating: 0, count: 64)
        loop: while true {
            let n = events.withUnsafeMutableBufferPointer { e in
                tags.withUnsafeMutableBufferPointer { t in
                    crfb_epoll_wait(epollFD, e.baseAddress, t.baseAddress, 64, timeoutMilliseconds())
                }
            }
            if n < 0 {
                log.error("epoll_wait: \(String(cString: strerror(errno)))")
                break
            }
            for k in 0..<Int(n) {
                let tag = tags[k]
                if tag == 0 {
                    var value: UInt64 = 0
                    _ = withUnsafeMutableBytes(of: &value) { read(wakeFD, $0.baseAddress, 8) }
                    if applyPending() { break loop }
                } else if tag <= UInt64(listeners.count) {
                    accept(listeners[Int(tag - 1)])
                } else if let c = connections[tag] {
                    if events[k] & (CRFB_EPOLLIN | CRFB_EPOLLRDHUP) != 0 { c.readable(buffer: readBuffer) }
                    if events[k] & (CRFB_EPOLLHUP | CRFB_EPOLLERR) != 0 {
                        // Nothing more can be delivered or received.
                        c.close("the connection was reset")
                    } else if events[k] & CRFB_EPOLLOUT != 0 {
                        c.flush()
                    }
                }
            }
            serviceAll()
        }
        shutdown()
    }

    /// Applies resizes and damage; true when the server is stopping.
    private func applyPending() -> Bool {
        guard let server else { return true }
        let p = server.takePending()
        if p.stopping { return true }
        if let size = p.size, size.width != context.frameWidth || size.height != context.frameHeight {
            context.frameWidth = size.width
            context.frameHeight = size.height
            for c in connections.values { c.session?.frameResized() }
            log.debug("frame resized to \(size.width)x\(size.height)")
        }
        for r in p.dirty {
            for c in connections.values { c.session?.markDirty(r) }
        }
        return false
    }

    private func serviceAll() {
        let now = Self.monotonicNanoseconds()
        busy = false
        for (tag, c) in connections {
            if !c.closed && !c.isEstablished && now > c.deadline { c.timeOut() }
            if c.hasBufferedInput { c.readable(buffer: readBuffer) }
            if c.service() { busy = true }
            if c.closed {
                remove(tag, c)
                continue
            }
            let wanted = c.wantedEvents
            if wanted != c.registered {
                _ = crfb_epoll_ctl(epollFD, 3, c.fd, wanted, tag)
                c.registered = wanted
            }
        }
    }

    private func remove(_ tag: UInt64, _ c: Connection) {
        connections[tag] = nil
        server?.setClient(tag, nil)
        log.info("VNC client disconnected: \(c.closeReason)", metadata: clientMetadata(c.info))
        onEvent(.disconnected(c.info))
    }

    private func clientMetadata(_ i: RFBClientInfo) -> Logger.Metadata {
        var m: Logger.Metadata = ["client": "\(i.family == "ipv6" ? "[\(i.host)]" : i.host)\(i.family == "unix" ? "unix" : ":\(i.service)")"]
        if i.websocket { m["websocket"] = "yes" }
        return m
    }

    /// Milliseconds until the nearest handshake deadline, or -1; 0 while a
    /// client's update is being produced faster than its socket needs.
    private func timeoutMilliseconds() -> Int32 {
        if busy { return 0 }
        var nearest = UInt64.max
        for c in connections.values where !c.isEstablished { nearest = min(nearest, c.deadline) }
        guard nearest != UInt64.max else { return -1 }
        let now = Self.monotonicNanoseconds()
        return nearest <= now ? 0 : Int32(min((nearest - now) / 1_000_000 + 1, 60_000))
    }

    private func accept(_ l: Listener) {
        for _ in 0..<64 {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { crfb_accept(l.fd, $0, &length) }
            }
            if fd < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { log.warning("accept: \(String(cString: strerror(errno)))") }
                return
            }
            guard connections.count < options.maxConnections else {
                Glibc.close(fd)
                refusedSinceLog += 1
                let now = Self.monotonicNanoseconds()
                if now - lastRefusalLog > 1_000_000_000 {
                    log.warning("VNC connection refused: \(options.maxConnections) connections already (\(refusedSinceLog) refused)")
                    lastRefusalLog = now
                    refusedSinceLog = 0
                }
                continue
            }
            var one: Int32 = 1
            if Int32(storage.ss_family) != AF_UNIX { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4)) }
            let (host, service, family) = Listener.describe(&storage, length)
            let tag = nextTag
            nextTag += 1
            let info = RFBClientInfo(host: host, service: service, family: family == "unix" ? "unix" : family, websocket: l.webSocket, id: tag)
            let deadline = Self.monotonicNanoseconds() + UInt64(max(options.handshakeTimeoutSeconds, 1)) * 1_000_000_000
            let c = Connection(fd: fd, tag: tag, info: info, context: context, deadline: deadline, credentials: credentials)
            connections[tag] = c
            c.registered = c.wantedEvents
            _ = crfb_epoll_ctl(epollFD, 1, fd, c.registered, tag)
            server?.setClient(tag, info)
            log.info("VNC client connected", metadata: clientMetadata(info))
            onEvent(.connected(info))
        }
    }

    func shutdown() {
        for (tag, c) in connections {
            c.close("the server is closing")
            remove(tag, c)
        }
        for l in listeners { l.close() }
        Glibc.close(epollFD)
        Glibc.close(wakeFD)
        log.info("VNC server closed")
    }
}
