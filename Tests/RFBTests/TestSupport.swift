import Glibc
@testable import RFB
import Support

/// A frame for tests: XRGB with garbage in the padding byte.
final class FakeFrame: RFBFrameSource, @unchecked Sendable {
    private var m = pthread_mutex_t()
    private(set) var pixels: [UInt32]
    private(set) var width: Int
    private(set) var height: Int

    init(width: Int, height: Int, seed: UInt64 = 1) {
        self.width = width
        self.height = height
        var rng = SplitMix(seed: seed)
        pixels = (0..<(width * height)).map { _ in UInt32(truncatingIfNeeded: rng.next()) }
        pthread_mutex_init(&m, nil)
    }

    func withPixels<R>(_ body: (UnsafeRawPointer, Int, Int, Int) -> R) -> R {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return pixels.withUnsafeBytes { body($0.baseAddress!, width, height, width * 4) }
    }

    func set(width w: Int, height h: Int, fill: UInt32) {
        pthread_mutex_lock(&m)
        width = w
        height = h
        pixels = [UInt32](repeating: fill, count: w * h)
        pthread_mutex_unlock(&m)
    }

    func pixel(_ x: Int, _ y: Int) -> UInt32 { pixels[y * width + x] }
}

/// A session driven in memory, with what it emitted.
final class SessionHarness {
    let frame: FakeFrame
    let context: SessionContext
    let session: RFBSession
    var events: [RFBEvent] = []
    var password: [UInt8]? = nil
    /// Output received; `pending` is what was not looked at yet.
    private var received: [UInt8] = []
    private var readOffset = 0
    var pending: [UInt8] {
        get { Array(received[readOffset...]) }
        set { received = newValue; readOffset = 0 }
    }

    init(frame: FakeFrame, passwordRequired: Bool = false, vencrypt: Bool = false) {
        self.frame = frame
        var me: SessionHarness?
        context = SessionContext(source: frame, desktopName: "test", passwordRequired: passwordRequired,
                                 log: Log.logger("test"),
                                 checkPassword: { c, r in
                                     guard let p = me?.password else { return .noPassword }
                                     return vncAuthResponse(challenge: c, password: p) == r ? .ok : .wrongPassword
                                 },
                                 emit: { e in me?.events.append(e) })
        session = RFBSession(context: context, vencrypt: vencrypt)
        me = self
        drain()
    }

    /// Gives the session a direct path to the "socket" (`RFBSession.directSend`)
    /// that takes, call after call, what `takes` says: nil everything offered,
    /// 0 nothing (EAGAIN), n at most n bytes. What it takes lands in `pending`
    /// in the order written. Returns a counter of the calls made.
    func sendDirectly(takes: [Int?]) -> () -> Int {
        var calls = 0
        session.directSend = { [unowned self] iov, count in
            let offered = (0..<Int(count)).map { iov[$0] }
            let total = offered.reduce(0) { $0 + $1.iov_len }
            let plan = takes[calls % takes.count]
            calls += 1
            let n = min(plan ?? total, total)
            if n == 0 {
                errno = EAGAIN
                return -1
            }
            var left = n
            for v in offered where left > 0 {
                let k = min(left, v.iov_len)
                self.received += UnsafeRawBufferPointer(start: v.iov_base, count: k)
                left -= k
            }
            return n
        }
        return { calls }
    }

    /// Moves everything queued into `pending` (as if the client read it).
    func drain() {
        repeat {
            session.pump()
            while !session.out.isEmpty {
                let n = session.out.withPieces(max: 64) { pieces -> Int in
                    var n = 0
                    for p in pieces { received += p; n += p.count }
                    return n
                }
                session.out.consume(n)
            }
        } while session.isUpdating
    }

    func send(_ bytes: [UInt8], byteByByte: Bool = false) throws {
        if byteByByte {
            for b in bytes { try session.receive([b]) }
        } else {
            try session.receive(bytes)
        }
        drain()
    }

    func take(_ n: Int) -> [UInt8]? {
        guard received.count - readOffset >= n else { return nil }
        defer { readOffset += n }
        return Array(received[readOffset..<readOffset + n])
    }

    /// Handshake as an RFB 3.8 client with security None.
    func handshake() throws {
        _ = take(12)
        try send(Array("RFB 003.008\n".utf8))
        _ = take(2)
        try send([1])
        _ = take(4)
        try send([1])
        _ = take(24 + 4)
    }

    /// Next server message, parsed for raw/pseudo updates: (type, rects).
    func nextMessage(bytesPerPixel: Int = 4) -> (type: UInt8, rects: [(x: Int, y: Int, w: Int, h: Int, encoding: Int32, data: [UInt8])])? {
        let saved = readOffset
        guard let t = take(1) else { return nil }
        switch t[0] {
        case 0:
            guard let h = take(3) else { readOffset = saved; return nil }
            var rects: [(Int, Int, Int, Int, Int32, [UInt8])] = []
            for _ in 0..<(Int(h[1]) << 8 | Int(h[2])) {
                guard let r = take(12) else { readOffset = saved; return nil }
                let x = Int(r[0]) << 8 | Int(r[1]), y = Int(r[2]) << 8 | Int(r[3])
                let w = Int(r[4]) << 8 | Int(r[5]), hh = Int(r[6]) << 8 | Int(r[7])
                let e = Int32(bitPattern: UInt32(r[8]) << 24 | UInt32(r[9]) << 16 | UInt32(r[10]) << 8 | UInt32(r[11]))
                var size = 0
                if e == 0 { size = w * hh * bytesPerPixel }
                if e == -308 { size = 4 + 16 }
                guard let d = take(size) else { readOffset = saved; return nil }
                rects.append((x, y, w, hh, e, d))
            }
            return (0, rects)
        case 1:
            guard let h = take(5) else { readOffset = saved; return nil }
            _ = take(6 * (Int(h[3]) << 8 | Int(h[4])))
            return (1, [])
        default:
            return (t[0], [])
        }
    }
}

