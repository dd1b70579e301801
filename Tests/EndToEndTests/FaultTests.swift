#if canImport(Glibc)
import Glibc
#endif
import GuestKit
import Testing

/// Faults around the device model (faults.py): the xenstore connection
/// lost, VNC clients killed mid-frame or never reading, QMP garbage and
/// endless lines, SIGHUP during the handshake. Nothing may crash, hang, spin
/// or grow without bound; each scenario prints a "faults:" line of numbers.
@Suite struct FaultTests {
    @Test(arguments: ["vnc_killed_mid_frame", "vnc_client_never_reads", "qmp_garbage", "sighup_during_handshake", "xenstore_lost",
                     "least_privilege"])
    func deviceModelSurvives(_ scenario: String) throws {
        let python = repoRoot + "/.build-tools/venv/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) missing: run scripts/test-tools.sh")
        let m = try XenstoreMachine(domid: 7)
        defer { m.stop() }
        try m.dom0.write("/local/domain/7/name", "simguest")
        try Toolstack.addFramebuffer(store: m.dom0, domid: 7)
        let (status, output) = try runToCompletion([
            "/usr/bin/timeout", "260", python, repoRoot + "/Tests/EndToEndTests/faults.py",
            scenario, try xenvfbPath(), m.dir, m.dom0Socket, m.guestSocket, "7",
        ])
        #expect(status == 0, "\(scenario): exit \(status)\n\(output)")
        if let line = output.split(separator: "\n").last(where: { $0.hasPrefix("faults:") }) { print(line) }
    }
}
