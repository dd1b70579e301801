#if canImport(Glibc)
import Glibc
#endif
import CRFB

/// One accepted socket: non-blocking reads into the session, writev of its
/// queued output.
final class Connection {
    let fd: Int32
    let tag: UInt64
    let info: RFBClientInfo
    let out = OutputQueue()
    let context: SessionContext
    private(set) var session: RFBSession?
    /// Monotonic nanoseconds by which the handshake must be done.
    let deadline: UInt64
    private(set) var closed = false
    private(set) var closeReason = ""
    /// Close once the output is written (a goodbye message, a 400, a close frame).
    private var closeAfterFlush = false
    /// The epoll events currently registered.
    var registered: UInt32 = 0

    init(fd: Int32, tag: UInt64, info: RFBClientInfo, context: SessionContext, deadline: UInt64) {
        self.fd = fd
        self.tag = tag
        self.info = info
        self.context = context
        self.deadline = deadline
        session = RFBSession(context: context, out: out)
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

    /// Bytes from the client.
    func process(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) {
        try session?.receive(bytes)
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