func setEncodings(_ e: [Int32]) -> [UInt8] {
    var b: [UInt8] = [2, 0, UInt8(e.count >> 8), UInt8(e.count & 0xff)]
    for v in e { let u = UInt32(bitPattern: v); b += [UInt8(u >> 24), UInt8((u >> 16) & 0xff), UInt8((u >> 8) & 0xff), UInt8(u & 0xff)] }
    return b
}

func updateRequest(incremental: Bool, _ x: Int = 0, _ y: Int = 0, _ w: Int = 65535, _ h: Int = 65535) -> [UInt8] {
    [3, incremental ? 1 : 0, UInt8(x >> 8), UInt8(x & 0xff), UInt8(y >> 8), UInt8(y & 0xff),
     UInt8(w >> 8), UInt8(w & 0xff), UInt8(h >> 8), UInt8(h & 0xff)]
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The package root, from this file's path (Tests/RFBTests/…).
let packageRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

let venvPython = packageRoot + "/.build-tools/venv/bin/python"
let referenceDecoder = packageRoot + "/Tests/RFBTests/rfb_reference.py"

func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

/// A child process with its stdout and stderr in one pipe.
final class Process {
    let pid: pid_t
    private var fd: Int32
    private(set) var output: [UInt8] = []
    private(set) var status: Int32?

    init(_ argv: [String], environment: [String: String] = [:]) throws {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw TestFailure("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addclose(&actions, fds[1])
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var env: [String] = []
        var e = environ
        while let p = e.pointee { env.append(String(cString: p)); e += 1 }
        env = env.filter { entry in !environment.keys.contains { entry.hasPrefix($0 + "=") } }
        env += environment.map { "\($0.key)=\($0.value)" }
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, cArgs, cEnv)
        close(fds[1])
        guard rc == 0 else {
            close(fds[0])
            throw TestFailure("cannot run \(argv[0]): \(String(cString: strerror(rc)))")
        }
        self.pid = pid
        fd = fds[0]
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        if status == nil { kill(pid, SIGKILL); _ = wait(seconds: 5) }
        if fd >= 0 { close(fd) }
    }

    private func drain() {
        var buf = [UInt8](repeating: 0, count: 65536)
        while fd >= 0 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            output += buf[0..<n]
        }
    }

    var text: String { drain(); return String(decoding: output, as: UTF8.self) }

    func poll() -> Int32? {
        drain()
        if status == nil {
            var s: Int32 = 0
            if waitpid(pid, &s, WNOHANG) == pid {
                drain()
                status = (s & 0x7f) == 0 ? (s >> 8) & 0xff : 128 + (s & 0x7f)
            }
        }
        return status
    }

    /// Waits for exit (killing the process after `seconds`); its status.
    @discardableResult
    func wait(seconds: Double) -> Int32 {
        let deadline = monotonicSeconds() + seconds
        while poll() == nil {
            if monotonicSeconds() > deadline {
                kill(pid, SIGKILL)
                var s: Int32 = 0
                waitpid(pid, &s, 0)
                status = -9
                break
            }
            usleep(5000)
        }
        return status ?? -1
    }

    /// Waits until the output has a line starting with `prefix`; that line.
    func line(startingWith prefix: String, seconds: Double = 30) throws -> String {
        let deadline = monotonicSeconds() + seconds
        while monotonicSeconds() < deadline {
            if let l = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) { return String(l) }
            if poll() != nil { break }
            usleep(5000)
        }
        throw TestFailure("no line '\(prefix)…' from \(pid): \(text)")
    }
}

/// RFBTestServer in a process of its own, listening on a free port.
final class TestServer {
    let process: Process
    let port: Int
    let webSocketPort: Int?

    init(_ arguments: [String] = [], webSocket: Bool = false) throws {
        let binary = packageRoot + "/.build/debug/RFBTestServer"
        guard access(binary, X_OK) == 0 else { throw TestFailure("\(binary) missing: swift build --build-tests") }
        var args = [binary] + arguments
        if webSocket { args += ["--websocket", "0"] }
        process = try Process(args)
        let fields = try process.line(startingWith: "listening ").split(separator: " ")
        guard fields.count >= 2, let p = Int(fields[1]) else { throw TestFailure("bad line from RFBTestServer: \(fields)") }
        port = p
        webSocketPort = fields.count > 2 ? Int(fields[2]) : nil
    }

    deinit { kill(process.pid, SIGTERM); process.wait(seconds: 5) }
}

/// Runs a command to completion; its status and output.
func run(_ argv: [String], seconds: Double = 120) throws -> (status: Int32, output: String) {
    let p = try Process(argv)
    let status = p.wait(seconds: seconds)
    return (status, p.text)
}
