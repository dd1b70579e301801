import Glibc
import CShims
import Synchronization
import Testing
@testable import XenStore

/// Where the repository is (for .build-tools).
let repoRoot: String = {
    var path = String(#filePath)
    for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
    return path
}()

let testXenstorePath = repoRoot + "/.build-tools/xen-utils/usr/lib/xen-4.17/bin/test-xenstore"

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A fresh temporary directory, removed (with its files) by `remove()`.
func makeTempDir() throws -> String {
    var template = Array("/tmp/xenvfb-xs-XXXXXX".utf8CString)
    guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw TestFailure("mkdtemp failed")
    }
    return String(cString: p)
}

func removeTree(_ dir: String) {
    if let d = opendir(dir) {
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name == "." || name == ".." { continue }
            unlink(dir + "/" + name)
        }
        closedir(d)
    }
    rmdir(dir)
}

/// An embedded xenstored on its own thread, with a dom0 socket and one
/// socket per guest domain in a temporary directory.
final class XenstoreFixture {
    let dir: String
    let server: XenstoreServer
    let socket: String

    init(domains: [UInt32] = [], limits: XenstoreServer.Limits = .init()) throws {
        dir = try makeTempDir()
        server = try XenstoreServer(limits: limits)
        socket = dir + "/socket"
        try server.listen(path: socket)
        for d in domains { try server.addDomainSocket(domid: d, path: domainSocket(d)) }
        try server.startOnThread()
    }

    func domainSocket(_ domid: UInt32) -> String { dir + "/dom\(domid)" }

    func stop() {
        server.stop()
        removeTree(dir)
    }

    /// Runs one of Debian's xenstore-* tools against this server (as dom0, or
    /// as `domid` through its domain socket).
    func tool(_ name: String, _ args: [String], as domid: UInt32? = nil) throws -> ToolResult {
        try runTool(name, args, env: ["XENSTORED_PATH": domid.map(domainSocket) ?? socket])
    }
}

struct ToolResult: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String
    var description: String { "exit \(status), stdout \(stdout.debugDescription), stderr \(stderr.debugDescription)" }
}

func findTool(_ name: String) throws -> String {
    if name.contains("/") {
        guard access(name, X_OK) == 0 else { throw TestFailure("\(name) is missing: run scripts/test-tools.sh") }
        return name
    }
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] where access(dir + "/" + name, X_OK) == 0 {
        return dir + "/" + name
    }
    throw TestFailure("\(name) is not installed: run scripts/deps.sh test")
}

/// A child process with its stdout and stderr on pipes.
final class Child {
    let pid: pid_t
    private let outFD: Int32
    private let errFD: Int32
    private(set) var out: [UInt8] = []
    private(set) var err: [UInt8] = []
    private var outOpen = true, errOpen = true

