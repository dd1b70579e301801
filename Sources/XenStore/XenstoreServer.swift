#if canImport(Glibc)
import Glibc
#endif
import CShims
import EventLoop
import Logging
import Support
import Synchronization

/// An embedded xenstored: the xenstore wire protocol over Unix sockets, with
/// Xen's permission, watch and transaction semantics.
///
/// Connections on the main socket (`listen(path:)`) act as dom0. Connections
/// on a domain socket (`addDomainSocket(domid:path:)`) or from
/// `connect(asDomain:)` act as that domain: relative paths resolve to
/// /local/domain/<domid> and permissions apply. Debian's `xenstore-*` tools
/// and libxenstore reach a socket through `XENSTORED_PATH`.
///
/// As in Xen, only a domain that exists may own a node (SET_PERMS with an
/// unknown owner is ENOENT): a domain socket, `connect(asDomain:)`,
/// `addDomain` or `introduceDomain` make a domain exist. Guests are held to
/// xenstored's quotas (`Limits`).
///
/// Threading: every method may be called from any thread; work that touches
/// the server's state runs on its event loop. libxenstore calls block until
/// the reply comes, so a server sharing a process with libxenstore clients
/// must run on its own thread: create it with `init()` and call
/// `startOnThread()`; `stop()` ends it.
///
/// ```swift
/// let server = try XenstoreServer()
/// try server.listen(path: "/tmp/xs/socket")
/// try server.addDomainSocket(domid: 5, path: "/tmp/xs/dom5")
/// try server.startOnThread()
/// defer { server.stop() }
/// let xs = try XenStore(socketPath: "/tmp/xs/socket")   // dom0 client
/// ```
public final class XenstoreServer: @unchecked Sendable {
    /// Limits a client can run into. Past `maxQueuedBytes` or
    /// `maxQueuedEvents` of unread output a connection is closed.
    ///
    /// The quotas hold per domain, over all of its connections, with C
    /// xenstored 4.17's defaults (`xenstore-control quota`) and answers.
    /// Where xenstored compares with `>` (transactions, watches) a domain
    /// gets one more than the number, as it does there.
    public struct Limits: Sendable {
        public var maxQueuedBytes = 1 << 20
        public var maxQueuedEvents = 8192
        /// Stop reading a client's requests while this much output waits.
        public var readPauseBytes = 64 << 10
        /// Unread output of all of an unprivileged domain's connections
        /// together; past it the connection being written to is closed.
        public var maxQueuedBytesPerDomain = 2 << 20
        /// Watches per unprivileged domain (quota_nb_watch_per_domain): the
        /// watch past `maxWatchesPerDomain + 1` gets E2BIG.
        public var maxWatchesPerDomain = 128
        /// Open transactions per unprivileged domain (quota_max_transaction):
        /// the start past `maxTransactionsPerDomain + 1` gets ENOSPC.
        public var maxTransactionsPerDomain = 10
        /// Nodes one transaction of an unprivileged domain may touch, read or
        /// written (quota_trans_nodes): past it ENOSPC, and the commit fails
        /// with ENOMEM.
        public var maxTransactionNodes = 1024
        /// Bytes an unprivileged domain's nodes and open transactions may
        /// take, counted as xenstored's tdb records (quota "memory"): past it
        /// the change gets EIO (a transaction's commit then ENOMEM).
        public var maxMemoryPerDomain = 2_621_440
        /// Permission entries per node for unprivileged callers (quota_nb_perms_per_node).
        public var maxPermsPerNode = 5
        /// Nodes an unprivileged domain may own (quota_nb_entry_per_domain),
        /// checked when a node is made and again when a transaction commits
        /// (ENOSPC; a commit fails if the domain would own this many or more).
        public var maxNodesPerDomain = 1000
        /// Open connections per unprivileged domain; more are closed at once
        /// (a guest must not exhaust the process' file descriptors).
        public var maxConnectionsPerDomain = 64
        public init() {}
    }

    /// The loop the server runs on.
    public let loop: EventLoop
    public let limits: Limits

