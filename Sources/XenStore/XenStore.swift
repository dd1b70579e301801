#if canImport(Glibc)
import Glibc
#endif
import CXen
import EventLoop
import Logging
import Support
import Synchronization

/// A failed xenstore request, with what a person needs to act on it.
public enum XenStoreError: Error, Equatable, CustomStringConvertible {
    /// xs_open failed: no xenstored at `socket` (nil: libxenstore's default
    /// search, i.e. `XENSTORED_PATH`, `/var/run/xenstored/socket`, `/dev/xen/xenbus`).
    case open(socket: String?, errno: Int32)
    /// A request failed: which operation, on which path, and the errno
    /// xenstored answered (ENOENT, EACCES, EAGAIN...).
    case failed(operation: String, path: String, errno: Int32)
    /// `watch` needs the client to have been created with an event loop.
    case noEventLoop
    /// A transaction still conflicted after this many attempts.
    case tooManyRetries(attempts: Int)

    public var errno: Int32? {
        switch self {
        case .open(_, let e), .failed(_, _, let e): e
        default: nil
        }
    }

    /// The node does not exist (ENOENT).
    public var isNotFound: Bool { errno == ENOENT }
    /// A transaction conflicted and should be retried (EAGAIN).
    public var isConflict: Bool { errno == EAGAIN }

    public var description: String {
        func why(_ e: Int32) -> String { "\(XSError.name(ofErrno: e)) (\(String(cString: strerror(e))))" }
        switch self {
        case .open(let socket, let e):
            let target = socket ?? "the default socket (XENSTORED_PATH, /var/run/xenstored/socket or /dev/xen/xenbus)"
            return "cannot connect to xenstored at \(target): \(why(e)); is xenstored running?"
        case .failed(let op, let path, let e):
            return "xenstore \(op) \(path): \(why(e))"
        case .noEventLoop:
            return "xenstore watch: this client was created without an event loop"
        case .tooManyRetries(let n):
            return "xenstore transaction: still conflicting (EAGAIN) after \(n) attempts"
        }
    }
}

/// Serialises xs_open calls that point libxenstore at a given socket through
/// XENSTORED_PATH (libxenstore 4.17 reads it only in xs_open and has no
/// open-with-path call).
private let xsOpenLock = Mutex<Void>(())

/// A xenstore client: libxenstore's handle, owned and closed by this type.
///
/// Calls block until xenstored replies (keep them out of per-frame paths).
/// Watch events arrive on the event loop given at creation, through
/// libxenstore's watch fd. Use one client from one thread (the loop's).
///
/// ```swift
/// let xs = try XenStore(loop: loop)                  // XENSTORED_PATH or the system's
/// let guest = try XenStore(socketPath: domSocket)    // act as the guest of that socket
/// try xs.write("/local/domain/5/name", "guest")
/// let state = try xs.readIfPresent("backend/vfb/5/0/state")
/// try xs.watch("/local/domain/5/device/vfb/0", token: "fe") { path, token in ... }
/// try xs.transaction { tx throws(XenStoreError) in try xs.write("a", "1", in: tx) }
/// ```
public final class XenStore {
    /// A transaction id; `.none` means no transaction.
    public struct Transaction: Equatable, Hashable, Sendable {
        public let id: UInt32
        public init(id: UInt32) { self.id = id }
        public static let none = Transaction(id: 0)
    }

    /// Called on the loop with the path that changed (relative if the watch
    /// was relative) and the watch's token.
    public typealias WatchHandler = (_ path: String, _ token: String) -> Void

    private let handle: OpaquePointer
    private let loop: EventLoop?
    private var handlers: [String: WatchHandler] = [:]
    private var watchFD: Int32 = -1
    private var lossFD: Int32 = -1
    private let log = Log.logger("xenstore")
    /// The socket this client was opened on, nil for libxenstore's default.
    public let socketPath: String?

    /// Connects to xenstored: at `socketPath` if given (e.g. a domain socket
    /// of the embedded server, to act as that domain), otherwise where
    /// libxenstore looks (`XENSTORED_PATH`, then the system's xenstored).
    /// `loop` is needed only for watches.
    public init(socketPath: String? = nil, loop: EventLoop? = nil) throws(XenStoreError) {
        self.socketPath = socketPath
        self.loop = loop
        // XS_UNWATCH_FILTER (1UL << 2): no events for a token after xs_unwatch.
        let flags: UInt = 1 << 2
        let (h, err): (OpaquePointer?, Int32) = Self.withEnvironmentLock {
            guard let socketPath else { return (xs_open(flags), Glibc.errno) }
            let saved = getenv("XENSTORED_PATH").map { String(cString: $0) }
            setenv("XENSTORED_PATH", socketPath, 1)
            let h = xs_open(flags)
            let e = Glibc.errno
            if let saved { setenv("XENSTORED_PATH", saved, 1) } else { unsetenv("XENSTORED_PATH") }
            return (h, e)
        }
        guard let h else { throw .open(socket: socketPath, errno: err) }
        handle = h
    }