    init(_ name: String, _ args: [String], env extra: [String: String]) throws {
        let path = try findTool(name)
        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw TestFailure("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        for fd in outPipe + errPipe { posix_spawn_file_actions_addclose(&actions, fd) }
        var env: [String] = []
        XenStore.withEnvironmentLock {
            var i = 0
            while let e = environ[i] {
                let s = String(cString: e)
                if let eq = s.firstIndex(of: "="), extra[String(s[..<eq])] != nil {} else { env.append(s) }
                i += 1
            }
        }
        for (k, v) in extra { env.append("\(k)=\(v)") }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, envp)
        close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw TestFailure("posix_spawn \(path): errno \(rc)")
        }
        self.pid = pid
        outFD = outPipe[0]
        errFD = errPipe[0]
    }

    deinit {
        close(outFD)
        close(errFD)
    }

    /// Reads output until `until` is satisfied, both pipes close, or the
    /// deadline passes. Returns whether `until` was satisfied (or EOF came).
    @discardableResult
    func pump(seconds: Double = 20, until: (Child) -> Bool = { _ in false }) -> Bool {
        let deadline = now() + seconds
        while outOpen || errOpen {
            if until(self) { return true }
            let left = deadline - now()
            if left <= 0 { return false }
            var fds = [pollfd(fd: outOpen ? outFD : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: errOpen ? errFD : -1, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, Int32(min(left, 1) * 1000))
            if n <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            if fds[0].revents != 0 {
                let r = read(outFD, &buf, buf.count)
                if r > 0 { out += buf[0..<r] } else { outOpen = false }
            }
            if fds[1].revents != 0 {
                let r = read(errFD, &buf, buf.count)
                if r > 0 { err += buf[0..<r] } else { errOpen = false }
            }
        }
        return true
    }

    var stdoutText: String { String(decoding: out, as: UTF8.self) }
    var stdoutLines: [String] { stdoutText.split(separator: "\n").map(String.init) }

    /// Waits for exit (killing the child after the deadline).
    func wait(seconds: Double = 20) -> ToolResult {
        let done = pump(seconds: seconds)
        if !done { kill(pid, SIGKILL) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return ToolResult(status: done ? code : -1, stdout: stdoutText, stderr: String(decoding: err, as: UTF8.self))
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// The xenvfb executable built next to this test bundle.
func xenvfbPath() throws -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { throw TestFailure("readlink /proc/self/exe failed") }
    let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let path = String(exe[..<exe.lastIndex(of: "/")!]) + "/xenvfb"
    guard access(path, X_OK) == 0 else { throw TestFailure("\(path) missing: swift build --build-tests builds it") }
    return path
}

/// Waits (up to 20 s) until `path` is a socket.
func waitForSocket(_ path: String) -> Bool {
    let deadline = now() + 20
    var st = stat()
    while now() < deadline {
        if stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { return true }
        usleep(10_000)
    }
    return false
}

func runTool(_ name: String, _ args: [String], env: [String: String], seconds: Double = 30) throws -> ToolResult {
    try Child(name, args, env: env).wait(seconds: seconds)
}

/// A raw xenstore protocol client over a blocking socket, for what the
/// tools cannot send (malformed messages, exact replies, watch events).
final class RawClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var nextReqID: UInt32 = 1

    init(fd: Int32) { self.fd = fd }

    /// Connects to `path`, waiting a little for a daemon that has bound its
    /// socket but is not listening yet (Debian's xenstored, for one).
    convenience init(path: String) throws {
        let deadline = now() + 10
        while true {
            do {
                try self.init(connectingTo: path)
                return
            } catch let e as TestFailure where e.description.hasSuffix("errno \(ECONNREFUSED)") && now() < deadline {
                usleep(10_000)
            }
        }
    }

    private convenience init(connectingTo path: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { close(fd); throw TestFailure("connect \(path): errno \(errno)") }
        self.init(fd: fd)
    }

    deinit { close(fd) }

    func sendRaw(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    @discardableResult
    func send(_ type: XSMessageType, _ payload: [UInt8], tx: UInt32 = 0, rawType: UInt32? = nil) -> UInt32 {
        let id = nextReqID
        nextReqID += 1
        _ = sendRaw(XSMessage(type: rawType ?? type.rawValue, reqID: id, txID: tx, payload: payload).encoded())
        return id
    }

    /// The next message, or nil on timeout or EOF.
    func receive(seconds: Double = 10) -> XSMessage? {
        let deadline = now() + seconds
        while true {
            if buffer.count >= 16 {
                let len = buffer.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 12, as: UInt32.self))) }
                if buffer.count >= 16 + len {
                    let w = buffer.withUnsafeBytes { raw in (0..<3).map { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)) } }
                    let m = XSMessage(type: w[0], reqID: w[1], txID: w[2], payload: Array(buffer[16..<16 + len]))
                    buffer.removeFirst(16 + len)
                    return m
                }
            }
            let left = deadline - now()
            if left <= 0 { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(left * 1000) + 1) <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: 8192)
            let n = read(fd, &buf, buf.count)
            if n <= 0 { return nil }
            buffer += buf[0..<n]
        }
    }

    /// Whether the server closed the connection (EOF within the time).
    func isClosed(seconds: Double = 10) -> Bool {
        let deadline = now() + seconds
        while now() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 100) > 0 {
                var buf = [UInt8](repeating: 0, count: 8192)
                let n = read(fd, &buf, buf.count)
                if n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN) { return true }
            }
        }
        return false
    }

    /// Sends a request and returns the reply (skipping watch events, which
    /// go to `events`): (type, payload).
    func request(_ type: XSMessageType, _ strings: [String], value: [UInt8]? = nil, tx: UInt32 = 0) -> (XSMessageType?, [UInt8]) {
        var payload: [UInt8] = []
        for s in strings { payload += Array(s.utf8) + [0] }
        if let value { payload += value }
        let id = send(type, payload, tx: tx)
        while let m = receive() {
            if m.type == XSMessageType.watchEvent.rawValue { events.append(m); continue }
            if m.reqID == id { return (XSMessageType(rawValue: m.type), m.payload) }
        }
        return (nil, [])
    }

    var events: [XSMessage] = []

    /// The next watch event as "path token", waiting up to `seconds`.
    func nextEvent(seconds: Double = 10) -> String? {
        if events.isEmpty {
            while let m = receive(seconds: seconds) {
                if m.type == XSMessageType.watchEvent.rawValue { events.append(m); break }
            }
        }
        guard !events.isEmpty else { return nil }
        let m = events.removeFirst()
        let parts = m.payload.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        return parts[0] + " " + (parts.count > 1 ? parts[1] : "")
    }

    /// The error name of an ERROR reply, "OK"-style text otherwise.
    static func text(_ r: (XSMessageType?, [UInt8])) -> String {
        var p = r.1
        if p.last == 0 { p.removeLast() }
        let t = String(decoding: p, as: UTF8.self)
        return r.0 == .error ? "error " + t : t
    }
}

