#if canImport(Glibc)
import Glibc
#endif
import Console
import Damage
import EventLoop
import Logging
import RFB
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
    /// The authentication inside the RFB stream: `none` or `vnc` (what the
    /// WebSocket listener reports, as QEMU's, also over wss).
    public var auth: String
    public var clients: [VNCClientInfo]
    /// The WebSocket listener (`websocket=`), if any: host and port.
    public var websocket: (host: String, service: String, family: String)?
    /// The VeNCrypt subtype of the VNC listener (`x509-none`, `x509-vnc`), nil without TLS.
    public var vencrypt: String?

    /// `query-vnc`'s `auth`: `none`, `vnc`, or `vencrypt+x509+none` / `vencrypt+x509+vnc` as QEMU names them.
    public var queryVNCAuth: String {
        guard let vencrypt else { return auth }
        return "vencrypt+" + String(vencrypt.map { $0 == "-" ? "+" : $0 })
    }

    public static func == (a: VNCServerInfo, b: VNCServerInfo) -> Bool {
        a.enabled == b.enabled && a.host == b.host && a.service == b.service && a.family == b.family && a.auth == b.auth
            && a.clients == b.clients && a.websocket?.host == b.websocket?.host && a.websocket?.service == b.websocket?.service
            && a.websocket?.family == b.websocket?.family && a.vencrypt == b.vencrypt
    }
}

/// The VNC display: xenvfb's own RFB server (the `RFB` module) showing the
/// console, with input going to the console's queue.
///
/// The server runs on a thread of its own: every socket, every handshake,
/// every encode and every write happens there, so no client — one that
/// stalls in the middle of a message, never reads, or connects and says
/// nothing — can hold the guest's loop. The loop only tells it what changed
/// (`markDirty`, `resize`: a few words under a lock and an eventfd write);
/// the server reads the frame through `Console.withFrame`, a band of rows at
/// a time. Input comes back to the loop through `EventLoop.post`, and is
/// translated here: keysyms through the `-k` keymap (per client, with its
/// Shift/AltGr state), QEMU's extended key events by scancode, pointer
/// buttons and wheel as vkbd wants them. A client that goes away has every
/// key and button it held released.
///
/// Create it, then `console.add` it.
public final class VNCDisplay: Display {
    public let name = "vnc"
    public let options: VNCOptions
    public let keymap: Keymap

    private let loop: EventLoop
    private weak var console: Console?
    private var log: Logger
    private var server: RFBServer?
    private var clients: [UInt64: Client] = [:]
    private var unmappedKeysyms = UnmappedKeysyms()
    private var closed = false

    /// What one client holds, as the guest was told.
    private final class Client {
        let info: VNCClientInfo
        var buttons: UInt8 = 0
        var lastPosition: (Int, Int)?
        var pressed: Set<UInt32> = []
        var keymapState = KeymapState()
        init(info: VNCClientInfo) { self.info = info }
    }

    /// `spec` is the `-vnc` argument; `keymap` the `-k` layout (default en-us).
    public convenience init(spec: String, loop: EventLoop, console: Console, keymap: String = "en-us", desktopName: String = "QEMU") throws(DisplayError) {
        let layout: Keymap
        do { layout = try Keymap(name: keymap) } catch { throw DisplayError("-k: \(error)") }
        try self.init(options: VNCOptions(spec: spec), loop: loop, console: console, keymap: layout, desktopName: desktopName)
    }