    deinit {
        if watchFD >= 0 { loop?.unwatch(fd: watchFD) }
        if lossFD >= 0 { loop?.unwatch(fd: lossFD); close(lossFD) }
        xs_close(handle)
    }

    /// Calls `handler` once, on `loop`, when xenstored goes away.
    ///
    /// libxenstore notices a dead xenstored only on the next request, and
    /// its watch fd then simply stays quiet. So this opens a second, idle
    /// connection to the same socket and waits for its hang-up (no reads, no
    /// timers: an idle process stays idle). Returns false when xenstore is
    /// not reached through a socket (the xenbus device), where there is
    /// nothing to wait on.
    @discardableResult
    public func onConnectionLost(_ handler: @escaping () -> Void) -> Bool {
        guard let loop, lossFD < 0 else { return false }
        let path = socketPath ?? getenv("XENSTORED_PATH").map { String(cString: $0) } ?? "/var/run/xenstored/socket"
        guard let fd = try? UnixSocket.connect(to: path) else { return false } // not a socket we can reach: nothing to wait on
        do {
            // No events asked for: epoll still reports the hang-up.
            try loop.watch(fd: fd, events: []) { [weak self] _ in
                guard let self, self.lossFD >= 0 else { return }
                loop.unwatch(fd: self.lossFD)
                close(self.lossFD)
                self.lossFD = -1
                self.log.error("xenstore connection lost: xenstored at \(path) went away")
                handler()
            }
        } catch {
            close(fd)
            return false
        }
        lossFD = fd
        return true
    }

    /// Runs `body` while no `XenStore(socketPath:)` is borrowing
    /// XENSTORED_PATH. Hold it to read the whole environment (e.g. copying
    /// `environ` for posix_spawn) while other threads may open clients.
    public static func withEnvironmentLock<T>(_ body: () throws -> T) rethrows -> T {
        try xsOpenLock.withLock { _ in try body() }
    }

    private func fail(_ op: String, _ path: String) -> XenStoreError {
        .failed(operation: op, path: path, errno: Glibc.errno)
    }

    // MARK: Nodes

    /// The value of `path` (bytes as stored; no NUL added or removed).
    public func read(_ path: String, in tx: Transaction = .none) throws(XenStoreError) -> [UInt8] {
        var len: UInt32 = 0
        guard let p = xs_read(handle, tx.id, path, &len) else { throw fail("read", path) }
        defer { free(p) }
        return Array(UnsafeRawBufferPointer(start: p, count: Int(len)))
    }

    /// The value of `path` as text.
    public func readString(_ path: String, in tx: Transaction = .none) throws(XenStoreError) -> String {
        String(decoding: try read(path, in: tx), as: UTF8.self)
    }

    /// The value of `path` as text, or nil if the node does not exist.
    public func readIfPresent(_ path: String, in tx: Transaction = .none) throws(XenStoreError) -> String? {
        do {
            return try readString(path, in: tx)
        } catch {
            if error.isNotFound { return nil }
            throw error
        }
    }

    /// Writes `value`, creating the node and missing parents.
    public func write(_ path: String, _ value: [UInt8], in tx: Transaction = .none) throws(XenStoreError) {
        let ok = value.withUnsafeBytes { xs_write(handle, tx.id, path, $0.baseAddress, UInt32($0.count)) }
        guard ok else { throw fail("write", path) }
    }

    public func write(_ path: String, _ value: String, in tx: Transaction = .none) throws(XenStoreError) {
        try write(path, Array(value.utf8), in: tx)
    }

    /// Creates an empty node (and missing parents); fine if it exists.
    public func mkdir(_ path: String, in tx: Transaction = .none) throws(XenStoreError) {
        guard xs_mkdir(handle, tx.id, path) else { throw fail("mkdir", path) }
    }

    /// Removes a node and everything below it; fine if it is already gone.
    public func rm(_ path: String, in tx: Transaction = .none) throws(XenStoreError) {
        guard xs_rm(handle, tx.id, path) else { throw fail("rm", path) }
    }

    /// The names of the children of `path`.
    public func directory(_ path: String, in tx: Transaction = .none) throws(XenStoreError) -> [String] {
        var num: UInt32 = 0
        guard let list = xs_directory(handle, tx.id, path, &num) else { throw fail("directory", path) }
        defer { free(list) } // one allocation holds the array and the strings
        return (0..<Int(num)).compactMap { i in list[i].map { String(cString: $0) } }
    }

    /// Whether `path` exists (and may be read).
    public func exists(_ path: String, in tx: Transaction = .none) throws(XenStoreError) -> Bool {
        try readIfPresent(path, in: tx) != nil
    }

    /// The permission list of `path`: owner (and default) first.
    public func getPermissions(_ path: String, in tx: Transaction = .none) throws(XenStoreError) -> [XSPermission] {
        var num: UInt32 = 0
        guard let p = xs_get_permissions(handle, tx.id, path, &num) else { throw fail("get-perms", path) }
        defer { free(p) }
        return (0..<Int(num)).map { XSPermission(domid: p[$0].id, XSPermission.Access(rawValue: p[$0].perms & 3)) }
    }

