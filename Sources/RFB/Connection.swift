#if canImport(Glibc)
import Glibc
#endif
import CRFB

/// One accepted socket: non-blocking reads into the session (through the
/// WebSocket decoder on a WebSocket listener), writev of its queued output.
///
/// With TLS credentials the transport is TLS (GnuTLS, `TLSSession`): on a
/// WebSocket listener from the first byte (wss://, as QEMU), on the VNC
/// listener once the session has negotiated VeNCrypt (its plaintext ack is
/// flushed first, then the handshake runs, then `RFBSession.tlsEstablished`).
/// Bytes read go through TLS before `process`; `flush` hands queued chunks to
/// TLS, in records of up to 16 KiB, instead of `writev`. Every step is
/// non-blocking; the handshake counts against the handshake deadline.
final class Connection {
    let fd: Int32
    let tag: UInt64
    let info: RFBClientInfo
    let out: OutputQueue
    let context: SessionContext
    /// Set once the RFB stream starts (at once, or after the WebSocket handshake).
    private(set) var session: RFBSession?
    /// Monotonic nanoseconds by which the handshake must be done.
    let deadline: UInt64
    private(set) var closed = false
    private(set) var closeReason = ""
    /// Close once the output is written (a goodbye message, a 400, a close frame).
    private var closeAfterFlush = false
    /// The epoll events currently registered.
    var registered: UInt32 = 0

    private enum WebSocketPhase {
        case handshake(WebSocketHandshake)
        case open(WebSocketDecoder)
    }
    private var webSocket: WebSocketPhase?

    private enum TLSPhase {
        /// VeNCrypt negotiated: the plaintext ack is being flushed.
        case starting([UInt8])
        case running(TLSSession)
    }
    private let credentials: TLSCredentials?
    private var tls: TLSPhase?
    /// Bytes handed to TLS that it has not yet taken (they must be offered again as they are).
    private var tlsStaged: [UInt8] = []
    static let tlsRecord = 16384

    init(fd: Int32, tag: UInt64, info: RFBClientInfo, context: SessionContext, deadline: UInt64,
         credentials: TLSCredentials? = nil) {
        self.fd = fd
        self.tag = tag
        self.info = info
        self.context = context
        self.deadline = deadline
        self.credentials = credentials
        out = OutputQueue(pool: context.buffers)
        if info.websocket {
            webSocket = .handshake(WebSocketHandshake())
            if credentials != nil { tls = .starting([]) }
        } else {
            session = RFBSession(context: context, out: out, client: tag, vencrypt: credentials != nil)
            if credentials == nil {
                // Plain TCP for the whole session: Raw may skip the queue (see `RFBSession.directSend`).
                session?.directSend = { [fd] iov, count in crfb_sendv(fd, iov, count) }
            }
        }
    }

    /// Whether the client finished the RFB handshake (past ServerInit).
    var isEstablished: Bool { session?.phase == .normal }

    var wantsInput: Bool {
        guard !closed, !closeAfterFlush else { return false }
        switch tls {
        case .starting?: return false
        case .running(let t)? where !t.handshakeDone: return true
        default: return session?.wantsInput ?? true
        }
    }

    /// Decrypted input is waiting inside TLS, where epoll cannot see it.
    var hasBufferedInput: Bool {
        guard case .running(let t)? = tls, t.handshakeDone else { return false }
        return wantsInput && t.pending > 0
    }

    /// The epoll events this connection needs now.
    /// (Hang-ups and errors are always reported; RDHUP only with IN, so a
    /// client that shut its side while its output is backed up cannot make
    /// epoll report it again and again.)
    var wantedEvents: UInt32 {
        var e: UInt32 = 0
        if case .running(let t)? = tls, !t.handshakeDone {
            return closed ? 0 : t.wantsWrite ? CRFB_EPOLLOUT : CRFB_EPOLLIN | CRFB_EPOLLRDHUP
        }
        if wantsInput { e |= CRFB_EPOLLIN | CRFB_EPOLLRDHUP }
        if !out.isEmpty || !tlsStaged.isEmpty { e |= CRFB_EPOLLOUT }
        return e
    }

    func close(_ reason: String) {
        guard !closed else { return }
        closed = true
        closeReason = reason
        if case .running(let t)? = tls { t.finish() } // close_notify if the socket takes it, before it closes
        tls = nil
        // The number may be reused by the next accept: nothing may write to it from here on.
        session?.directSend = nil
        Glibc.close(fd)
    }

    /// Reads what the socket has (while the session wants input).
    func readable(buffer: UnsafeMutableRawBufferPointer) {
        if case .running(let t)? = tls {
            readTLS(t, buffer: buffer)
            return
        }
        var rounds = 0
        while wantsInput && rounds < 16 {
            rounds += 1
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n == 0 {
                close("the client closed the connection")
                return
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { close("read: \(String(cString: strerror(errno)))") }
                return
            }
            feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            if tls != nil { return } // VeNCrypt negotiated: what follows is TLS
            if n < buffer.count { return }
        }
    }

    private func feed(_ bytes: UnsafeRawBufferPointer) {
        do {
            try process(bytes)
        } catch {
            closeAfterFlush = true
            closeReason = error.description
        }
        if tls == nil, let s = session, s.phase == .tlsHandshake {
            tls = .starting(s.takeTLSPrefix())
        }
    }