    /// Listens at once, so `info` has the port before the frame arrives.
    /// `tlsCredentials` is what `options.tlsCreds` names (required then).
    public init(options: VNCOptions, loop: EventLoop, console: Console, keymap: Keymap, desktopName: String = "QEMU",
                tlsCredentials: VNCTLSCredentials? = nil) throws(DisplayError) {
        self.options = options
        self.loop = loop
        self.console = console
        self.keymap = keymap
        self.log = Log.logger("display.vnc")
        guard let address = Self.listenAddress(options) else { return }
        var rfb = RFBServerOptions(address: address)
        rfb.passwordRequired = options.password
        rfb.maxConnections = options.maxConnections
        rfb.lossyAllowed = options.lossy
        rfb.desktopName = desktopName
        if let id = options.tlsCreds {
            guard let c = tlsCredentials else { throw DisplayError("vnc: tls-creds '\(id)' is not defined (-object tls-creds-x509,id=\(id),dir=DIR,endpoint=server)") }
            rfb.tls = RFBTLSOptions(directory: c.directory, verifyPeer: c.verifyPeer, priority: c.priority)
        }
        if let ws = options.webSocket, case .tcp(let host, let display, let last) = options.address {
            switch ws {
            case .displayOffset:
                rfb.webSockets = [.tcp(host: host, port: 5700 + display, lastPort: 5700 + last, family: Self.family(options.family))]
            case .port(let port):
                rfb.webSockets = [.tcp(host: host, port: port, lastPort: port, family: Self.family(options.family))]
            }
        }
        // Events arrive on the server's thread; everything they touch is the loop's.
        let target = LoopBound(WeakDisplay(self))
        do throws(RFBError) {
            server = try RFBServer(options: rfb, source: ConsolePixels(console), onEvent: { event in
                loop.postLoopBound { target.value.display?.handle(event) }
            })
        } catch {
            throw DisplayError("vnc: \(error)")
        }
        let info = self.info
        log[metadataKey: "listen"] = "\(info.family == "ipv6" ? "[\(info.host)]" : info.host):\(info.service)"
        var metadata: Logger.Metadata = ["auth": "\(info.queryVNCAuth)"]
        if let ws = info.websocket {
            metadata["websocket"] = "\(options.tlsCreds != nil ? "wss://" : "ws://")\(ws.family == "ipv6" ? "[\(ws.host)]" : ws.host):\(ws.service)"
        }
        log.info("VNC server listening", metadata: metadata)
    }

    deinit { close() }

    private static func family(_ f: VNCOptions.Family) -> RFBListenAddress.Family {
        switch f {
        case .any: return .any
        case .ipv4: return .ipv4
        case .ipv6: return .ipv6
        }
    }

    private static func listenAddress(_ options: VNCOptions) -> RFBListenAddress? {
        switch options.address {
        case .none: return nil
        case .unix(let path): return .unix(path: path)
        case .tcp(let host, let display, let last):
            return .tcp(host: host, port: 5900 + display, lastPort: 5900 + last, family: family(options.family))
        }
    }

    // MARK: Display

    public func frameDidResize(_ frame: Frame) {
        server?.resize(width: frame.width, height: frame.height)
    }

    public func frameDidUpdate(_ frame: Frame, rects: [Rect]) {
        server?.markDirty(rects.map { RFBRect(x: $0.x, y: $0.y, width: $0.width, height: $0.height) })
    }

    public func close() {
        guard !closed else { return }
        closed = true
        if let server {
            server.close()
            self.server = nil
            for id in Array(clients.keys) { clientGone(id) }
            log.info("VNC server closed")
        }
    }

    // MARK: API for QMP

    /// When the password stops being accepted (QMP `expire_password`).
    public typealias PasswordExpiry = RFBPasswordExpiry

    /// Sets when the password expires; a client logging in later is refused.
    /// Any value is safe (a far future saturates to "never").
    public func expirePassword(_ expiry: PasswordExpiry) {
        server?.expirePassword(expiry)
    }

    /// Sets the VNC password (QMP `change-vnc-password` / `set_password`).
    /// Only the first 8 characters count (VNC DES). An empty password, or
    /// none, lets nobody in. Has an effect only with `password=on`.
    public func setPassword(_ newPassword: String?) {
        server?.setPassword(newPassword)
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
        guard let server else {
            return VNCServerInfo(enabled: false, host: "", service: "", family: "", auth: "none", clients: [], websocket: nil)
        }
        let i = server.info
        return VNCServerInfo(enabled: true, host: i.listen.host, service: i.listen.service, family: i.listen.family,
                             auth: i.auth,
                             clients: i.clients.map(Self.clientInfo).sorted { ($0.host, $0.service) < ($1.host, $1.service) },
                             websocket: i.websockets.first.map { ($0.host, $0.service, $0.family) }, vencrypt: i.vencrypt)
    }