    private let log = Log.logger("xenstored")
    private let store = XSStore()
    /// Open transactions per unprivileged domain, over all its connections.
    private var domainTransactions: [UInt32: Int] = [:]
    private var connections: [Int: Connection] = [:]
    private var nextConnectionID = 1
    /// Where connections are read into (one at a time, on the loop).
    private var readBuffer = [UInt8](repeating: 0, count: 16384)
    /// Unread output per unprivileged domain, over all its connections.
    private var domainQueued: [UInt32: Int] = [:]
    /// Domains at their connection limit (logged once until one closes).
    private var refusing: Set<UInt32> = []
    private var listeners: [Int32: (domid: UInt32, listener: UnixListener)] = [:]
    private var introduced: Set<UInt32> = [0]
    /// Domains that exist (in Xen: known to the hypervisor). Only these may
    /// own nodes. A domain socket, an in-process connection, INTRODUCE or
    /// `addDomain` make one exist; RELEASE ends it.
    private var existing: Set<UInt32> = [0]
    private var targets: [UInt32: UInt32] = [:]
    private var specialPerms: [String: [XSPermission]] = [
        "@introduceDomain": [XSPermission(domid: 0, .none)],
        "@releaseDomain": [XSPermission(domid: 0, .none)],
    ]

    // Thread mode.
    private var ownThread = false
    /// pthread_self() of the server's thread once it runs (0 before).
    private let loopThread = Atomic<UInt>(0)
    private let stopRequested = Atomic<Bool>(false)
    private var doneFD: Int32 = -1
    private var stopped = false

    /// A server on its own new event loop (for `startOnThread()`).
    public convenience init(limits: Limits = Limits()) throws(SystemError) {
        try self.init(loop: EventLoop(), limits: limits)
    }

    /// A server on an existing loop; call its methods from the loop's thread
    /// (or before the loop runs) and run the loop yourself.
    public init(loop: EventLoop, limits: Limits = Limits()) {
        self.loop = loop
        self.limits = limits
    }

    deinit {
        if doneFD >= 0 { close(doneFD) }
    }

    // MARK: Public API

    /// Listens on a Unix socket whose clients act as dom0 (privileged).
    /// Replaces a stale file at `path`; the socket exists when this returns.
    public func listen(path: String) throws(SocketError) {
        try addDomainSocket(domid: 0, path: path)
    }

    /// Listens on a Unix socket whose clients act as domain `domid`: point a
    /// guest's libxenstore (`XENSTORED_PATH`) at it to be that guest.
    public func addDomainSocket(domid: UInt32, path: String) throws(SocketError) {
        // Owner only, whatever the umask: whoever reaches the socket acts as
        // that domain (dom0's socket is privileged).
        let listener = try UnixListener(path: path, mode: 0o600, backlog: 64)
        let fd = listener.fd
        onLoop { [self] in
            existing.insert(domid)
            listeners[fd] = (domid, listener)
            do {
                try loop.watch(fd: fd) { [unowned self] _ in self.acceptConnections(fd) }
            } catch {
                log.error("cannot watch listening socket \(path): \(error)")
            }
        }
        log.info("listening on \(path)", metadata: ["domid": "\(domid)"])
    }

    /// A connected socket whose other end is served as domain `domid`.
    /// The caller owns (and closes) the returned fd; it is blocking.
    public func connect(asDomain domid: UInt32) throws(SystemError) -> Int32 {
        var fds: [Int32] = [0, 0]
        let rc = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        guard rc == 0 else { throw SystemError("socketpair") }
        let serverFD = fds[0]
        _ = cshims_set_nonblocking(serverFD)
        onLoop { [self] in
            existing.insert(domid)
            addConnection(fd: serverFD, domid: domid)
        }
        return fds[1]
    }

    /// Makes a domain exist without introducing it (as a domain libxl has
    /// built but not yet introduced): it may then own nodes.
    public func addDomain(_ domid: UInt32) {
        onLoop { [self] in existing.insert(domid) }
    }

    /// Marks a domain introduced (as XS_INTRODUCE does) and fires
    /// @introduceDomain.
    public func introduceDomain(_ domid: UInt32) {
        onLoop { [self] in introduce(domid) }
    }

    /// Releases a domain (as XS_RELEASE does): the nodes it owned go, with
    /// their subtrees, and @releaseDomain fires.
    public func releaseDomain(_ domid: UInt32) {
        onLoop { [self] in release(domid) }
    }

    /// Runs the server's loop on a new thread until `stop()`.
    public func startOnThread() throws(SystemError) {
        precondition(!ownThread, "XenstoreServer.startOnThread called twice")
        doneFD = eventfd(0, Int32(EFD_CLOEXEC))
        guard doneFD >= 0 else { throw SystemError("eventfd") }
        ownThread = true
        let done = doneFD
        try spawnThread { [self] in
            _ = cshims_set_thread_name("xenstored")
            loopThread.store(UInt(bitPattern: Int(bitPattern: pthread_self())), ordering: .releasing)
            loop.run()
            var one: UInt64 = 1
            _ = write(done, &one, 8)
        }
    }

