import CDisplayShims

/// X.509 credentials for TLS on the VNC server: QEMU's `-object
/// tls-creds-x509,dir=DIR,endpoint=server[,verify-peer=on|off][,priority=P]`.
public struct RFBTLSOptions: Equatable, Sendable {
    /// Holds ca-cert.pem, server-cert.pem, server-key.pem, and optionally
    /// ca-crl.pem and dh-params.pem (QEMU's file names).
    public var directory: String
    /// Clients must present a certificate signed by the CA (QEMU's default: on).
    public var verifyPeer: Bool
    /// A GnuTLS priority string; nil for "NORMAL".
    public var priority: String?

    public init(directory: String, verifyPeer: Bool = true, priority: String? = nil) {
        self.directory = directory
        self.verifyPeer = verifyPeer
        self.priority = priority
    }
}

/// The loaded credentials (GnuTLS through xenvfb_tls.h, dlopen'ed on first use).
/// Created before the server thread starts, then used only by that thread.
final class TLSCredentials: @unchecked Sendable {
    let pointer: OpaquePointer

    init(_ options: RFBTLSOptions) throws(RFBError) {
        var error = [CChar](repeating: 0, count: 1024)
        guard xenvfb_tls_load(&error, error.count) == 0 else { throw RFBError(Self.text(error)) }
        let creds = options.priority.withOptionalCString { priority in
            xenvfb_tls_creds_new(options.directory, priority, options.verifyPeer ? 1 : 0, &error, error.count)
        }
        guard let creds else { throw RFBError("TLS credentials in \(options.directory): \(Self.text(error))") }
        pointer = creds
    }

    deinit { xenvfb_tls_creds_free(pointer) }

    static func text(_ chars: [CChar]) -> String {
        chars.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}

/// One server-side TLS connection over a non-blocking socket: never waits;
/// `.again` means "call again when the socket is ready for `wantsWrite`".
final class TLSSession {
    enum Result: Equatable {
        case done(Int)
        case again
        case failed(String)
    }

    private var session: OpaquePointer?
    private(set) var handshakeDone = false

    /// `prefix`: bytes already read from the socket that belong to TLS.
    init(credentials: TLSCredentials, fd: Int32, prefix: [UInt8]) throws(ProtocolError) {
        var error = [CChar](repeating: 0, count: 512)
        let s = prefix.withUnsafeBytes { xenvfb_tls_session_new(credentials.pointer, fd, $0.baseAddress, $0.count, &error, error.count) }
        guard let s else { throw ProtocolError(TLSCredentials.text(error)) }
        session = s
    }

    deinit { finish() }

    /// Sends close_notify if the socket takes it now and frees GnuTLS's
    /// session; call before the socket closes. Later calls fail (`.failed`).
    func finish() {
        guard let s = session else { return }
        session = nil
        xenvfb_tls_session_free(s)
    }

    private static let finished = Result.failed("the TLS session is closed")

    /// Advances the handshake: `.done(0)` once complete.
    func handshake() -> Result {
        guard !handshakeDone else { return .done(0) }
        guard let pointer = session else { return Self.finished }
        var error = [CChar](repeating: 0, count: 512)
        switch xenvfb_tls_handshake(pointer, &error, error.count) {
        case 1:
            handshakeDone = true
            return .done(0)
        case XENVFB_TLS_AGAIN: return .again
        default: return .failed(TLSCredentials.text(error))
        }
    }

    /// Decrypted bytes into `buffer`; `.done(0)` at the end of the stream.
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Result {
        guard let pointer = session else { return Self.finished }
        var error = [CChar](repeating: 0, count: 512)
        let n = xenvfb_tls_recv(pointer, buffer.baseAddress, buffer.count, &error, error.count)
        if n >= 0 { return .done(n) }
        return n == XENVFB_TLS_AGAIN ? .again : .failed(TLSCredentials.text(error))
    }

    /// Sends (part of) `bytes`; after `.again`, call again with the same bytes.
    func send(_ bytes: UnsafeRawBufferPointer) -> Result {
        guard let pointer = session else { return Self.finished }
        var error = [CChar](repeating: 0, count: 512)
        let n = xenvfb_tls_send(pointer, bytes.baseAddress, bytes.count, &error, error.count)
        if n >= 0 { return .done(n) }
        return n == XENVFB_TLS_AGAIN ? .again : .failed(TLSCredentials.text(error))
    }

    /// Decrypted bytes held inside GnuTLS (epoll will not report them).
    var pending: Int { session.map { xenvfb_tls_pending($0) } ?? 0 }

    /// Whether the last `.again` waits for the socket to be writable.
    var wantsWrite: Bool { session.map { xenvfb_tls_wants_write($0) != 0 } ?? false }

    /// "TLS1.3 AES-256-GCM".
    var description: String {
        guard let pointer = session else { return "closed" }
        var text = [CChar](repeating: 0, count: 128)
        xenvfb_tls_description(pointer, &text, text.count)
        return TLSCredentials.text(text)
    }
}

extension Optional where Wrapped == String {
    func withOptionalCString<R>(_ body: (UnsafePointer<CChar>?) -> R) -> R {
        switch self {
        case .some(let s): return s.withCString { body($0) }
        case .none: return body(nil)
        }
    }
}