    /// The TCP port the server listens on (nil for unix or none).
    public var port: Int? {
        let i = info
        return i.enabled && i.family != "unix" ? Int(i.service) : nil
    }

    private static func clientInfo(_ c: RFBClientInfo) -> VNCClientInfo {
        VNCClientInfo(host: c.host, service: c.service, family: c.family, websocket: c.websocket)
    }

    // MARK: Input (on the loop)

    private func handle(_ event: RFBEvent) {
        guard !closed else { return }
        switch event {
        case .connected(let c):
            let info = Self.clientInfo(c)
            clients[c.id] = Client(info: info)
            onClientEvent?(.connected(info))
        case .disconnected(let c):
            clientGone(c.id)
        case .key(let keysym, let down, let scancode, let id):
            guard let client = clients[id] else { return }
            if let scancode, let code = XTScancode.linuxKeycode(scancode) {
                // QEMU's extended key event: the physical key; the guest's layout applies.
                client.keymapState.record(KeyEvent(code: code, pressed: down))
                key(code, down: down, client)
                return
            }
            guard let events = keymap.keyEvents(keysym: keysym, down: down, state: &client.keymapState) else {
                if down && unmappedKeysyms.firstReport(keysym) {
                    log.warning("keysym 0x\(String(keysym, radix: 16)) has no key on keymap \(keymap.name); dropped (logged once per keysym)")
                }
                return
            }
            for e in events { key(e.code, down: e.pressed, client) }
        case .pointer(let mask, let x, let y, let id):
            guard let client = clients[id] else { return }
            pointer(mask: mask, x: x, y: y, client)
        }
    }

    private func clientGone(_ id: UInt64) {
        guard let client = clients.removeValue(forKey: id) else { return }
        // Release what this client held down, so no key sticks in the guest.
        for code in client.pressed.sorted() { send(.key(code: code, pressed: false)) }
        onClientEvent?(.disconnected(client.info))
    }

    private func key(_ code: UInt32, down: Bool, _ client: Client) {
        if down { client.pressed.insert(code) } else { client.pressed.remove(code) }
        send(.key(code: code, pressed: down))
    }

    private func pointer(mask: UInt8, x: Int, y: Int, _ client: Client) {
        let size = console?.size ?? (width: 1, height: 1)
        let px = max(0, min(x, size.width - 1)), py = max(0, min(y, size.height - 1))
        if client.lastPosition == nil || client.lastPosition! != (px, py) {
            client.lastPosition = (px, py)
            send(.absolute(x: Int32(px), y: Int32(py)))
        }
        let changed = mask ^ client.buttons
        let buttons: [(UInt8, UInt32)] = [(1, LinuxInput.BTN_LEFT), (2, LinuxInput.BTN_MIDDLE), (4, LinuxInput.BTN_RIGHT)]
        for (bit, code) in buttons where changed & bit != 0 {
            key(code, down: mask & bit != 0, client)
        }
        // Wheel "buttons" 4 and 5 (bits 3 and 4): one step per press; up is negative.
        if changed & 8 != 0 && mask & 8 != 0 { send(.wheel(-1)) }
        if changed & 16 != 0 && mask & 16 != 0 { send(.wheel(1)) }
        client.buttons = mask
    }

    private func send(_ event: InputEvent) {
        console?.input?.send(event)
    }
}

/// The console's frame as the RFB server reads it: under the console's
/// lock, from the server's thread.
final class ConsolePixels: RFBFrameSource, @unchecked Sendable {
    private weak var console: Console?

    init(_ console: Console) { self.console = console }

    func withPixels<R>(_ body: (UnsafeRawPointer, Int, Int, Int) -> R) -> R {
        guard let console else {
            var black: UInt32 = 0
            return body(&black, 1, 1, 4)
        }
        return console.withFrame { frame in body(UnsafeRawPointer(frame.pixels), frame.width, frame.height, frame.stride) }
    }
}

/// A weak reference carried to the loop (see `LoopBound`).
private final class WeakDisplay {
    weak var display: VNCDisplay?
    init(_ display: VNCDisplay) { self.display = display }
}
