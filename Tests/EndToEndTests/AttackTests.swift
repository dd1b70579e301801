#if canImport(Glibc)
import Glibc
#endif
import GuestKit
import Testing

/// Nobody can hold the device model (attack.py): with stalling and
/// never-reading VNC clients, a guest drawing noise into a PNG display and
/// storming RESIZE, QMP still answers fast, a well-behaved VNC client gets
/// (almost) every update, and a key typed through it reaches the guest.
/// Here on the debug build, beside the other tests: QMP's p99 under 1 s, a
/// key each round and updates flowing; .ci/run runs it again on the release
/// build with the goals (p99 50 ms, 90 % of the updates; scripts/attack.sh).
@Suite struct AttackTests {
    @Test func theDeviceModelStaysResponsiveUnderAttack() throws {
        let python = repoRoot + "/.build-tools/venv/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) missing: run scripts/test-tools.sh")
        let m = try XenstoreMachine(domid: 8)
        defer { m.stop() }
        try m.dom0.write("/local/domain/8/name", "simguest")
        try Toolstack.addFramebuffer(store: m.dom0, domid: 8)
        let (status, output) = try runToCompletion([
            "/usr/bin/env", "ATTACK_LOOSE=1", "/usr/bin/timeout", "200", python, repoRoot + "/Tests/EndToEndTests/attack.py",
            try xenvfbPath(), m.dir, m.dom0Socket, m.guestSocket, "8", "6", "1000",
        ])
        #expect(status == 0, "exit \(status)\n\(output)")
        if let line = output.split(separator: "\n").last(where: { $0.hasPrefix("attack:") }) { print(line) }
    }
}
