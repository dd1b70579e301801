#if canImport(Glibc)
import Glibc
#endif
import CDisplayShims
import CShims
import CVNCServer
import Damage
import EventLoop
import Logging
import Support

/// What QMP `query-vnc` reports about one connected client.
public struct VNCClientInfo: Equatable, Sendable {
    public var host: String
    public var service: String
    /// `ipv4`, `ipv6` or `unix`.
    public var family: String
    public var websocket = false
}

/// What QMP `query-vnc` reports about the server.
public struct VNCServerInfo: Equatable, Sendable {
    public var enabled: Bool
    /// Listening address (or socket path for `unix`).
    public var host: String
    /// Port number as a string (QMP's `service`), or the socket path.
    public var service: String
    /// `ipv4`, `ipv6` or `unix`.
    public var family: String
    /// `none` or `vnc`.
    public var auth: String
    public var clients: [VNCClientInfo]
}

/// A VNC server for the frame, through libvncserver, driven entirely by the
/// process' event loop: the loop watches the listening sockets and every
/// client socket and calls `rfbProcessEvents(screen, 0)` when one is ready
/// or the frame changed. libvncserver never runs a thread of its own.
///
/// The frame is served in place (XRGB, redShift 16, no conversion) and only
/// changes between loop handlers, so every update is a consistent picture.
///
/// A slow client cannot make libvncserver pile data up: while a client's
/// socket still holds unsent bytes its updates are held back (libvncserver's
/// `onHold`) and resume, merged, once it has drained. The socket's send
/// buffer is sized to hold a whole frame, so writing one update does not
/// block; a client that stalls a read or write for `stallLimit` is dropped.
///
/// Create it, then `hub.add` it. Input goes to `hub.input`.
public final class VNCDisplay: Display {
    public let name = "vnc"
    public let options: VNCOptions
    public let keymap: Keymap
    /// Blocking read/write limit inside libvncserver before a stalled client is dropped.
    public static let stallLimitMilliseconds: Int32 = 2000

    private let loop: EventLoop
    private weak var hub: DisplayHub?
    private var log: Logger
    private var screen: rfbScreenInfoPtr?
    private var frame: Frame
    private var listeners: [Int32] = []
    private var listenInfo: (host: String, service: String, family: String) = ("", "", "")
    private var clients: [UnsafeMutableRawPointer: Client] = [:]
    private var password: [CChar]?
    private var passwordExpiry = PasswordExpiry.never
    private var warnedSendBuffer = false
    private var desktopNameCopy: UnsafeMutablePointer<CChar>?
    private var flushTimer: EventLoop.TimerID?
    private var holdTimer: EventLoop.TimerID?
    private var holdDelayMilliseconds = 5
    private var unixPath: String?
    private var closed = false

    private final class Client {
        let cl: rfbClientPtr
        let fd: Int32
        let info: VNCClientInfo
        var buttons: Int32 = 0
        var lastPosition: (Int32, Int32)?
        var pressed: Set<UInt32> = []
        /// Passed our password check (or none is required).
        var authenticated = false
        init(cl: rfbClientPtr, fd: Int32, info: VNCClientInfo) { self.cl = cl; self.fd = fd; self.info = info }
    }

    /// `spec` is the `-vnc` argument; `keymap` the `-k` layout (default en-us).
    /// Listens at once, so `info` has the port before the frame arrives.
    public convenience init(spec: String, loop: EventLoop, hub: DisplayHub, keymap: String = "en-us", desktopName: String = "QEMU") throws(DisplayError) {
        try self.init(options: VNCOptions(spec: spec), loop: loop, hub: hub, keymap: Keymap(name: keymap), desktopName: desktopName)
    }

    public init(options: VNCOptions, loop: EventLoop, hub: DisplayHub, keymap: Keymap, desktopName: String = "QEMU") throws(DisplayError) {
        self.options = options
        self.loop = loop
        self.hub = hub
        self.keymap = keymap
        self.frame = hub.frame
        self.log = Log.logger("display.vnc")
        guard options.address != .none else { return }
        try Self.installLibraryHooks()
        try listen()
        log[metadataKey: "listen"] = "\(listenInfo.family == "ipv6" ? "[\(listenInfo.host)]" : listenInfo.host):\(listenInfo.service)"
        try makeScreen(desktopName: desktopName)
        log.info("VNC server listening", metadata: ["auth": "\(options.password ? "vnc" : "none")"])
    }

