#if canImport(Glibc)
import Glibc
#endif
import Devices
import Console
import Displays
import EventLoop
import GuestKit
import Host
import Testing
import XenBus
import XenStore
import XenProtocol

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

let repoRoot: String = {
    var path = String(#filePath)
    for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
    return path
}()

/// The xenvfb executable built next to this test bundle.
/// A binary of the package (`xenvfb`, `xenvfb-testtool`) next to the test bundle.
func xenvfbPath(tool: String = "xenvfb") throws -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { throw TestFailure("readlink /proc/self/exe failed") }
    let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let path = String(exe[..<exe.lastIndex(of: "/")!]) + "/" + tool
    guard access(path, X_OK) == 0 else { throw TestFailure("\(path) missing: swift build --build-tests builds it") }
    return path
}

/// A simulated machine with the real embedded xenstored (on its thread):
/// dom0 and the guest reach it through their own sockets, so xenstore
/// permissions apply as under Xen.
final class XenstoreMachine {
    let loop: EventLoop
    let dir: String
    let server: XenstoreServer
    let dom0Socket: String
    let domid: UInt32
    let dom0: XenStoreConnection
    let console = Console()
    let backends: Backends

    init(domid: UInt32) throws {
        loop = try EventLoop()
        dir = try SimHost.makeDirectory(prefix: "xenvfb-e2e")
        self.domid = domid
        server = try XenstoreServer()
        dom0Socket = dir + "/xenstored"
        try server.listen(path: dom0Socket)
        try server.addDomainSocket(domid: domid, path: dir + "/xenstored-dom\(domid)")
        server.introduceDomain(domid)
        try server.startOnThread()
        dom0 = try XenStoreConnection(socketPath: dom0Socket, loop: loop)
        backends = Backends(loop: loop)
    }

    var guestSocket: String { dir + "/xenstored-dom\(domid)" }

    func start() throws {
        try Toolstack.addFramebuffer(store: dom0, domid: domid)
        try backends.start(host: SimHost(directory: dir, domid: 0), xenstore: dom0, domid: domid, console: console, config: BackendConfig())
    }

    func stop() {
        backends.shutdown {}
        server.stop()
        SimHost.removeDirectory(dir)
    }

    func backendState(_ type: String) -> XenbusState? {
        XenbusState(xenstore: (try? dom0.read("/local/domain/0/backend/\(type)/\(domid)/0/state")) ?? nil)
    }

    @discardableResult
    func run(seconds: Double = 20, until condition: () -> Bool) -> Bool {
        let deadline = EventLoop.now() + UInt64(seconds * 1e9)
        while !condition() {
            if EventLoop.now() > deadline { return false }
            loop.runOnce(timeoutMilliseconds: 10)
        }
        return true
    }
}

/// A child process whose stdout lines arrive through the event loop.
final class ChildProcess {
    let pid: pid_t
    let outFD: Int32
    private var buffer: [UInt8] = []
    private(set) var lines: [String] = []
    var exited = false

    init(_ path: String, _ args: [String], loop: EventLoop, stderrPath: String) throws {
        var p: [Int32] = [0, 0]
        guard pipe(&p) == 0 else { throw TestFailure("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, p[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addclose(&actions, p[0])
        posix_spawn_file_actions_addclose(&actions, p[1])
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        close(p[1])
        guard rc == 0 else { close(p[0]); throw TestFailure("posix_spawn \(path): errno \(rc)") }
        self.pid = pid
        outFD = p[0]
        let fd = outFD
        _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        try loop.watch(fd: fd) { [weak self] _ in self?.readAvailable(loop) }
    }

    private func readAvailable(_ loop: EventLoop) {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { read(outFD, $0.baseAddress, $0.count) }
        if n <= 0 {
            if n == 0 || (errno != EAGAIN && errno != EINTR) { loop.unwatch(fd: outFD) }
            return
        }
        buffer += chunk[0..<n]
        while let nl = buffer.firstIndex(of: 10) {
            lines.append(String(decoding: buffer[..<nl], as: UTF8.self))
            buffer.removeSubrange(...nl)
        }
    }

    /// Sends SIGTERM and reaps the child; returns its exit status.
    @discardableResult
    func terminate() -> Int32 {
        guard !exited else { return 0 }
        exited = true
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        close(outFD)
        return (status >> 8) & 0xff
    }

    deinit { terminate() }
}

/// Decodes a PNG with Pillow (a decoder this project did not write) into RGB bytes.
func decodeWithPillow(_ path: String) throws -> (width: Int, height: Int, rgb: [UInt8]) {
    let python = repoRoot + "/.build-tools/venv/bin/python"
    guard access(python, X_OK) == 0 else { throw TestFailure("\(python) missing: run scripts/test-tools.sh") }
    let out = path + ".rgb"
    let script = "import sys; from PIL import Image; im = Image.open(sys.argv[1]); im.load(); "
        + "open(sys.argv[2], 'wb').write(im.convert('RGB').tobytes()); print(im.size[0], im.size[1], im.mode)"
    var p: [Int32] = [0, 0]
    guard pipe(&p) == 0 else { throw TestFailure("pipe failed") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, p[1], 1)
    posix_spawn_file_actions_addclose(&actions, p[0])
    posix_spawn_file_actions_addclose(&actions, p[1])
    let argv: [UnsafeMutablePointer<CChar>?] = [python, "-c", script, path, out].map { (s: String) in strdup(s) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    guard posix_spawn(&pid, python, &actions, nil, argv, environ) == 0 else { throw TestFailure("cannot run \(python)") }
    close(p[1])
    var text: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 256)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(p[0], $0.baseAddress, $0.count) }
        if n <= 0 { break }
        text += chunk[0..<n]
    }
    close(p[0])
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    guard status == 0 else { throw TestFailure("Pillow could not decode \(path)") }
    let words = String(decoding: text, as: UTF8.self).split(separator: " ").map { String($0).trimmingCharacters() }
    guard words.count == 3, let w = Int(words[0]), let h = Int(words[1]) else { throw TestFailure("Pillow said \(words)") }
    let fd = open(out, O_RDONLY)
    guard fd >= 0 else { throw TestFailure("no decoded output") }
    defer { close(fd); unlink(out) }
    var rgb = [UInt8](repeating: 0, count: w * h * 3)
    var got = 0
    while got < rgb.count {
        let n = rgb.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
        if n <= 0 { break }
        got += n
    }
    guard got == rgb.count else { throw TestFailure("decoded \(got) of \(rgb.count) bytes") }
    return (w, h, rgb)
}

extension String {
    func trimmingCharacters() -> String {
        String(self.drop(while: { $0 == " " || $0 == "\n" }).reversed().drop(while: { $0 == " " || $0 == "\n" }).reversed())
    }
}

func makeTempDir() throws -> String {
    var template = Array("/tmp/xenvfb-e2e-out-XXXXXX".utf8CString)
    guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else { throw TestFailure("mkdtemp failed") }
    return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func removeTree(_ dir: String) {
    if let d = opendir(dir) {
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            unlink(dir + "/" + name)
        }
        closedir(d)
    }
    rmdir(dir)
}