    private func readTLS(_ t: TLSSession, buffer: UnsafeMutableRawBufferPointer) {
        guard advanceHandshake(t) else { return }
        var rounds = 0
        while wantsInput && rounds < 16 {
            rounds += 1
            switch t.receive(into: buffer) {
            case .done(0):
                close("the client closed the connection")
                return
            case .done(let n):
                feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            case .again:
                return
            case .failed(let why):
                close(why)
                return
            }
        }
    }

    /// Starts TLS once the plaintext before it is written; runs the
    /// handshake. True when the handshake is complete.
    private func advanceHandshake(_ running: TLSSession? = nil) -> Bool {
        var t = running
        if t == nil {
            switch tls {
            case nil: return true
            case .running(let r)?: t = r
            case .starting(let prefix)?:
                guard out.isEmpty, let credentials else { return false }
                do throws(ProtocolError) {
                    let s = try TLSSession(credentials: credentials, fd: fd, prefix: prefix)
                    tls = .running(s)
                    t = s
                } catch {
                    close(error.description)
                    return false
                }
            }
        }
        guard let t else { return false }
        if t.handshakeDone { return true }
        switch t.handshake() {
        case .done:
            context.log.info("VNC client TLS established: \(t.description)", metadata: ["client": "\(info.host):\(info.service)"])
            session?.tlsEstablished()
            return true
        case .again:
            return false
        case .failed(let why):
            close(why)
            return false
        }
    }

    /// Bytes from the client, after the transport.
    func process(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) {
        switch webSocket {
        case nil:
            try session?.receive(bytes)
        case .handshake(var h)?:
            switch h.feed(bytes) {
            case .needMore:
                webSocket = .handshake(h)
            case .rejected(let response, let reason):
                out.enqueueUnframed(response)
                throw ProtocolError("WebSocket handshake refused: \(reason)")
            case .accepted(let response, let consumed):
                out.enqueueUnframed(response)
                out.frameHeader = { WebSocket.frameHeader(opcode: WebSocket.opBinary, length: $0) }
                webSocket = .open(WebSocketDecoder())
                session = RFBSession(context: context, out: out, client: tag)
                if consumed < bytes.count { try process(UnsafeRawBufferPointer(rebasing: bytes[consumed...])) }
            }
        case .open(var decoder)?:
            var closing = false
            defer { if !closing { webSocket = .open(decoder) } }
            try decoder.feed(bytes, data: { (payload: UnsafeRawBufferPointer) throws(ProtocolError) in
                try self.session?.receive(payload)
            }, control: { (c: WebSocketDecoder.Control) throws(ProtocolError) in
                switch c {
                case .ping(let payload):
                    self.out.enqueueUnframed(WebSocket.frameHeader(opcode: WebSocket.opPong, length: payload.count) + payload)
                case .pong:
                    break
                case .close(let payload):
                    closing = true
                    let status = Array(payload.prefix(2))
                    self.out.enqueueUnframed(WebSocket.frameHeader(opcode: WebSocket.opClose, length: status.count) + status)
                    throw ProtocolError("the client closed the WebSocket")
                }
            })
        }
    }

    /// Writes queued output until the socket is full; closes when done if asked.
    func flush() {
        guard !closed else { return }
        if tls != nil {
            if case .starting? = tls { flushPlain() }
            guard !closed, advanceHandshake() else { return }
            flushTLS()
        } else {
            flushPlain()
        }
        if closeAfterFlush && out.isEmpty && tlsStaged.isEmpty { close(closeReason) }
    }

    private func flushPlain() {
        while !out.isEmpty {
            let n = out.withPieces(max: 64) { pieces -> Int in
                var iov = pieces.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
                return iov.withUnsafeMutableBufferPointer { crfb_sendv(fd, $0.baseAddress, Int32($0.count)) }
            }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                close("write: \(String(cString: strerror(errno)))")
                return
            }
            out.consume(n)
        }
    }

    /// Up to one record of the queue goes to TLS; what it does not take now
    /// stays staged and is offered again as it is (GnuTLS requires that).
    private func flushTLS() {
        guard case .running(let t)? = tls else { return }
        while !out.isEmpty || !tlsStaged.isEmpty {
            if tlsStaged.isEmpty {
                out.withPieces(max: 64) { pieces in
                    for p in pieces {
                        let room = Self.tlsRecord - tlsStaged.count
                        if room <= 0 { break }
                        tlsStaged += UnsafeRawBufferPointer(rebasing: p.prefix(room))
                    }
                }
                out.consume(tlsStaged.count)
            }
            switch tlsStaged.withUnsafeBytes({ t.send($0) }) {
            case .done(let n):
                tlsStaged.removeFirst(min(n, tlsStaged.count))
            case .again:
                return
            case .failed(let why):
                close(why)
                return
            }
        }
    }

    /// Lets the session plan and encode what it can and writes it, for a
    /// few rounds while the socket takes everything. Returns true when an
    /// update is still being produced and nothing is queued to wait on: the
    /// loop must come back without waiting for the socket.
    func service() -> Bool {
        for _ in 0..<8 {
            guard !closed else { return false }
            if !closeAfterFlush, let s = session {
                s.pump()
                if s.phase == .closing {
                    closeAfterFlush = true
                    closeReason = s.closeReason ?? "closed"
                }
            }
            flush()
            guard !closed, out.isEmpty, tlsStaged.isEmpty, !closeAfterFlush else { return false }
            guard session?.isUpdating == true else {
                out.trim()
                return false
            }
        }
        return true
    }

    /// Ends a handshake that took too long.
    func timeOut() {
        close("no complete handshake within the time limit")
    }
}