    deinit { close() }

    // MARK: Display

    public func frameDidResize(_ frame: Frame) {
        self.frame = frame
        guard let screen else { return }
        if screen.pointee.width != Int32(frame.width) || screen.pointee.height != Int32(frame.height)
            || screen.pointee.frameBuffer != UnsafeMutableRawPointer(frame.pixels).assumingMemoryBound(to: CChar.self) {
            // rfbNewFramebuffer resets the pixel format to its default and
            // tells DesktopSize-capable clients the new size.
            rfbNewFramebuffer(screen, frame.pixels.assumingMemoryBound(to: CChar.self), Int32(frame.width), Int32(frame.height), 8, 3, 4)
            Self.setXRGBFormat(screen)
            forEachClient { cl in _ = rfbSetTranslateFunction(cl) }
            for c in clients.values { sizeSendBuffer(c.fd) }
        }
        rfbMarkRectAsModified(screen, 0, 0, Int32(frame.width), Int32(frame.height))
        scheduleFlush()
    }

    public func frameDidUpdate(_ frame: Frame, rects: [Rect]) {
        guard let screen else { return }
        for r in rects {
            rfbMarkRectAsModified(screen, Int32(r.x), Int32(r.y), Int32(r.maxX), Int32(r.maxY))
        }
        scheduleFlush()
    }

    public func close() {
        guard !closed else { return }
        closed = true
        if let t = flushTimer { loop.cancelTimer(t); flushTimer = nil }
        if let t = holdTimer { loop.cancelTimer(t); holdTimer = nil }
        for fd in listeners { loop.unwatch(fd: fd); Glibc.close(fd) }
        listeners.removeAll()
        if let path = unixPath { unlink(path) }
        if let screen {
            forEachClient { cl in rfbCloseClient(cl) }
            processEvents() // runs clientGone for each
            screen.pointee.screenData = nil
            rfbScreenCleanup(screen)
            self.screen = nil
            free(desktopNameCopy)
            desktopNameCopy = nil
            log.info("VNC server closed")
        }
    }

    // MARK: API for QMP

    /// Sets the VNC password (QMP `change-vnc-password` / `set_password`).
    /// Only the first 8 characters count (VNC DES). An empty password, or
    /// none, lets nobody in. Has an effect only with `password=on`.
    /// When the password stops being accepted (QMP `expire_password`).
    public enum PasswordExpiry: Equatable, Sendable {
        case never
        case now
        /// Seconds from when it is set.
        case after(seconds: Int)
        /// Seconds since the Unix epoch.
        case at(unixTime: Int)
    }

    /// Sets when the password expires; a client logging in later is refused.
    public func expirePassword(_ expiry: PasswordExpiry) {
        switch expiry {
        case .after(let seconds):
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            passwordExpiry = .at(unixTime: now.tv_sec + max(0, seconds))
        default:
            passwordExpiry = expiry
        }
    }

    private var passwordExpired: Bool {
        switch passwordExpiry {
        case .never: return false
        case .now: return true
        case .after: return false
        case .at(let t):
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            return now.tv_sec >= t
        }
    }

    public func setPassword(_ newPassword: String?) {
        if password != nil { wipe(&password!) }
        password = newPassword.map { Array($0.utf8CString) }
        passwordExpiry = .never // as QEMU: a new password does not inherit the old expiry
        log.info(newPassword == nil ? "VNC password cleared" : "VNC password set")
    }

    /// Whether the server requires a password.
    public var requiresPassword: Bool { options.password }

    /// A client came or went (for QMP's VNC_CONNECTED / VNC_DISCONNECTED).
    public enum ClientEvent: Equatable, Sendable {
        case connected(VNCClientInfo)
        case disconnected(VNCClientInfo)
    }

    /// Called on the loop when a client connects or disconnects.
    public var onClientEvent: ((ClientEvent) -> Void)?

