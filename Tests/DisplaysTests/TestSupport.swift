import Glibc
import CShims
import Damage
import EventLoop
import XenStore
import Console
@testable import Displays

/// Helpers shared by the display tests: temp dirs, synthetic frames, and
/// running the real clients (vncdo, gvnccapture, Xvfb, ImageMagick, Python).

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The package root, from this file's path (Tests/DisplaysTests/…).
let packageRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

/// The venv that scripts/test-tools.sh fills (vncdotool, Pillow).
let venvBin = packageRoot + "/.build-tools/venv/bin"

func makeTempDir(_ tag: String = "disp") throws -> String {
    var template = Array("/tmp/xenvfb-\(tag)-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
    return String(cString: p)
}

func removeTree(_ path: String) {
    _ = run(["/bin/rm", "-rf", path])
}

func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }

func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        out.append(contentsOf: buf[0..<n])
    }
    return out
}

/// Fills `rect` of the frame with a pattern that differs in every channel and
/// sets the padding byte to garbage, which every display must ignore.
func paint(_ frame: Frame, _ rect: Rect, seed: UInt32) {
    for y in rect.y..<rect.maxY {
        for x in rect.x..<rect.maxX {
            let r = UInt32(truncatingIfNeeded: x &* 7 &+ Int(seed)) & 0xff
            let g = UInt32(truncatingIfNeeded: y &* 5 &+ Int(seed) &* 3) & 0xff
            let b = UInt32(truncatingIfNeeded: (x ^ y) &+ Int(seed) &* 11) & 0xff
            frame.pixels.storeBytes(of: 0xA5 << 24 | r << 16 | g << 8 | b, toByteOffset: y * frame.stride + x * 4, as: UInt32.self)
        }
    }
}

func fill(_ frame: Frame, _ rect: Rect, rgb: UInt32) {
    for y in rect.y..<rect.maxY {
        for x in rect.x..<rect.maxX {
            frame.pixels.storeBytes(of: rgb, toByteOffset: y * frame.stride + x * 4, as: UInt32.self)
        }
    }
}

/// The frame as packed RGB bytes (what a decoded capture must equal).
func rgbBytes(_ frame: Frame) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(frame.width * frame.height * 3)
    for y in 0..<frame.height {
        for x in 0..<frame.width {
            let p = frame.pixel(x: x, y: y)
            out.append(UInt8(truncatingIfNeeded: p >> 16))
            out.append(UInt8(truncatingIfNeeded: p >> 8))
            out.append(UInt8(truncatingIfNeeded: p))
        }
    }
    return out
}

/// Where decoded images differ, for a readable failure message.
func firstDifference(_ a: [UInt8], _ b: [UInt8], width: Int) -> String? {
    if a.count != b.count { return "sizes differ: \(a.count) vs \(b.count) bytes" }
    var count = 0
    var first: Int?
    for i in 0..<a.count where a[i] != b[i] {
        count += 1
        if first == nil { first = i }
    }
    guard let first else { return nil }
    let px = first / 3
    return "\(count) bytes differ; first at pixel (\(px % width), \(px / width)): \(a[px * 3..<px * 3 + 3]) vs \(b[px * 3..<px * 3 + 3])"
}

struct ProcessResult {
    var status: Int32
    var output: String
}

/// Runs a program to completion with its stdout and stderr captured.
@discardableResult
func run(_ argv: [String], environment: [String: String] = [:], timeoutSeconds: Int = 60) -> ProcessResult {
    guard let child = try? Child(argv, environment: environment, captureOutput: true) else {
        return ProcessResult(status: -1, output: "cannot spawn \(argv[0])")
    }
    return child.wait(timeoutSeconds: timeoutSeconds)
}

/// The process environment, copied once while XenStore tests (in the same
/// process) are not borrowing XENSTORED_PATH with setenv.
let baseEnvironment: [String: String] = XenStore.withEnvironmentLock {
    var env: [String: String] = [:]
    var e = environ
    while let p = e.pointee {
        let s = String(cString: p)
        if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        e += 1
    }
    env.removeValue(forKey: "XENSTORED_PATH")
    return env
}

