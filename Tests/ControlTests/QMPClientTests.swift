import Testing
import Glibc

/// The QMP monitor of the real `xenvfb` binary, driven by QEMU's own Python
/// client (qemu.qmp, installed by scripts/test-tools.sh into
/// .build-tools/venv) and by raw sockets speaking like libxl. Each scenario
/// is a function in qmp_client.py that starts its own xenvfb.
@Suite struct QMPClientTests {
    @Test(arguments: ["greeting", "queries", "paused", "errors", "two-clients", "garbage", "quit", "signals",
                      "fd-passing", "stale-socket", "privileges"])
    func qmpScenarioHoldsAgainstTheRealBinary(_ scenario: String) throws {
        let root = packageRoot()
        let python = root + "/.build-tools/venv/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) missing: run scripts/test-tools.sh")
        let binary = try #require(xenvfbBinary(), "the xenvfb binary was not built next to the tests")
        let script = root + "/Tests/ControlTests/qmp_client.py"
        let (status, output) = try run(["/usr/bin/timeout", "90", python, script, scenario, binary])
        #expect(status == 0, "\(scenario): exit \(status)\n\(output)")
    }
}

/// The repository root, from this file's path.
func packageRoot(_ file: String = #filePath) -> String {
    var parts = file.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3) // Tests/ControlTests/<file>
    return parts.joined(separator: "/")
}

/// `xenvfb` in the build directory the test bundle runs from.
func xenvfbBinary() -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    let exe = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var dir = exe.split(separator: "/", omittingEmptySubsequences: false)
    // .../debug/xenvfbPackageTests.xctest (a file on Linux)
    dir.removeLast()
    let candidate = dir.joined(separator: "/") + "/xenvfb"
    return access(candidate, X_OK) == 0 ? candidate : nil
}

struct SpawnError: Error, CustomStringConvertible {
    let description: String
}

/// Runs `argv` to completion; returns its exit status (or 128 + signal) and
/// everything it wrote to stdout and stderr.
func run(_ argv: [String]) throws -> (Int32, String) {
    var template = Array("/tmp/xenvfb-ctl-out-XXXXXX".utf8CString)
    let outFD = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard outFD >= 0 else { throw SpawnError(description: "mkstemp failed") }
    let outPath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    defer { close(outFD); unlink(outPath) }

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outFD, 1)
    posix_spawn_file_actions_adddup2(&actions, outFD, 2)

    var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
    cArgs.append(nil)
    defer { for p in cArgs { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
    guard rc == 0 else { throw SpawnError(description: "posix_spawn \(argv[0]): \(String(cString: strerror(rc)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { throw SpawnError(description: "waitpid failed") }
    }
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    lseek(outFD, 0, SEEK_SET)
    while true {
        let n = read(outFD, &chunk, chunk.count)
        if n <= 0 { break }
        output.append(contentsOf: chunk[..<n])
    }
    let exited = status & 0x7F == 0
    let code = exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return (code, String(decoding: output, as: UTF8.self))
}