    /// What `query-vnc` reports.
    public var info: VNCServerInfo {
        VNCServerInfo(enabled: screen != nil, host: listenInfo.host, service: listenInfo.service,
                      family: listenInfo.family, auth: options.password ? "vnc" : "none",
                      clients: clients.values.map(\.info).sorted { ($0.host, $0.service) < ($1.host, $1.service) })
    }

    /// The server side of each client connection (tests).
    var clientSocketFDs: [Int32] { clients.values.map(\.fd) }

    /// The TCP port the server listens on (nil for unix or none).
    public var port: Int? { listenInfo.family == "unix" ? nil : Int(listenInfo.service) }

    // MARK: Listening

    private func listen() throws(DisplayError) {
        switch options.address {
        case .none:
            return
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { throw DisplayError("vnc: socket: \(String(cString: strerror(errno)))") }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
                Glibc.close(fd)
                throw DisplayError("vnc: unix socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                raw.copyBytes(from: bytes)
            }
            if unlink(path) != 0 && errno != ENOENT {
                Glibc.close(fd)
                throw DisplayError("vnc: cannot replace \(path): \(String(cString: strerror(errno)))")
            }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard rc == 0, Glibc.listen(fd, 16) == 0 else {
                let e = errno
                Glibc.close(fd)
                throw DisplayError("vnc: cannot listen on \(path): \(String(cString: strerror(e)))")
            }
            unixPath = path
            listeners = [fd]
            listenInfo = (path, path, "unix")
        case .tcp(let host, let first, let last):
            var lastError = ""
            search: for display in first...last {
                switch bindTCP(host: host, port: 5900 + display) {
                case .success(let fds):
                    listeners = fds
                    break search
                case .failure(let e):
                    lastError = e.message
                    if !e.message.contains("in use") { throw e }
                }
            }
            guard !listeners.isEmpty else {
                throw DisplayError("vnc: no free display from \(first) to \(last) on \(host): \(lastError)")
            }
        }
        for fd in listeners { watchListener(fd) }
    }

