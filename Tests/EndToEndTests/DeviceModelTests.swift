#if canImport(Glibc)
import Glibc
#endif
import GuestKit
import Testing

/// The device model as libxl runs it (`xenvfb --domid N ...`), over SimHost:
/// this test provides the simulated machine, the embedded xenstored and the
/// toolstack's device entries; device_model.py then starts the device model
/// and a guest process (`xenvfb-testtool sim-guest`) and drives them with clients
/// this project did not write (xenstore-* tools, qemu.qmp, vncdo, Pillow).
/// The `vdispl` scenario adds a vdispl device (one 320×200 connector) once
/// the device model runs, as libxl does; `vdispl_only` has no vfb at all and
/// a model started by name before the guest exists.
@Suite struct DeviceModelTests {
    @Test(arguments: ["lifecycle", "qmp", "vnc", "vnc_password", "screenshot", "burst", "paced", "paced_vnc_option", "vdispl", "vdispl_only",
                      "keymap_unknown", "keymap_en_us", "keymap_en_gb", "keymap_de", "keymap_fr", "keymap_sv", "keymap_ja"])
    func deviceModelScenarioHoldsOverSimHost(_ scenario: String) throws {
        let python = repoRoot + "/.build-tools/venv/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) missing: run scripts/test-tools.sh")
        let m = try XenstoreMachine(domid: 7)
        defer { m.stop() }
        try m.dom0.write("/local/domain/7/name", "simguest")
        if scenario != "vdispl_only" { try Toolstack.addFramebuffer(store: m.dom0, domid: 7) }
        let (status, output) = try runToCompletion([
            "/usr/bin/timeout", "170", python, repoRoot + "/Tests/EndToEndTests/device_model.py",
            scenario, try xenvfbPath(), m.dir, m.dom0Socket, m.guestSocket, "7",
        ])
        #expect(status == 0, "\(scenario): exit \(status)\n\(output)")
    }
}

/// Runs `argv` to completion; returns its exit status and its output (stdout and stderr).
func runToCompletion(_ argv: [String]) throws -> (Int32, String) {
    var template = Array("/tmp/xenvfb-e2e-log-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard fd >= 0 else { throw TestFailure("mkstemp failed") }
    let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    defer { close(fd); unlink(path) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, fd, 1)
    posix_spawn_file_actions_adddup2(&actions, fd, 2)
    let args: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { args.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, args, environ)
    guard rc == 0 else { throw TestFailure("posix_spawn \(argv[0]): errno \(rc)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    var text: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    lseek(fd, 0, SEEK_SET)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        text += chunk[..<n]
    }
    let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return (code, String(decoding: text.suffix(20000), as: UTF8.self))
}