    /// Sets the permission list of `path`: owner (and default) first.
    public func setPermissions(_ path: String, _ perms: [XSPermission], in tx: Transaction = .none) throws(XenStoreError) {
        var raw = perms.map { xs_permissions(id: $0.domid, perms: $0.access.intersection(.both).rawValue) }
        let ok = raw.withUnsafeMutableBufferPointer { xs_set_permissions(handle, tx.id, path, $0.baseAddress, UInt32($0.count)) }
        guard ok else { throw fail("set-perms", path) }
    }

    // MARK: Transactions

    public func transactionStart() throws(XenStoreError) -> Transaction {
        let t = xs_transaction_start(handle)
        guard t != 0 else { throw fail("transaction-start", "") }
        return Transaction(id: t)
    }

    /// Commits (or with `abort`, drops) a transaction. A conflicting commit
    /// throws an error whose `isConflict` is true: start again.
    public func transactionEnd(_ tx: Transaction, abort: Bool = false) throws(XenStoreError) {
        guard xs_transaction_end(handle, tx.id, abort) else { throw fail("transaction-end", "") }
    }

    /// Runs `body` in a transaction and commits it, starting again while the
    /// commit (or a request inside) reports a conflict. If `body` throws
    /// anything else the transaction is aborted and the error rethrown.
    public func transaction<T>(maxAttempts: Int = 100, _ body: (Transaction) throws(XenStoreError) -> T) throws(XenStoreError) -> T {
        for _ in 0..<maxAttempts {
            let tx = try transactionStart()
            let result: T
            do {
                result = try body(tx)
            } catch {
                try? transactionEnd(tx, abort: true)
                if error.isConflict { continue }
                throw error
            }
            do {
                try transactionEnd(tx)
                return result
            } catch {
                if error.isConflict { continue }
                throw error
            }
        }
        throw .tooManyRetries(attempts: maxAttempts)
    }

    // MARK: Watches

    /// Watches `path` and everything below it. `handler` runs on the loop,
    /// once right away and then after each change; tokens identify watches
    /// (a second watch with the same token replaces the handler).
    public func watch(_ path: String, token: String, _ handler: @escaping WatchHandler) throws(XenStoreError) {
        guard let loop else { throw .noEventLoop }
        if watchFD < 0 {
            let fd = xs_fileno(handle)
            guard fd >= 0 else { throw fail("watch", path) }
            do {
                try loop.watch(fd: fd) { [weak self] _ in self?.dispatchWatches() }
            } catch {
                throw .failed(operation: "watch", path: path, errno: error.errno)
            }
            watchFD = fd
        }
        handlers[token] = handler
        guard xs_watch(handle, path, token) else {
            let e = fail("watch", path)
            handlers.removeValue(forKey: token)
            throw e
        }
    }

    /// Removes a watch; no more events are delivered for it.
    public func unwatch(_ path: String, token: String) throws(XenStoreError) {
        handlers.removeValue(forKey: token)
        guard xs_unwatch(handle, path, token) else { throw fail("unwatch", path) }
    }

    private func dispatchWatches() {
        while true {
            Glibc.errno = 0
            guard let vec = xs_check_watch(handle) else { break }
            // XS_WATCH_PATH = 0, XS_WATCH_TOKEN = 1; one allocation for all.
            let path = vec[0].map { String(cString: $0) } ?? ""
            let token = vec[1].map { String(cString: $0) } ?? ""
            free(vec)
            handlers[token]?(path, token)
        }
        let e = Glibc.errno
        if e != EAGAIN && e != 0 && watchFD >= 0 {
            log.error("xenstore connection lost: \(SystemError("xs_check_watch", errno: e))")
            loop?.unwatch(fd: watchFD)
            watchFD = -1
        }
    }

    // MARK: Domains

    /// /local/domain/<domid>, as xenstored names it.
    public func domainPath(_ domid: UInt32) throws(XenStoreError) -> String {
        guard let p = xs_get_domain_path(handle, domid) else { throw fail("get-domain-path", "\(domid)") }
        defer { free(p) }
        return String(cString: p)
    }

    /// Tells xenstored about a new domain (fires @introduceDomain).
    public func introduceDomain(_ domid: UInt32, mfn: UInt = 0, eventChannel: UInt32 = 0) throws(XenStoreError) {
        guard xs_introduce_domain(handle, domid, mfn, eventChannel) else { throw fail("introduce", "\(domid)") }
    }

    /// Tells xenstored a domain is gone: its nodes go and @releaseDomain fires.
    public func releaseDomain(_ domid: UInt32) throws(XenStoreError) {
        guard xs_release_domain(handle, domid) else { throw fail("release", "\(domid)") }
    }

    public func isDomainIntroduced(_ domid: UInt32) -> Bool {
        xs_is_domain_introduced(handle, domid)
    }
}