    private func bindTCP(host: String, port: Int) -> Result<[Int32], DisplayError> {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        switch options.family {
        case .any: hints.ai_family = AF_UNSPEC
        case .ipv4: hints.ai_family = AF_INET
        case .ipv6: hints.ai_family = AF_INET6
        }
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            return .failure(DisplayError("vnc: cannot resolve \(host): \(String(cString: gai_strerror(rc)))"))
        }
        defer { freeaddrinfo(first) }
        var fds: [Int32] = []
        var seen = Set<[UInt8]>()
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            defer { ai = a.pointee.ai_next }
            let key = Array(UnsafeRawBufferPointer(start: a.pointee.ai_addr, count: Int(a.pointee.ai_addrlen)))
            guard seen.insert(key).inserted else { continue }
            let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
            var sndbuf = Self.listenerSendBuffer
            setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, socklen_t(4)) // inherited by accepted sockets
            if a.pointee.ai_family == AF_INET6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(4)) }
            if Glibc.bind(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 || Glibc.listen(fd, 16) != 0 {
                let e = errno
                Glibc.close(fd)
                fds.forEach { Glibc.close($0) }
                return .failure(DisplayError("vnc: cannot listen on \(host) port \(port): \(String(cString: strerror(e)))"))
            }
            if fds.isEmpty {
                let (h, _, fam) = Self.address(a.pointee.ai_addr)
                listenInfo = (h, String(port), fam)
            }
            fds.append(fd)
        }
        if fds.isEmpty { return .failure(DisplayError("vnc: no usable address for \(host)")) }
        return .success(fds)
    }

    private func watchListener(_ fd: Int32) {
        do {
            try loop.watch(fd: fd) { [weak self] _ in self?.accept(on: fd) }
        } catch {
            log.error("cannot watch listening socket: \(error)")
        }
    }

    private func accept(on listener: Int32) {
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { log.warning("accept: \(String(cString: strerror(errno)))") }
                return
            }
            _ = cshims_set_cloexec(fd)
            _ = cshims_set_nonblocking(fd)
            // libvncserver select()s over its clients: an fd past FD_SETSIZE would corrupt its fd_set.
            guard fd < 1024 else {
                log.warning("VNC connection refused: descriptor \(fd) is beyond what libvncserver can select on")
                Glibc.close(fd)
                continue
            }
            guard let screen, clients.count < options.maxConnections else {
                log.warning("VNC connection refused: \(options.maxConnections) clients already connected")
                Glibc.close(fd)
                continue
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
            // newClientHook registers it; a nil result means libvncserver closed it.
            _ = rfbNewClient(screen, fd)
            scheduleFlush()
        }
    }

    // MARK: libvncserver

    private func makeScreen(desktopName: String) throws(DisplayError) {
        guard let screen = rfbGetScreen(nil, nil, Int32(frame.width), Int32(frame.height), 8, 3, 4) else {
            throw DisplayError("vnc: rfbGetScreen failed")
        }
        self.screen = screen
        let s = screen
        // We listen and accept ourselves; libvncserver gets connected sockets.
        s.pointee.port = 0
        s.pointee.ipv6port = 0
        s.pointee.autoPort = 0
        s.pointee.httpPort = 0
        s.pointee.http6Port = 0
        s.pointee.frameBuffer = frame.pixels.assumingMemoryBound(to: CChar.self)
        desktopNameCopy = strdup(desktopName)
        s.pointee.desktopName = UnsafePointer(desktopNameCopy)
        s.pointee.alwaysShared = 1
        s.pointee.neverShared = 0
        s.pointee.dontDisconnect = 1
        s.pointee.cursor = nil
        s.pointee.deferUpdateTime = 0
        s.pointee.deferPtrUpdateTime = 0
        s.pointee.handleEventsEagerly = 0
        s.pointee.screenData = Unmanaged.passUnretained(self).toOpaque()
        s.pointee.kbdAddEvent = { down, keysym, cl in VNCDisplay.of(cl)?.keyEvent(down: down != 0, keysym: keysym, cl: cl!) }
        s.pointee.ptrAddEvent = { mask, x, y, cl in VNCDisplay.of(cl)?.pointerEvent(mask: mask, x: x, y: y, cl: cl!) }
        s.pointee.newClientHook = { cl in VNCDisplay.of(cl)?.clientConnected(cl!) ?? RFB_CLIENT_REFUSE }
        // libvncserver keeps the offered security types in one process-wide
        // list: once any server used VNC auth, clients of every server are
        // offered it, and once any server ran without a password, "None" is
        // offered everywhere. So a server without a password accepts any VNC
        // response, and a server with one also checks `authenticated`.
        s.pointee.passwordCheck = { cl, response, len in VNCDisplay.of(cl)?.checkPassword(cl!, response, len) ?? 0 }
        if options.password {
            // Non-NULL authPasswdData makes libvncserver offer VNC authentication.
            s.pointee.authPasswdData = UnsafeMutableRawPointer(s)
        }
        Self.setXRGBFormat(s)
        rfbInitServerWithPthreadsAndZRLE(s)
    }

    /// Serves 0x00RRGGBB little-endian words as they are.
    private static func setXRGBFormat(_ s: rfbScreenInfoPtr) {
        s.pointee.serverFormat.redShift = 16
        s.pointee.serverFormat.greenShift = 8
        s.pointee.serverFormat.blueShift = 0
    }

    fileprivate static func of(_ cl: rfbClientPtr?) -> VNCDisplay? {
        guard let cl, let screen = cl.pointee.screen, let data = screen.pointee.screenData else { return nil }
        return Unmanaged<VNCDisplay>.fromOpaque(data).takeUnretainedValue()
    }

    private func forEachClient(_ body: (rfbClientPtr) -> Void) {
        for c in Array(clients.values) { body(c.cl) }
    }

    private func clientConnected(_ cl: rfbClientPtr) -> rfbNewClientAction {
        let fd = cl.pointee.sock
        var info = VNCClientInfo(host: "", service: "", family: "unix")
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        if rc == 0 {
            withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    let (h, p, f) = Self.address($0)
                    info = VNCClientInfo(host: h, service: p, family: f)
                }
            }
        }
        if info.family == "unix" { info.host = listenInfo.host; info.service = listenInfo.service }
        let client = Client(cl: cl, fd: fd, info: info)
        client.authenticated = !options.password
        clients[UnsafeMutableRawPointer(cl)] = client
        cl.pointee.clientGoneHook = { cl in VNCDisplay.of(cl)?.clientGone(cl!) }
        sizeSendBuffer(fd)
        do {
            try loop.watch(fd: fd) { [weak self] _ in self?.processEvents() }
        } catch {
            log.error("cannot watch VNC client: \(error)")
        }
        log.info("VNC client connected", metadata: ["client": "\(info.host):\(info.service)", "clients": "\(clients.count)"])
        onClientEvent?(.connected(info))
        return RFB_CLIENT_ACCEPT
    }

    private func clientGone(_ cl: rfbClientPtr) {
        guard let client = clients.removeValue(forKey: UnsafeMutableRawPointer(cl)) else { return }
        loop.unwatch(fd: client.fd)
        // Release what this client held down, so no key sticks in the guest.
        for code in client.pressed.sorted() { send(.key(code: code, pressed: false)) }
        log.info("VNC client disconnected", metadata: ["client": "\(client.info.host):\(client.info.service)", "clients": "\(clients.count)"])
        onClientEvent?(.disconnected(client.info))
    }

    /// Room in the kernel for a whole raw frame, so one update never blocks.
    /// Accepted TCP sockets inherit the listener's buffer (sized while the
    /// process may still have CAP_NET_ADMIN, before -runas drops it); others
    /// are enlarged here if they are too small.
    private func sizeSendBuffer(_ fd: Int32) {
        let needed = frame.byteCount + 256 * 1024
        if Self.sendBufferSize(fd) >= needed { return }
        var size = Int32(clamping: needed)
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(4)) != 0 {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
        }
        if Self.sendBufferSize(fd) < needed && !warnedSendBuffer {
            warnedSendBuffer = true
            log.warning("cannot enlarge VNC send buffers to a whole frame (needs CAP_NET_ADMIN): a slow client may delay the device model by up to 5 s")
        }
    }

    /// The kernel's send buffer limit (it reports twice what was asked for,
    /// its bookkeeping overhead included; half of that is what data gets).
    private static func sendBufferSize(_ fd: Int32) -> Int {
        var size: Int32 = 0
        var len = socklen_t(4)
        guard getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len) == 0 else { return 0 }
        return Int(size) / 2
    }

    /// The largest framebuffer a vfb backend accepts is 32 MiB.
    private static let listenerSendBuffer: Int32 = 32 * 1024 * 1024 + 256 * 1024

    private func checkPassword(_ cl: rfbClientPtr, _ response: UnsafePointer<CChar>?, _ len: Int32) -> rfbBool {
        guard options.password else { return 1 }
        guard var secret = password, secret.count > 1, let response, len > 0, len <= 16 else {
            log.warning("VNC authentication refused: no password set")
            return 0
        }
        guard !passwordExpired else {
            log.warning("VNC authentication refused: the password has expired")
            return 0
        }
        defer { wipe(&secret) }
        var challenge = cl.pointee.authChallenge
        let ok = withUnsafeMutableBytes(of: &challenge) { raw -> Bool in
            rfbEncryptBytes(raw.baseAddress!.assumingMemoryBound(to: UInt8.self), &secret)
            return memcmp(raw.baseAddress!, response, Int(len)) == 0
        }
        if ok { clients[UnsafeMutableRawPointer(cl)]?.authenticated = true } else { log.warning("VNC authentication failed") }
        return ok ? 1 : 0
    }

    private func wipe(_ bytes: inout [CChar]) {
        bytes.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress { explicit_bzero(base, raw.count) }
        }
    }


    // MARK: Running libvncserver on the loop

    /// Lets libvncserver read what is ready and send pending updates: what
    /// `rfbProcessEvents` does, except that clients with unsent bytes, or not
    /// authenticated, are skipped for updates (their input is still read;
    /// libvncserver's own `onHold` would stop reading them too).
    private func processEvents() {
        guard let screen else { return }
        _ = rfbCheckFds(screen, 0)
        var held = false
        for c in Array(clients.values) {
            if c.cl.pointee.sock < 0 { rfbClientConnectionGone(c.cl); continue } // runs clientGone
            if xenvfb_socket_unsent_bytes(c.fd) > 0 || !c.authenticated {
                // Come back for it only if it is owed an update.
                if c.authenticated && xenvfb_vnc_update_owed(c.cl) != 0 {
                    held = true
                }
                continue
            }
            _ = rfbUpdateClient(c.cl)
            if c.cl.pointee.sock < 0 { rfbClientConnectionGone(c.cl) }
        }
        if held {
            // Check again soon (backing off) until the client drained its socket.
            if holdTimer == nil {
                holdTimer = loop.addTimer(after: .milliseconds(holdDelayMilliseconds)) { [weak self] in
                    guard let self else { return }
                    self.holdTimer = nil
                    self.holdDelayMilliseconds = min(self.holdDelayMilliseconds * 2, 200)
                    self.processEvents()
                }
            }
        } else {
            holdDelayMilliseconds = 5
        }
    }

    private func scheduleFlush() {
        guard flushTimer == nil, screen != nil else { return }
        flushTimer = loop.addTimer(after: .zero) { [weak self] in
            guard let self else { return }
            self.flushTimer = nil
            self.processEvents()
        }
    }

    // MARK: Input

    private func send(_ event: InputEvent) {
        hub?.input?.send(event)
    }

    private func keyEvent(down: Bool, keysym: UInt32, cl: rfbClientPtr) {
        guard let code = keymap.keycode(forKeysym: keysym) else {
            log.debug("no key for keysym 0x\(String(keysym, radix: 16)) in \(keymap.name)")
            return
        }
        key(code, down: down, cl: cl)
    }

    fileprivate func extendedKeyEvent(down: Bool, keysym: UInt32, scancode: UInt32, cl: rfbClientPtr) {
        if let code = XTScancode.linuxKeycode(scancode) {
            key(code, down: down, cl: cl)
        } else {
            keyEvent(down: down, keysym: keysym, cl: cl)
        }
    }

    private func key(_ code: UInt32, down: Bool, cl: rfbClientPtr) {
        guard let client = clients[UnsafeMutableRawPointer(cl)], client.authenticated else { return }
        if down { client.pressed.insert(code) } else { client.pressed.remove(code) }
        send(.key(code: code, pressed: down))
    }

    private func pointerEvent(mask: Int32, x: Int32, y: Int32, cl: rfbClientPtr) {
        guard let client = clients[UnsafeMutableRawPointer(cl)], client.authenticated else { return }
        let px = max(0, min(x, Int32(frame.width - 1)))
        let py = max(0, min(y, Int32(frame.height - 1)))
        if client.lastPosition == nil || client.lastPosition! != (px, py) {
            client.lastPosition = (px, py)
            send(.absolute(x: px, y: py))
        }
        let changed = mask ^ client.buttons
        let buttons: [(Int32, UInt32)] = [(1, LinuxInput.BTN_LEFT), (2, LinuxInput.BTN_MIDDLE), (4, LinuxInput.BTN_RIGHT)]
        for (bit, code) in buttons where changed & bit != 0 {
            key(code, down: mask & bit != 0, cl: cl)
        }
        // Wheel "buttons" 4 and 5 (bits 3 and 4): one step per press; up is negative.
        if changed & 8 != 0 && mask & 8 != 0 { send(.wheel(-1)) }
        if changed & 16 != 0 && mask & 16 != 0 { send(.wheel(1)) }
        client.buttons = mask
    }

    // MARK: Helpers

    static func address(_ sa: UnsafePointer<sockaddr>) -> (host: String, service: String, family: String) {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let len: socklen_t
        let family: String
        switch Int32(sa.pointee.sa_family) {
        case AF_INET: len = socklen_t(MemoryLayout<sockaddr_in>.size); family = "ipv4"
        case AF_INET6: len = socklen_t(MemoryLayout<sockaddr_in6>.size); family = "ipv6"
        default: return ("", "", "unix")
        }
        guard getnameinfo(sa, len, &host, socklen_t(host.count), &service, socklen_t(service.count),
                          NI_NUMERICHOST | NI_NUMERICSERV) == 0 else { return ("", "", family) }
        let text = { (chars: [CChar]) in chars.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }
        return (text(host), text(service), family)
    }

    /// Process-wide libvncserver set-up, once: log routing, the stall limit,
    /// and the QEMU Extended Key Event extension.
    private static let libraryHooks: Bool = {
        xenvfb_vnc_set_log_sink { isError, line in
            guard let line else { return }
            let logger = Log.logger("libvncserver")
            let text = String(cString: line)
            // Unix sockets have no TCP_NODELAY; libvncserver says so for every client.
            if isError != 0 && !text.contains("TCP_NODELAY") { logger.warning("\(text)") } else { logger.debug("\(text)") }
        }
        xenvfb_vnc_set_max_client_wait(VNCDisplay.stallLimitMilliseconds)
        QEMUExtendedKeyEvent.register()
        return true
    }()

    /// Loads libvncserver on first use (it is not linked: CDisplayShims/vnc.c),
    /// then sets it up.
    private static func installLibraryHooks() throws(DisplayError) {
        // Its error names the option and the Debian package to install.
        var reason = [CChar](repeating: 0, count: 1024)
        guard xenvfb_vnc_load(&reason, reason.count) == 0 else {
            throw DisplayError("vnc: \(reason.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })")
        }
        _ = libraryHooks
    }
}

