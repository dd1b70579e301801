#if canImport(Glibc)
import Glibc
#endif

/// Where the server reads the picture from. The console conforms to this.
public protocol RFBFrameSource: AnyObject, Sendable {
    /// Runs `body` with the current picture under the frame's lock: XRGB8888, little-endian
    /// 32-bit words 0x00RRGGBB, rows `stride` bytes apart. Keep `body` short (copy/translate a
    /// band of rows, never compress or do I/O inside): the guest's loop waits for this lock.
    func withPixels<R>(_ body: (_ pixels: UnsafeRawPointer, _ width: Int, _ height: Int, _ stride: Int) -> R) -> R
}

/// Something a client did or that happened to a client. Delivered on the
/// server's thread; forward it, do not block.
public enum RFBEvent: Equatable, Sendable {
    /// A key went down or up. `scancode` is set for QEMU's extended key
    /// event: the XT scancode the client sent (0xe0-prefixed keys as 0x80 | code, QEMU's numbering).
    /// `client` is the sender's `RFBClientInfo.id`.
    case key(keysym: UInt32, down: Bool, scancode: UInt32?, client: UInt64)
    /// The pointer: RFB button mask (bit 0 left, 1 middle, 2 right, 3/4 wheel
    /// up/down) and position, clamped to the frame.
    case pointer(buttons: UInt8, x: Int, y: Int, client: UInt64)
    /// A client connected (before authentication, as QMP's VNC_CONNECTED).
    case connected(RFBClientInfo)
    /// A client went away, or was closed.
    case disconnected(RFBClientInfo)
}

/// One connected client, as QMP `query-vnc` shows it.
public struct RFBClientInfo: Equatable, Hashable, Sendable {
    public var host: String
    public var service: String
    /// `ipv4`, `ipv6` or `unix`.
    public var family: String
    /// Connected through the WebSocket listener.
    public var websocket: Bool
    /// This connection, among all of the server's (never reused).
    public var id: UInt64

    public init(host: String, service: String, family: String, websocket: Bool, id: UInt64 = 0) {
        self.host = host
        self.service = service
        self.family = family
        self.websocket = websocket
        self.id = id
    }
}

/// One listening socket.
public struct RFBListenInfo: Equatable, Sendable {
    public var host: String
    /// The port number as text, or the socket path.
    public var service: String
    /// `ipv4`, `ipv6` or `unix`.
    public var family: String
}

/// What QMP `query-vnc` reports.
public struct RFBServerInfo: Equatable, Sendable {
    /// The VNC listener (the first address, as QEMU reports it).
    public var listen: RFBListenInfo
    /// Every VNC listening socket (a host name can resolve to several).
    public var listeners: [RFBListenInfo]
    /// WebSocket listening sockets.
    public var websockets: [RFBListenInfo]
    /// The authentication inside the RFB stream: `none` or `vnc` (also over
    /// VeNCrypt and wss, as QEMU's WebSocket listener reports it).
    public var auth: String
    public var clients: [RFBClientInfo]
    /// The VeNCrypt subtype on the VNC listener (`x509-none`, `x509-vnc`), nil without TLS.
    public var vencrypt: String?
    /// The WebSocket listeners speak wss:// (TLS from the first byte).
    public var webSocketTLS = false

    /// QMP `query-vnc`'s `auth`: `none`, `vnc`, or QEMU's `vencrypt+x509+none` / `vencrypt+x509+vnc`.
    public var queryVNCAuth: String {
        guard let vencrypt else { return auth }
        return "vencrypt+" + String(vencrypt.map { $0 == "-" ? "+" : $0 })
    }
}

/// An address to listen on.
public enum RFBListenAddress: Equatable, Sendable {
    public enum Family: String, Equatable, Sendable { case any, ipv4, ipv6 }
    /// TCP on `host` (empty: every interface), on the first free port from
    /// `port` to `lastPort` (QEMU's `to=`; libxl's vncunused).
    case tcp(host: String, port: Int, lastPort: Int, family: Family)
    /// A Unix socket at `path`, mode 0600; an existing file is replaced.
    case unix(path: String)

    public static func tcp(host: String, port: Int) -> RFBListenAddress {
        .tcp(host: host, port: port, lastPort: port, family: .any)
    }
}

/// How the server is set up. QEMU's `-vnc` options map onto it.
public struct RFBServerOptions: Sendable {
    public var address: RFBListenAddress
    /// WebSocket (RFC 6455) listeners, each on its own port (QEMU's `websocket=`).
    public var webSockets: [RFBListenAddress] = []
    /// Most connections at once, handshaking ones included (QEMU's `connections=`).
    public var maxConnections = 32
    /// VNC authentication (`password=on`); until `setPassword` nobody gets in.
    public var passwordRequired = false
    /// Lossy encodings allowed (`lossy=on`). No lossy encoding is implemented,
    /// so the server is lossless either way: clients asking for JPEG quality get
    /// lossless Tight. Kept so the option has a place to go.
    public var lossyAllowed = false
    /// ServerInit's desktop name.
    public var desktopName = "QEMU"
    /// TLS (QEMU's `tls-creds=`): VeNCrypt X.509 on the VNC listener (subtype
    /// X509None, or X509Vnc with `passwordRequired`), wss:// on the WebSocket
    /// listeners. GnuTLS is loaded (dlopen) only then.
    public var tls: RFBTLSOptions?
    /// A client must finish the handshake (version, security, ClientInit)
    /// within this many seconds.
    public var handshakeTimeoutSeconds = 20

    public init(address: RFBListenAddress) { self.address = address }
}

/// An error setting the server up (bind, socket, thread), with what failed.
public struct RFBError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// When the VNC password stops being accepted (QMP `expire_password`).
public enum RFBPasswordExpiry: Equatable, Sendable {
    case never
    case now
    /// Seconds from when it is set.
    case after(seconds: Int)
    /// Seconds since the Unix epoch.
    case at(unixTime: Int)

    /// QMP's `time` argument: "now", "never", "+SECONDS" or "SECONDS"
    /// (absolute). Numbers that do not fit saturate (they mean "never" in
    /// practice); nil for anything else.
    public init?(qmp text: String) {
        switch text {
        case "now": self = .now
        case "never": self = .never
        default:
            var digits = Substring(text)
            let relative = digits.first == "+"
            if relative { digits = digits.dropFirst() }
            guard !digits.isEmpty, digits.utf8.count <= 64, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
            let value = Int(digits) ?? Int.max // all digits: only too large can fail
            self = relative ? .after(seconds: value) : .at(unixTime: value)
        }
    }

    /// The Unix time after which the password is refused (nil: never), for a
    /// password set at `now`; refused when the deadline is before the current
    /// time, as QEMU compares. Saturating: no input overflows.
    func deadline(now: Int) -> Int? {
        switch self {
        case .never: return nil
        case .now: return Int.min
        case .after(let seconds):
            let (sum, overflow) = now.addingReportingOverflow(max(seconds, 0))
            return overflow ? nil : sum
        case .at(let t): return t
        }
    }
}