/// Something that sends requests to a xenstored and receives its messages.
protocol XSTransport: AnyObject {
    @discardableResult
    func send(_ type: XSMessageType, _ payload: [UInt8], tx: UInt32, rawType: UInt32?) -> UInt32
    func receive(seconds: Double) -> XSMessage?
}

extension RawClient: XSTransport {}

/// A guest's side of a xenstore ring (`struct xenstore_domain_interface`,
/// xs_wire.h) in a file that the real xenstored maps through the shim,
/// with a FIFO as the event channel.
final class RingClient: XSTransport {
    private let mem: UnsafeMutableRawPointer
    private let kickFD: Int32
    private var buffer: [UInt8] = []
    private var nextReqID: UInt32 = 1
    private static let size = 1024, reqOff = 0, rspOff = 1024
    private static let reqCons = 2048, reqProd = 2052, rspCons = 2056, rspProd = 2060

    init(ringPath: String, kickPath: String) throws {
        let fd = open(ringPath, O_RDWR | O_CLOEXEC)
        guard fd >= 0, let m = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), m != MAP_FAILED else {
            throw TestFailure("cannot map \(ringPath)")
        }
        close(fd)
        mem = m
        kickFD = open(kickPath, O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard kickFD >= 0 else { throw TestFailure("cannot open \(kickPath)") }
    }

    deinit {
        munmap(mem, 4096)
        close(kickFD)
    }

    private func load(_ off: Int) -> UInt32 {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return mem.load(fromByteOffset: off, as: UInt32.self)
    }

    private func store(_ off: Int, _ v: UInt32) {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        mem.storeBytes(of: v, toByteOffset: off, as: UInt32.self)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    private func kick() {
        var b: UInt8 = 1
        _ = write(kickFD, &b, 1)
    }

    @discardableResult
    func send(_ type: XSMessageType, _ payload: [UInt8], tx: UInt32 = 0, rawType: UInt32? = nil) -> UInt32 {
        let id = nextReqID
        nextReqID += 1
        let bytes = XSMessage(type: rawType ?? type.rawValue, reqID: id, txID: tx, payload: payload).encoded()
        var i = 0
        let deadline = now() + 10
        while i < bytes.count && now() < deadline {
            let cons = load(Self.reqCons), prod = load(Self.reqProd)
            let space = Self.size - Int(prod &- cons)
            if space <= 0 { kick(); usleep(1000); continue }
            let n = min(space, bytes.count - i)
            for k in 0..<n {
                mem.storeBytes(of: bytes[i + k], toByteOffset: Self.reqOff + Int((prod &+ UInt32(k)) % UInt32(Self.size)), as: UInt8.self)
            }
            store(Self.reqProd, prod &+ UInt32(n))
            i += n
            kick()
        }
        return id
    }

    func receive(seconds: Double = 10) -> XSMessage? {
        let deadline = now() + seconds
        while true {
            if buffer.count >= 16 {
                let w = buffer.withUnsafeBytes { raw in (0..<4).map { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)) } }
                let len = Int(w[3])
                if buffer.count >= 16 + len {
                    let m = XSMessage(type: w[0], reqID: w[1], txID: w[2], payload: Array(buffer[16..<16 + len]))
                    buffer.removeFirst(16 + len)
                    return m
                }
            }
            var cons = load(Self.rspCons)
            let prod = load(Self.rspProd)
            if cons != prod {
                while cons != prod {
                    buffer.append(mem.load(fromByteOffset: Self.rspOff + Int(cons % UInt32(Self.size)), as: UInt8.self))
                    cons &+= 1
                }
                store(Self.rspCons, cons)
                kick()
                continue
            }
            if now() >= deadline { return nil }
            usleep(500)
        }
    }
}