/// A spawned process (for servers such as Xvfb, or clients that run while the
/// test drives its own loop).
final class Child {
    let pid: pid_t
    private var outputFD: Int32 = -1
    private var output: [UInt8] = []
    private var exitStatus: Int32?

    init(_ argv: [String], environment: [String: String] = [:], captureOutput: Bool) throws {
        var env = baseEnvironment
        for (k, v) in environment { env[k] = v }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var fds: [Int32] = [-1, -1]
        if captureOutput {
            guard pipe(&fds) == 0 else { throw TestFailure("pipe") }
            _ = cshims_set_cloexec(fds[0]); _ = cshims_set_cloexec(fds[1])
            posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
            posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, cArgs, cEnv)
        if captureOutput { close(fds[1]) }
        guard rc == 0 else {
            if captureOutput { close(fds[0]) }
            throw TestFailure("cannot spawn \(argv[0]): \(String(cString: strerror(rc)))")
        }
        self.pid = pid
        if captureOutput {
            outputFD = fds[0]
            _ = cshims_set_nonblocking(outputFD)
        }
    }

    deinit {
        if exitStatus == nil { kill(pid, SIGKILL); _ = wait(timeoutSeconds: 5) }
        if outputFD >= 0 { close(outputFD) }
    }

    private func drain() {
        guard outputFD >= 0 else { return }
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buf.withUnsafeMutableBytes { read(outputFD, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            output.append(contentsOf: buf[0..<n])
        }
    }

    /// Non-blocking: the exit status if the child has exited.
    func poll() -> Int32? {
        drain()
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            drain()
            exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        return exitStatus
    }

    var outputText: String { drain(); return String(decoding: output, as: UTF8.self) }

    /// Waits (polling every 10 ms) and kills the child after the timeout.
    func wait(timeoutSeconds: Int) -> ProcessResult {
        let deadline = EventLoop.now() + UInt64(timeoutSeconds) * 1_000_000_000
        while poll() == nil {
            if EventLoop.now() > deadline {
                kill(pid, SIGKILL)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
                exitStatus = -9
                break
            }
            usleep(10_000)
        }
        return ProcessResult(status: exitStatus ?? -1, output: outputText)
    }

    func terminate() {
        if poll() == nil { kill(pid, SIGTERM) }
        _ = wait(timeoutSeconds: 5)
    }
}

/// Runs `loop` on the calling thread until `condition` holds or `seconds`
/// pass; returns whether the condition held.
@discardableResult
func spin(_ loop: EventLoop, seconds: Double = 10, until condition: () -> Bool) -> Bool {
    let deadline = EventLoop.now() + UInt64(seconds * 1e9)
    while !condition() {
        if EventLoop.now() > deadline { return false }
        loop.runOnce(timeoutMilliseconds: 10)
    }
    return true
}

/// Decodes an image with Pillow (a decoder the project did not write) into
/// packed RGB, plus its size.
func decodeWithPillow(_ path: String) throws -> (width: Int, height: Int, rgb: [UInt8]) {
    let python = venvBin + "/python"
    guard fileExists(python) else { throw TestFailure("\(python) missing: run scripts/test-tools.sh") }
    let out = path + ".rgb"
    let script = """
    import sys
    from PIL import Image
    im = Image.open(sys.argv[1]); im.load()
    open(sys.argv[2], 'wb').write(im.convert('RGB').tobytes())
    print(im.format, im.mode, im.size[0], im.size[1])
    """
    let r = run([python, "-c", script, path, out])
    guard r.status == 0 else { throw TestFailure("Pillow could not decode \(path): \(r.output)") }
    let fields = r.output.split(whereSeparator: { $0 == " " || $0 == "\n" })
    guard fields.count >= 4, let w = Int(fields[2]), let h = Int(fields[3]), let rgb = readFile(out) else {
        throw TestFailure("unexpected Pillow output: \(r.output)")
    }
    unlink(out)
    return (w, h, rgb)
}

/// The names in a directory (without . and ..).
func listDirectory(_ path: String) throws -> [String] {
    guard let dir = opendir(path) else { throw TestFailure("cannot open \(path)") }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
