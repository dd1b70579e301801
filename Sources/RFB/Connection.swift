#if canImport(Glibc)
import Glibc
#endif
import CRFB

/// One accepted socket: non-blocking reads into the session (through the
/// WebSocket decoder on a WebSocket listener), writev of its queued output.
///
/// The transport is where a later TLS layer (VeNCrypt, wss) goes: bytes read
/// from the socket would pass through TLS before `process`, and `flush` would
/// hand the queued chunks to TLS instead of `writev`. Nothing above this type
/// needs to change for it.
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

    init(fd: Int32, tag: UInt64, info: RFBClientInfo, context: SessionContext, deadline: UInt64) {
        self.fd = fd
        self.tag = tag
        self.info = info
        self.context = context
        self.deadline = deadline
        out = OutputQueue(pool: context.buffers)
        if info.websocket {
            webSocket = .handshake(WebSocketHandshake())
        } else {
            session = RFBSession(context: context, out: out, client: tag)
        }
    }

    /// Whether the client finished the RFB handshake (past ServerInit).
    var isEstablished: Bool { session?.phase == .normal }

    var wantsInput: Bool {
        guard !closed, !closeAfterFlush else { return false }
        return session?.wantsInput ?? true
    }

    /// The epoll events this connection needs now.
    /// (Hang-ups and errors are always reported; RDHUP only with IN, so a
    /// client that shut its side while its output is backed up cannot make
    /// epoll report it again and again.)
    var wantedEvents: UInt32 {
        var e: UInt32 = 0
        if wantsInput { e |= CRFB_EPOLLIN | CRFB_EPOLLRDHUP }
        if !out.isEmpty { e |= CRFB_EPOLLOUT }
        return e
    }

    func close(_ reason: String) {
        guard !closed else { return }
        closed = true
        closeReason = reason
        Glibc.close(fd)
    }

    /// Reads what the socket has (while the session wants input).
    func readable(buffer: UnsafeMutableRawBufferPointer) {
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
            do {
                try process(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            } catch {
                closeAfterFlush = true
                closeReason = error.description
            }
            if n < buffer.count { return }
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
        if closeAfterFlush { close(closeReason) }
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
            guard !closed, out.isEmpty, !closeAfterFlush else { return false }
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