    /// Closes every connection and listening socket and removes the socket
    /// files. With `startOnThread()`, also ends the thread and waits for it
    /// (call it from another thread then). Later calls do nothing.
    public func stop() {
        guard !stopRequested.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if ownThread {
            loop.post { [self] in shutdown(); loop.stop() }
            var value: UInt64 = 0
            while read(doneFD, &value, 8) < 0 && errno == EINTR {}
        } else {
            shutdown()
        }
    }

    /// Removes the socket files and closes everything (on the loop's thread).
    private func shutdown() {
        guard !stopped else { return }
        stopped = true
        for (fd, l) in listeners {
            loop.unwatch(fd: fd)
            l.listener.close()
        }
        listeners.removeAll()
        for c in Array(connections.values) { closeConnection(c) }
    }

    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if ownThread, loopThread.load(ordering: .acquiring) == UInt(bitPattern: Int(bitPattern: pthread_self())) {
            body()
        } else if ownThread {
            loop.post(body)
        } else {
            body()
        }
    }

    // MARK: Sockets

    private func acceptConnections(_ listenFD: Int32) {
        guard let l = listeners[listenFD] else { return }
        while true {
            guard let fd = l.listener.accept() else { return }
            if l.domid != 0 && connections.values.lazy.filter({ $0.domid == l.domid }).count >= limits.maxConnectionsPerDomain {
                close(fd)
                if refusing.insert(l.domid).inserted {
                    log.warning("refusing connections: \(limits.maxConnectionsPerDomain) already open", metadata: ["domid": "\(l.domid)"])
                }
                continue
            }
            refusing.remove(l.domid)
            addConnection(fd: fd, domid: l.domid)
        }
    }

    private func addConnection(fd: Int32, domid: UInt32) {
        guard !stopped else { close(fd); return }
        let conn = Connection(id: nextConnectionID, fd: fd, domid: domid)
        nextConnectionID += 1
        connections[conn.id] = conn
        do {
            try loop.watch(fd: fd, events: .readable) { [unowned self] ev in self.handle(conn, ev) }
        } catch {
            log.error("cannot watch connection: \(error)")
            connections.removeValue(forKey: conn.id)
            close(fd)
        }
        log.debug("connection \(conn.id) opened", metadata: ["domid": "\(domid)"])
    }

    private func closeConnection(_ conn: Connection) {
        guard !conn.closed else { return }
        conn.closed = true
        loop.unwatch(fd: conn.fd)
        close(conn.fd)
        connections.removeValue(forKey: conn.id)
        conn.watches.removeAll()
        endAllTransactions(conn)
        conn.out.removeAll()
        if conn.domid != 0 { domainQueued[conn.domid, default: 0] -= conn.outBytes }
        conn.outBytes = 0
    }

    /// Closes a misbehaving connection with one log line; others carry on.
    private func kill(_ conn: Connection, _ reason: String) {
        guard !conn.closed else { return }
        log.warning("closing connection \(conn.id): \(reason)", metadata: ["domid": "\(conn.domid)"])
        closeConnection(conn)
    }

    // MARK: I/O

    private func handle(_ conn: Connection, _ events: EventLoop.Events) {
        if events.contains(.writable) {
            flush(conn)
            // Requests read while output was backed up wait in `input`.
            if !conn.closed && conn.outBytes < limits.readPauseBytes && conn.input.count >= XSLimits.headerSize {
                processInput(conn)
            }
        }
        if conn.closed { return }
        if !events.intersection([.readable, .hangup]).isEmpty { readInput(conn) }
    }

    private func readInput(_ conn: Connection) {
        var eof = false
        // Bounded per wake-up so one busy client cannot starve the others.
        for _ in 0..<8 {
            let n = readBuffer.withUnsafeMutableBytes { read(conn.fd, $0.baseAddress, $0.count) }
            if n > 0 {
                conn.input.append(contentsOf: readBuffer[0..<n])
                if n < readBuffer.count { break }
            } else if n == 0 {
                eof = true
                break
            } else {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { eof = true }
                break
            }
        }
        processInput(conn)
        if eof && !conn.closed {
            log.debug("connection \(conn.id) closed by peer", metadata: ["domid": "\(conn.domid)"])
            closeConnection(conn)
        }
    }

    private func processInput(_ conn: Connection) {
        var pos = 0
        defer {
            if !conn.closed && pos > 0 { conn.input.removeFirst(pos) }
        }
        while !conn.closed && conn.input.count - pos >= XSLimits.headerSize {
            if conn.outBytes >= limits.readPauseBytes { break }
            let header = conn.input.withUnsafeBytes { raw -> (UInt32, UInt32, UInt32, UInt32)? in
                var r = ByteReader(UnsafeRawBufferPointer(rebasing: raw[pos..<pos + XSLimits.headerSize]))
                guard let t: UInt32 = r.read(), let q: UInt32 = r.read(), let x: UInt32 = r.read(), let l: UInt32 = r.read() else { return nil }
                return (t, q, x, l)
            }
            guard let (type, reqID, txID, len) = header else { break }
            guard len <= UInt32(XSLimits.payloadMax) else {
                kill(conn, "message payload of \(len) bytes exceeds \(XSLimits.payloadMax)")
                return
            }
            let total = XSLimits.headerSize + Int(len)
            guard conn.input.count - pos >= total else { break }
            let payload = Array(conn.input[(pos + XSLimits.headerSize)..<(pos + total)])
            pos += total
            process(conn, XSMessage(type: type, reqID: reqID, txID: txID, payload: payload))
        }
        updateInterest(conn)
    }

    private func updateInterest(_ conn: Connection) {
        guard !conn.closed else { return }
        var ev: EventLoop.Events = []
        if conn.outBytes < limits.readPauseBytes { ev.insert(.readable) }
        if conn.outBytes > 0 { ev.insert(.writable) }
        loop.setEvents(fd: conn.fd, ev)
    }

    private func enqueue(_ conn: Connection, _ msg: XSMessage, isEvent: Bool) {
        guard !conn.closed else { return }
        let bytes = msg.encoded()
        conn.out.append(OutMessage(bytes: bytes, isEvent: isEvent))
        conn.outBytes += bytes.count
        if conn.domid != 0 { domainQueued[conn.domid, default: 0] += bytes.count }
        if isEvent { conn.outEvents += 1 }
        flush(conn)
        if conn.closed { return }
        if conn.outBytes > limits.maxQueuedBytes || conn.outEvents > limits.maxQueuedEvents {
            kill(conn, "client does not read: \(conn.outBytes) bytes, \(conn.outEvents) watch events queued")
        } else if conn.domid != 0, let total = domainQueued[conn.domid], total > limits.maxQueuedBytesPerDomain {
            kill(conn, "the domain's connections do not read: \(total) bytes queued")
        }
    }

    private func flush(_ conn: Connection) {
        while !conn.closed, conn.outHead < conn.out.count {
            let m = conn.out[conn.outHead]
            let n = m.bytes.withUnsafeBytes { raw in
                send(conn.fd, raw.baseAddress! + conn.outWritten, raw.count - conn.outWritten, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                log.debug("connection \(conn.id): write failed: \(SystemError("send"))")
                closeConnection(conn)
                return
            }
            conn.outWritten += n
            conn.outBytes -= n
            if conn.domid != 0 { domainQueued[conn.domid, default: 0] -= n }
            if conn.outWritten == m.bytes.count {
                if m.isEvent { conn.outEvents -= 1 }
                conn.out[conn.outHead] = OutMessage(bytes: [], isEvent: false)
                conn.outHead += 1
                conn.outWritten = 0
            }
        }
        if conn.outHead == conn.out.count {
            conn.out.removeAll(keepingCapacity: conn.out.count < 64)
            conn.outHead = 0
        } else if conn.outHead > 256 {
            conn.out.removeFirst(conn.outHead)
            conn.outHead = 0
        }
        updateInterest(conn)
    }

    private func reply(_ conn: Connection, _ req: XSMessage, _ type: XSMessageType, _ payload: [UInt8]) {
        if payload.count > XSLimits.payloadMax {
            replyError(conn, req, .E2BIG)
            return
        }
        enqueue(conn, XSMessage(type: type.rawValue, reqID: req.reqID, txID: req.txID, payload: payload), isEvent: false)
    }

    private func replyOK(_ conn: Connection, _ req: XSMessage, _ type: XSMessageType) {
        reply(conn, req, type, Array("OK".utf8) + [0])
    }

    private func replyError(_ conn: Connection, _ req: XSMessage, _ err: XSError) {
        enqueue(conn, XSMessage(type: XSMessageType.error.rawValue, reqID: req.reqID, txID: req.txID,
                                payload: Array(err.name.utf8) + [0]), isEvent: false)
    }

    // MARK: Requests

    private func caller(_ conn: Connection) -> XSCaller {
        XSCaller(domid: conn.domid, target: targets[conn.domid])
    }

    /// The single argument of a request: exactly one NUL, at the end (onearg).
    private static func oneArg(_ payload: [UInt8]) -> String? {
        guard let nul = payload.xsIndexOfNUL(), nul == payload.count - 1 else { return nil }
        return String(decoding: payload[0..<nul], as: UTF8.self)
    }

    /// atoi as xenstored uses it on domain ids: leading digits, else 0.
    private static func atoi<S: Sequence>(_ bytes: S) -> UInt32 where S.Element == UInt8 {
        var v: UInt32 = 0
        for b in bytes {
            guard b >= 0x30 && b <= 0x39 else { break }
            v = v &* 10 &+ UInt32(b - 0x30)
        }
        return v
    }

    private static let privilegedOnly: Set<XSMessageType> = [.control, .introduce, .release, .isDomainIntroduced, .resume, .setTarget]

    private func process(_ conn: Connection, _ msg: XSMessage) {
        guard let type = XSMessageType(rawValue: msg.type), type != .watchEvent, type != .error else {
            log.debug("connection \(conn.id): unknown operation \(msg.type)")
            replyError(conn, msg, .ENOSYS)
            return
        }
        if Self.privilegedOnly.contains(type) && conn.domid != 0 {
            replyError(conn, msg, .EACCES)
            return
        }
        var txn: Transaction?
        if type != .watch && type != .unwatch && msg.txID != 0 {
            guard let t = conn.transactions[msg.txID] else {
                replyError(conn, msg, .ENOENT)
                return
            }
            txn = t
        }
        do {
            try dispatch(conn, msg, type, txn)
        } catch {
            replyError(conn, msg, error)
        }
    }

    /// Runs `body` against the transaction's view or the live store;
    /// watch events fire now, or at commit for a transaction.
    private func withDatabase<T>(_ txn: Transaction?, _ body: (inout XSDatabase, inout XSEventQueue) throws(XSError) -> T) throws(XSError) -> T {
        if let txn {
            return try body(&txn.db, &txn.events)
        }
        var db = XSDatabase(store: store)
        var events = XSEventQueue()
        let result: T
        do {
            result = try body(&db, &events)
        } catch {
            fire(events.events)
            throw error
        }
        fire(events.events)
        return result
    }

    private func path(_ s: String, _ conn: Connection) -> String {
        XSPath.canonicalize(s, domid: conn.domid)
    }

    private func dispatch(_ conn: Connection, _ msg: XSMessage, _ type: XSMessageType, _ txn: Transaction?) throws(XSError) {
        var ops = XSOperations(caller: caller(conn))
        ops.maxEntriesPerDomain = limits.maxNodesPerDomain
        ops.maxMemoryPerDomain = limits.maxMemoryPerDomain
        ops.existingDomains = existing
        let p = msg.payload
        switch type {
        case .read:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            let value = try withDatabase(txn) { (db, _) throws(XSError) in try ops.read(&db, path(a, conn)) }
            reply(conn, msg, .read, value)

        case .write:
            guard let nul = p.xsIndexOfNUL() else { throw .EINVAL }
            let name = path(String(decoding: p[0..<nul], as: UTF8.self), conn)
            let value = Array(p[(nul + 1)...])
            try withDatabase(txn) { (db, ev) throws(XSError) in try ops.write(&db, name, value, &ev) }
            replyOK(conn, msg, .write)

        case .mkdir:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            try withDatabase(txn) { (db, ev) throws(XSError) in try ops.mkdir(&db, path(a, conn), &ev) }
            replyOK(conn, msg, .mkdir)

        case .rm:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            try withDatabase(txn) { (db, ev) throws(XSError) in try ops.rm(&db, path(a, conn), &ev) }
            replyOK(conn, msg, .rm)

        case .directory:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            let node = try withDatabase(txn) { (db, _) throws(XSError) in try ops.directory(&db, path(a, conn)) }
            var out: [UInt8] = []
            for c in node.children { out += Array(c.utf8); out.append(0) }
            reply(conn, msg, .directory, out)

        case .directoryPart:
            let strings = p.xsStrings()
            guard strings.count == 2 else { throw .EINVAL }
            let name = path(String(decoding: strings[0], as: UTF8.self), conn)
            let node = try withDatabase(txn) { (db, _) throws(XSError) in try ops.directory(&db, name) }
            reply(conn, msg, .directoryPart, Self.directoryPart(node, offset: Int(Self.atoi(strings[1]))))

        case .getPerms:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            // Special nodes have permissions (SET_PERMS) but, as in xenstored
            // 4.17, GET_PERMS does not show them: "@..." is not a valid path.
            let perms = try withDatabase(txn) { (db, _) throws(XSError) in try ops.getPerms(&db, path(a, conn)) }
            var out: [UInt8] = []
            for perm in perms { out += Array(perm.description.utf8); out.append(0) }
            reply(conn, msg, .getPerms, out)

        case .setPerms:
            let strings = p.xsStrings()
            guard strings.count >= 2 else { throw .EINVAL }
            if conn.domid != 0 && strings.count - 1 > limits.maxPermsPerNode { throw .ENOSPC }
            var perms: [XSPermission] = []
            for s in strings.dropFirst() {
                guard let perm = XSPermission(wire: String(decoding: s, as: UTF8.self)) else { throw .EINVAL }
                perms.append(perm)
            }
            let a = String(decoding: strings[0], as: UTF8.self)
            if !existing.contains(perms[0].domid) { throw .ENOENT }
            if a.hasPrefix("@") {
                guard let sp = specialPerms[a] else { throw .EINVAL }
                guard ops.caller.access(sp).isSuperset(of: [.write, .owner]) else { throw .EACCES }
                specialPerms[a] = perms
            } else {
                try withDatabase(txn) { (db, ev) throws(XSError) in try ops.setPerms(&db, path(a, conn), perms, &ev) }
            }
            replyOK(conn, msg, .setPerms)

        case .watch:
            let strings = p.xsStrings()
            guard strings.count == 2 else { throw .EINVAL }
            let raw = String(decoding: strings[0], as: UTF8.self)
            let token = Array(strings[1])
            let relative = !raw.hasPrefix("/") && !raw.hasPrefix("@")
            let node = path(raw, conn)
            if node.hasPrefix("@") {
                if node.utf8.count > XSLimits.relPathMax { throw .EINVAL }
            } else if !XSPath.isValid(node, privileged: conn.domid == 0) {
                throw .EINVAL
            }
            if conn.watches.contains(where: { $0.node == node && $0.token == token }) { throw .EEXIST }
            if conn.domid != 0 {
                let watches = connections.values.reduce(0) { $0 + ($1.domid == conn.domid ? $1.watches.count : 0) }
                if watches > limits.maxWatchesPerDomain { throw .E2BIG }
            }
            let w = Watch(node: node, token: token, relativePrefix: relative ? XSPath.domainPath(conn.domid) : nil)
            conn.watches.append(w)
            replyOK(conn, msg, .watch)
            // Fires once up front.
            sendEvent(conn, w, node)

        case .unwatch:
            let strings = p.xsStrings()
            guard strings.count == 2 else { throw .EINVAL }
            let node = path(String(decoding: strings[0], as: UTF8.self), conn)
            let token = Array(strings[1])
            guard let i = conn.watches.firstIndex(where: { $0.node == node && $0.token == token }) else { throw .ENOENT }
            conn.watches.remove(at: i)
            replyOK(conn, msg, .unwatch)

        case .resetWatches:
            conn.watches.removeAll()
            endAllTransactions(conn)
            replyOK(conn, msg, .resetWatches)

        case .transactionStart:
            if txn != nil { throw .EBUSY }
            let guest = conn.domid != 0
            // do_transaction_start: `transaction_started > quota` (so quota + 1 may be open).
            if guest && domainTransactions[conn.domid, default: 0] > limits.maxTransactionsPerDomain { throw .ENOSPC }
            var id = conn.nextTransactionID
            while id == 0 || conn.transactions[id] != nil { id &+= 1 }
            conn.nextTransactionID = id &+ 1
            let state = XSTransactionState(domid: guest ? conn.domid : nil, maxNodes: limits.maxTransactionNodes,
                                           maxBytes: limits.maxMemoryPerDomain)
            conn.transactions[id] = Transaction(db: XSDatabase(store: store, transaction: state))
            if guest { domainTransactions[conn.domid, default: 0] += 1 }
            reply(conn, msg, .transactionStart, Array("\(id)".utf8) + [0])

        case .transactionEnd:
            guard let txn else { throw .ENOENT }
            guard let a = Self.oneArg(p), a == "T" || a == "F" else { throw .EINVAL }
            endTransaction(conn, msg.txID)
            if a == "T" { try commit(txn) }
            replyOK(conn, msg, .transactionEnd)

        case .getDomainPath:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            reply(conn, msg, .getDomainPath, Array(XSPath.domainPath(Self.atoi(a.utf8)).utf8) + [0])

        case .introduce:
            let strings = p.xsStrings()
            guard strings.count >= 3 else { throw .EINVAL }
            introduce(Self.atoi(strings[0]))
            replyOK(conn, msg, .introduce)

        case .release:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            let domid = Self.atoi(a.utf8)
            if domid == 0 { throw .EINVAL }
            guard introduced.contains(domid) else { throw .ENOENT }
            release(domid)
            replyOK(conn, msg, .release)

        case .resume:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            guard introduced.contains(Self.atoi(a.utf8)) else { throw .ENOENT }
            replyOK(conn, msg, .resume)

        case .isDomainIntroduced:
            guard let a = Self.oneArg(p) else { throw .EINVAL }
            reply(conn, msg, .isDomainIntroduced, Array((introduced.contains(Self.atoi(a.utf8)) ? "T" : "F").utf8) + [0])

        case .setTarget:
            let strings = p.xsStrings()
            guard strings.count >= 2 else { throw .EINVAL }
            let domid = Self.atoi(strings[0]), target = Self.atoi(strings[1])
            targets[domid] = target
            replyOK(conn, msg, .setTarget)

        case .control:
            let strings = p.xsStrings()
            switch strings.first.map({ String(decoding: $0, as: UTF8.self) }) {
            case "print":
                let text = strings.dropFirst().map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
                log.info("control: \(text)")
                replyOK(conn, msg, .control)
            case "check":
                replyOK(conn, msg, .control)
            case "help", nil:
                reply(conn, msg, .control, Array("Available commands:\ncheck\nhelp\nprint <string>\n".utf8) + [0])
            default:
                throw .EINVAL
            }

        case .watchEvent, .error:
            throw .ENOSYS
        }
    }

    /// send_directory_part: "<generation>\0" then as many names as fit from
    /// byte `offset` of the child list; an empty name ends the list.
    static func directoryPart(_ node: XSNode, offset: Int) -> [UInt8] {
        var children: [UInt8] = []
        for c in node.children { children += Array(c.utf8); children.append(0) }
        var out = Array("\(node.generation)".utf8) + [0]
        if offset >= children.count {
            out.append(0)
            return out
        }
        let maxLen = XSLimits.payloadMax - out.count - 1
        var len = 0
        var i = offset
        while i < children.count {
            let end = children[i...].firstIndex(of: 0)!
            let nameLen = end - i
            if len + nameLen >= maxLen { break }
            len += nameLen + 1
            i = end + 1
        }
        out += children[offset..<(offset + len)]
        if offset + len == children.count { out.append(0) }
        return out
    }

    // MARK: Transactions

    /// Forgets a transaction and gives back what it held.
    private func endTransaction(_ conn: Connection, _ id: UInt32) {
        guard let txn = conn.transactions.removeValue(forKey: id) else { return }
        txn.db.transaction?.release(store)
        if conn.domid != 0 { domainTransactions[conn.domid, default: 1] -= 1 }
    }

    private func endAllTransactions(_ conn: Connection) {
        for id in Array(conn.transactions.keys) { endTransaction(conn, id) }
    }

    /// do_transaction_end's checks, in xenstored's order: a transaction a
    /// quota stopped fails (ENOMEM); one that would take a domain to its
    /// node quota fails (ENOSPC, transaction_fix_domains); one that touched
    /// a node someone changed since fails (EAGAIN). Else its changes apply.
    private func commit(_ txn: Transaction) throws(XSError) {
        guard let t = txn.db.transaction else { return }
        if t.failed { throw .ENOMEM }
        for (domid, delta) in t.ownedDelta where domid != 0 && store.owned[domid, default: 0] + delta >= limits.maxNodesPerDomain {
            throw .ENOSPC
        }
        for path in t.order where store.generation(of: path) != t.entries[path]?.generation {
            throw .EAGAIN
        }
        for path in t.order {
            if let e = t.entries[path], e.modified { store.install(path, e.node) }
        }
        fire(txn.events.events)
    }

    /// What is inconsistent in the server's bookkeeping (empty: nothing):
    /// the tree (every child exists, every node is its parent's child), the
    /// per-owner node counts and bytes, and the per-domain transaction counts
    /// and bytes against the open transactions. For tests and the fuzzer;
    /// call it on the loop's thread.
    func consistencyProblems() -> [String] {
        var problems: [String] = []
        var owned: [UInt32: Int] = [:], bytes: [UInt32: Int] = [:]
        for (path, node) in store.nodes {
            if let owner = node.perms.first?.domid {
                owned[owner, default: 0] += 1
                bytes[owner, default: 0] += xsNodeBytes(path, node)
            }
            for child in node.children where store.nodes[XSPath.join(path, child)] == nil {
                problems.append("\(path) lists a missing child \(child)")
            }
            if path != "/", store.nodes[XSPath.parent(path)]?.children.contains(XSPath.basename(path)) != true {
                problems.append("\(path) is not listed by its parent")
            }
        }
        for (domid, n) in store.owned where n != owned[domid, default: 0] {
            problems.append("domain \(domid) is counted as owning \(n) nodes, owns \(owned[domid, default: 0])")
        }
        for (domid, n) in store.ownedBytes where n != bytes[domid, default: 0] {
            problems.append("domain \(domid) is counted as owning \(n) bytes, owns \(bytes[domid, default: 0])")
        }
        var open: [UInt32: Int] = [:], held: [UInt32: Int] = [:]
        for conn in connections.values where conn.domid != 0 {
            open[conn.domid, default: 0] += conn.transactions.count
            for t in conn.transactions.values { held[conn.domid, default: 0] += t.db.transaction?.bytes ?? 0 }
        }
        for (domid, n) in domainTransactions where n != open[domid, default: 0] {
            problems.append("domain \(domid) is counted as having \(n) transactions open, has \(open[domid, default: 0])")
        }
        for (domid, n) in store.transactionBytes where n != held[domid, default: 0] {
            problems.append("domain \(domid)'s transactions are counted as \(n) bytes, hold \(held[domid, default: 0])")
        }
        return problems
    }

    // MARK: Domains

    private func introduce(_ domid: UInt32) {
        guard !introduced.contains(domid) else { return }
        introduced.insert(domid)
        existing.insert(domid)
        log.info("domain introduced", metadata: ["domid": "\(domid)"])
        fire([XSPendingEvent(path: "@introduceDomain", exact: false)])
    }

    private func release(_ domid: UInt32) {
        guard domid != 0, introduced.remove(domid) != nil else { return }
        targets.removeValue(forKey: domid)
        existing.remove(domid)
        // domain_tree_remove: the nodes a dead domain owned go, with their subtrees.
        var events = XSEventQueue()
        var db = XSDatabase(store: store)
        XSOperations(caller: XSCaller(domid: 0)).removeOwned(by: domid, &db, &events)
        fire(events.events)
        log.info("domain released", metadata: ["domid": "\(domid)"])
        fire([XSPendingEvent(path: "@releaseDomain", exact: false)])
    }

    // MARK: Watches

    private func fire(_ events: [XSPendingEvent]) {
        guard !events.isEmpty else { return }
        let conns = connections.values.sorted { $0.id < $1.id }
        for e in events {
            for c in conns where !c.closed && !c.watches.isEmpty && permitted(c, e) {
                for w in c.watches where e.exact ? e.path == w.node : XSPath.isChild(e.path, of: w.node) {
                    sendEvent(c, w, e.path)
                }
            }
        }
    }

    /// watch_permitted / check_perms_special: the watcher may read the node,
    /// its parent, or (for a permission change) the node as it was.
    private func permitted(_ conn: Connection, _ e: XSPendingEvent) -> Bool {
        let who = caller(conn)
        if e.path.hasPrefix("@") {
            return who.access(specialPerms[e.path] ?? [XSPermission(domid: 0, .none)]).contains(.read)
        }
        for perms in e.allPerms where who.access(perms).contains(.read) { return true }
        return false
    }

    private func sendEvent(_ conn: Connection, _ w: Watch, _ path: String) {
        var shown = Substring(path)
        if let prefix = w.relativePrefix, path.hasPrefix(prefix) {
            shown = path.dropFirst(prefix.count)
            if shown.hasPrefix("/") { shown = shown.dropFirst() }
        }
        let payload = Array(shown.utf8) + [0] + w.token + [0]
        // send_event: over-long events are not sent.
        guard payload.count <= XSLimits.payloadMax else { return }
        enqueue(conn, XSMessage(type: XSMessageType.watchEvent.rawValue, reqID: 0, txID: 0, payload: payload), isEvent: true)
    }
}

private struct OutMessage {
    var bytes: [UInt8]
    var isEvent: Bool
}

private struct Watch {
    var node: String
    var token: [UInt8]
    /// Set for a watch given as a relative path: events show relative paths.
    var relativePrefix: String?
}

private final class Transaction {
    var db: XSDatabase
    var events = XSEventQueue(mergingByPath: true)
    init(db: XSDatabase) { self.db = db }
}

private final class Connection {
    let id: Int
    let fd: Int32
    let domid: UInt32
    var closed = false
    var input: [UInt8] = []
    var out: [OutMessage] = []
    var outHead = 0
    var outWritten = 0
    var outBytes = 0
    var outEvents = 0
    var watches: [Watch] = []
    var transactions: [UInt32: Transaction] = [:]
    var nextTransactionID: UInt32 = 1

    init(id: Int, fd: Int32, domid: UInt32) {
        self.id = id
        self.fd = fd
        self.domid = domid
    }
}
