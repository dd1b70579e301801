#if canImport(Glibc)
import Glibc
#endif
import CShims

/// What went wrong with a Unix-domain socket, in terms a user can act on.
public enum SocketError: Error, CustomStringConvertible, Equatable {
    /// The path does not fit in `sockaddr_un` (at most `max` bytes).
    case pathTooLong(String, max: Int)
    /// The path is empty or contains a NUL byte.
    case badPath(String)
    /// Something that is not a socket is in the way.
    case notASocket(String)
    /// Another process accepts connections on the path.
    case inUse(String)
    /// A system call failed.
    case system(SystemError, path: String)

    public var description: String {
        switch self {
        case .pathTooLong(let p, let max): return "socket path '\(p)' is longer than \(max) bytes"
        case .badPath(let p): return "'\(p)' is not a usable socket path"
        case .notASocket(let p): return "'\(p)' exists and is not a socket"
        case .inUse(let p): return "'\(p)' is in use by another process"
        case .system(let e, let p): return "\(p): \(e)"
        }
    }
}

/// A Unix-domain socket address (`struct sockaddr_un`), checked once.
public struct UnixSocketAddress: Sendable {
    public let path: String
    private let bytes: [UInt8]

    /// The largest path a `sockaddr_un` holds (107 bytes on Linux).
    public static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    public init(_ path: String) throws(SocketError) {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, !bytes.contains(0) else { throw .badPath(path) }
        guard bytes.count <= Self.maxPathBytes else { throw .pathTooLong(path, max: Self.maxPathBytes) }
        self.path = path
        self.bytes = bytes
    }

    /// Runs `body` with the address as the socket calls take it.
    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + 1)
        return try withUnsafePointer(to: &addr) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    /// The path a socket is bound to (`getsockname`), or nil.
    public static func localPath(of fd: Int32) -> String? {
        var addr = sockaddr_un()
        var len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard rc == 0, addr.sun_family == sa_family_t(AF_UNIX) else { return nil }
        return withUnsafeBytes(of: addr.sun_path) { raw in
            let bytes = raw.prefix { $0 != 0 }
            return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
        }
    }
}

/// Connected Unix stream sockets (the client side).
public enum UnixSocket {
    /// Connects a close-on-exec stream socket to `path` (blocking connect; a
    /// Unix socket answers at once or refuses). The corresponding C function
    /// is `connect`.
    public static func connect(to path: String, nonBlocking: Bool = false) throws(SocketError) -> Int32 {
        let address = try UnixSocketAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(SystemError("socket"), path: path) }
        let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        guard rc == 0 else {
            let e = SystemError("connect")
            close(fd)
            throw .system(e, path: path)
        }
        if nonBlocking { _ = cshims_set_nonblocking(fd) }
        return fd
    }

    /// One pending connection on the listening socket `fd`, non-blocking and
    /// close-on-exec; nil when there is none (or on an error the next
    /// readiness retries). The corresponding C function is `accept`
    /// (`accept4` needs _GNU_SOURCE, which Glibc's module does not set).
    public static func accept(on fd: Int32) -> Int32? {
        while true {
            let conn = Glibc.accept(fd, nil, nil)
            if conn >= 0 {
                _ = cshims_set_cloexec(conn)
                _ = cshims_set_nonblocking(conn)
                return conn
            }
            if errno == EINTR { continue }
            return nil
        }
    }
}

/// A listening Unix stream socket at a path: the one policy for every
/// socket xenvfb serves (QMP, the embedded xenstored, VNC on `unix:`).
///
/// - The file gets `mode` whatever the umask: it is bound inside a fresh
///   0700 directory next to the path, chmod-ed before it listens (so nobody
///   can connect through looser permissions or swap it), and renamed into
///   place once listening (so the path never names a socket that refuses
///   connections).
/// - A socket file that refuses connections is stale (its process died) and
///   is replaced; one that accepts belongs to a live process and is an
///   error; anything that is not a socket is never touched.
/// - `close` removes the file only if it is still the one this listener made.
///
/// Use it from one thread at a time (the one serving the socket).
public final class UnixListener: @unchecked Sendable {
    public let fd: Int32
    public let path: String
    private var identity: (dev: UInt64, ino: UInt64)?
    private var closed = false

    /// Binds and listens at `path`; the socket is non-blocking and close-on-exec.
    public init(path: String, mode: mode_t = 0o600, backlog: Int32 = 16) throws(SocketError) {
        let address = try UnixSocketAddress(path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path) }
            if Self.accepts(address) { throw .inUse(path) }
        }
        // Bound inside a fresh 0700 directory next to `path` (nobody else can
        // reach or swap the socket there), chmod-ed, listening, then renamed
        // into place. A path whose directory leaves no room for that is
        // bound in place (stale file removed first).
        let parent = path.lastIndex(of: "/").map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        var template = Array((parent + "/.xenvfb-sock-XXXXXX").utf8CString)
        var privateDir: String?
        if let dir = mkdtemp(&template) { privateDir = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self); _ = dir }
        defer { if let privateDir { rmdir(privateDir) } }
        let bindAddress: UnixSocketAddress
        if let privateDir, let inside = try? UnixSocketAddress(privateDir + "/s") {
            bindAddress = inside
        } else {
            unlink(path)
            bindAddress = address
        }

        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system(SystemError("socket"), path: path) }
        func fail(_ call: String) -> SocketError {
            let e = SystemError(call)
            Glibc.close(fd)
            unlink(bindAddress.path)
            return .system(e, path: path)
        }
        guard bindAddress.withSockaddr({ bind(fd, $0, $1) }) == 0 else {
            let e = SystemError("bind")
            Glibc.close(fd)
            throw .system(e, path: path)
        }
        guard chmod(bindAddress.path, mode) == 0 else { throw fail("chmod") }
        guard listen(fd, backlog) == 0 else { throw fail("listen") }
        if bindAddress.path != path {
            guard rename(bindAddress.path, path) == 0 else { throw fail("rename") }
        }
        self.fd = fd
        self.path = path
        if lstat(path, &st) == 0 { identity = (UInt64(st.st_dev), UInt64(st.st_ino)) }
    }

    deinit { close() }

    /// Whether something accepts connections at `address` now.
    private static func accepts(_ address: UnixSocketAddress) -> Bool {
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
        guard probe >= 0 else { return false }
        defer { Glibc.close(probe) }
        let rc = address.withSockaddr { Glibc.connect(probe, $0, $1) }
        return rc == 0 || errno == EAGAIN || errno == EINPROGRESS
    }

    /// One pending connection, non-blocking and close-on-exec; nil when
    /// there is none (or on an error the next readiness retries). The
    /// corresponding C function is `accept`.
    public func accept() -> Int32? { UnixSocket.accept(on: fd) }

    /// Stops listening and removes the socket file if it is still this
    /// listener's (not one another process put there since). Idempotent.
    public func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
        var st = stat()
        if let identity, lstat(path, &st) == 0, UInt64(st.st_dev) == identity.dev, UInt64(st.st_ino) == identity.ino {
            unlink(path)
        }
    }
}

/// Monotonic nanoseconds (`CLOCK_MONOTONIC`, the event loop's clock), for
/// code that runs without a loop.
public enum MonotonicClock {
    public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