/// QEMU's Extended Key Event (pseudo-encoding -258, client message 255/0):
/// the client sends the keysym and the XT scancode of the physical key, so
/// the guest's own layout applies and `-k` is not needed. libvncserver does
/// not implement it; this registers it as a protocol extension.
enum QEMUExtendedKeyEvent {
    static let pseudoEncoding: Int32 = -258

    static func register() {
        let encodings = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
        encodings[0] = pseudoEncoding
        encodings[1] = 0
        let ext = UnsafeMutablePointer<rfbProtocolExtension>.allocate(capacity: 1)
        ext.initialize(to: rfbProtocolExtension())
        // Enabled for every client, so message 255 is always understood.
        ext.pointee.newClient = { _, _ in 1 }
        ext.pointee.pseudoEncodings = encodings
        ext.pointee.enablePseudoEncoding = { cl, _, encoding in
            guard encoding == QEMUExtendedKeyEvent.pseudoEncoding, let cl else { return 0 }
            // Acknowledge with an empty rect of that encoding, as QEMU does;
            // clients send extended key events only after seeing it.
            let w = UInt16(clamping: cl.pointee.screen.pointee.width)
            let h = UInt16(clamping: cl.pointee.screen.pointee.height)
            var msg: [UInt8] = [0, 0, 0, 1, 0, 0, 0, 0, UInt8(w >> 8), UInt8(w & 0xff), UInt8(h >> 8), UInt8(h & 0xff)]
            let enc = UInt32(bitPattern: encoding)
            msg += [UInt8(enc >> 24), UInt8((enc >> 16) & 0xff), UInt8((enc >> 8) & 0xff), UInt8(enc & 0xff)]
            _ = msg.withUnsafeBytes { rfbWriteExact(cl, $0.baseAddress!.assumingMemoryBound(to: CChar.self), Int32($0.count)) }
            return 1
        }
        ext.pointee.handleMessage = { cl, _, message in
            guard let cl, let message, message.pointee.type == 255 else { return 0 }
            var body = [UInt8](repeating: 0, count: 11)
            let n = body.withUnsafeMutableBytes { rfbReadExact(cl, $0.baseAddress!.assumingMemoryBound(to: CChar.self), 11) }
            guard n > 0 else {
                rfbCloseClient(cl)
                return 1
            }
            guard body[0] == 0 else {
                // Other QEMU submessages (audio) have lengths we do not know.
                Log.logger("display.vnc").warning("unsupported QEMU client message \(body[0]); closing the client")
                rfbCloseClient(cl)
                return 1
            }
            let down = UInt16(body[1]) << 8 | UInt16(body[2])
            let keysym = body[3...6].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let scancode = body[7...10].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            VNCDisplay.of(cl)?.extendedKeyEvent(down: down != 0, keysym: keysym, scancode: scancode, cl: cl)
            return 1
        }
        rfbRegisterProtocolExtension(ext)
    }
}
