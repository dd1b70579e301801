import Support
/// The `-vnc` argument, as QEMU parses it and libxl writes it:
///
///     -vnc [HOST]:DISPLAY[,to=LAST][,password=on][,ipv4=on|ipv6=on][,websocket=on|PORT][,tls-creds=ID][,lossy=on][,share=…]
///     -vnc unix:PATH[,password=on]
///     -vnc none
///
/// DISPLAY is a number; the server listens on TCP port 5900+DISPLAY. With
/// `to=LAST` it tries DISPLAY, DISPLAY+1, … LAST and takes the first free one
/// (libxl's `vncunused`). An empty HOST means loopback (127.0.0.1), unlike
/// QEMU, where it means every interface: say `0.0.0.0:0` or `[::]:0` for that.
/// `password=on` asks for VNC authentication; the password is set later
/// through `VNCDisplay.setPassword` (QMP `change-vnc-password`/`set_password`)
/// and until then nobody can log in. `websocket=on` adds a WebSocket listener
/// on port 5700+DISPLAY, `websocket=PORT` on PORT (QEMU's grammar; for noVNC
/// and other browser clients); the VNC port never speaks WebSocket.
/// `lossy=on` allows lossy encodings (the default is lossless, as QEMU's).
/// `tls-creds=ID` names an `-object tls-creds-x509,id=ID,...` (endpoint=server):
/// the VNC port then speaks VeNCrypt X.509 (X509None, or X509Vnc with
/// `password=on`) and the WebSocket port wss:// (as QEMU).
public struct VNCOptions: Equatable, Sendable {
    public enum Address: Equatable, Sendable {
        /// VNC is off (`-vnc none`): no socket is opened.
        case none
        /// TCP on `host`, port 5900+display, searching up to `lastDisplay`.
        case tcp(host: String, display: Int, lastDisplay: Int)
        /// A Unix socket at `path` (an existing file is replaced).
        case unix(path: String)
    }

    public enum Family: String, Equatable, Sendable { case any, ipv4, ipv6 }

    public var address: Address
    public var password = false
    public var family = Family.any
    /// Most clients at once; more are refused (QEMU's `connections=`, default 32).
    public var maxConnections = 32
    /// `websocket=on` (nil: 5700 + display) or `websocket=PORT`.
    public var webSocket: WebSocketPort?
    /// `lossy=on`.
    public var lossy = false
    /// `tls-creds=ID`: the id of the `-object tls-creds-x509` to use.
    public var tlsCreds: String?

    /// Where the WebSocket listener goes.
    public enum WebSocketPort: Equatable, Sendable {
        /// 5700 + the VNC display (QEMU's `websocket=on`).
        case displayOffset
        case port(Int)
    }
    /// QEMU's `key-delay-ms=N`: input paced like `--input-pace N`.
    public var keyDelayMilliseconds: Int?

    public init(address: Address, password: Bool = false, family: Family = .any, maxConnections: Int = 32) {
        self.address = address
        self.password = password
        self.family = family
        self.maxConnections = maxConnections
    }

    public init(spec: String) throws(DisplayError) {
        let items = OptionList.split(spec)
        let head = items[0]
        var address: Address
        if head == "none" {
            address = .none
        } else if head.hasPrefix("unix:") {
            let path = String(head.dropFirst(5))
            guard !path.isEmpty else { throw DisplayError("-vnc \(spec): unix: needs a socket path") }
            address = .unix(path: path)
        } else {
            guard let colon = head.lastIndex(of: ":") else {
                throw DisplayError("-vnc \(spec): expected HOST:DISPLAY, unix:PATH or none")
            }
            var host = String(head[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") && host.count >= 2 {
                host = String(host.dropFirst().dropLast())
            } else if host.contains(":") {
                throw DisplayError("-vnc \(spec): write an IPv6 address in brackets, as [::1]:0")
            }
            let display = try OptionList.integer(String(head[head.index(after: colon)...]), option: "display",
                                                 in: "-vnc \(spec)", range: 0...(65535 - 5900))
            address = .tcp(host: host.isEmpty ? "127.0.0.1" : host, display: display, lastDisplay: display)
        }
        self.init(address: address)
        for item in items.dropFirst() {
            let (key, value) = OptionList.keyValue(item)
            let context = "-vnc \(spec)"
            switch key {
            case "to":
                guard case .tcp(let host, let display, _) = address else {
                    throw DisplayError("\(context): to= needs a TCP address")
                }
                let last = try OptionList.integer(value, option: key, in: context, range: 0...(65535 - 5900))
                guard last >= display else { throw DisplayError("\(context): to=\(last) is below display \(display)") }
                address = .tcp(host: host, display: display, lastDisplay: last)
            case "password":
                password = try OptionList.bool(value, option: key, in: context)
            case "ipv4":
                if try OptionList.bool(value, option: key, in: context) { family = .ipv4 }
            case "ipv6":
                if try OptionList.bool(value, option: key, in: context) { family = .ipv6 }
            case "connections":
                maxConnections = try OptionList.integer(value, option: key, in: context, range: 1...1024)
            case "share":
                // Connections are always shared (a CI harness and a person may watch together).
                guard let value, ["allow-exclusive", "force-shared", "ignore"].contains(value) else {
                    throw DisplayError("\(context): share=\(value ?? "") is not allow-exclusive, force-shared or ignore")
                }
            case "lossy":
                lossy = try OptionList.bool(value, option: key, in: context)
            case "websocket":
                guard case .tcp = address else { throw DisplayError("\(context): websocket needs a TCP address") }
                if let value, let port = QEMUOptions.integer(value, range: 1...65535) {
                    webSocket = .port(port)
                } else if try OptionList.bool(value, option: key, in: context) {
                    webSocket = .displayOffset
                } else {
                    webSocket = nil
                }
            case "tls-creds":
                guard let value, !value.isEmpty else { throw DisplayError("\(context): tls-creds= needs the id of a -object tls-creds-x509") }
                tlsCreds = value
            case "tls", "x509", "x509verify":
                // QEMU removed these in 2.x; tls-creds= replaced them.
                throw DisplayError("\(context): \(key)= was removed from QEMU; use -object tls-creds-x509,id=ID,dir=DIR,endpoint=server and tls-creds=ID")
            case "non-adaptive", "lock-key-sync":
                _ = try OptionList.bool(value, option: key, in: context)
            case "key-delay-ms":
                keyDelayMilliseconds = try OptionList.integer(value, option: key, in: context, range: 0...10_000)
            default:
                throw DisplayError("\(context): unsupported option '\(item)' (supported: to=, password=on, ipv4=on, ipv6=on, websocket=, tls-creds=, lossy=, connections=, share=, key-delay-ms=)")
            }
        }
        self.address = address
        if case .none = address, password { throw DisplayError("-vnc \(spec): password makes no sense with none") }
    }
}

/// X.509 credentials for the VNC server's TLS: what `-object
/// tls-creds-x509,dir=DIR,endpoint=server[,verify-peer=on|off][,priority=P]`
/// gives (the command line resolves `tls-creds=ID` to it).
public struct VNCTLSCredentials: Equatable, Sendable {
    /// ca-cert.pem, server-cert.pem, server-key.pem [, ca-crl.pem, dh-params.pem].
    public var directory: String
    /// Clients must present a certificate signed by the CA (QEMU's default: on).
    public var verifyPeer: Bool
    /// A GnuTLS priority string (nil: NORMAL).
    public var priority: String?

    public init(directory: String, verifyPeer: Bool = true, priority: String? = nil) {
        self.directory = directory
        self.verifyPeer = verifyPeer
        self.priority = priority
    }
}
