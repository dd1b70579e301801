#if canImport(Glibc)
import Glibc
#endif
import GuestKit
import Testing

/// Random guest writes converge on every display (convergence.py): VNC
/// through vncdo, the PNG display, QMP screendump, each byte-identical to
/// the guest's framebuffer once the guest stops and a tick passes.
/// XENVFB_CONVERGENCE_TRIALS sets the number of trials (default 20).
@Suite struct ConvergenceTests {
    @Test func randomGuestWritesConvergeOnEveryDisplay() throws {
        let python = repoRoot + "/.build-tools/venv/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) missing: run scripts/test-tools.sh")
        let trials = getenv("XENVFB_CONVERGENCE_TRIALS").flatMap { Int(String(cString: $0)) } ?? 20
        let m = try XenstoreMachine(domid: 7)
        defer { m.stop() }
        try m.dom0.write("/local/domain/7/name", "simguest")
        try Toolstack.addFramebuffer(store: m.dom0, domid: 7)
        let (status, output) = try runToCompletion([
            "/usr/bin/timeout", "700", python, repoRoot + "/Tests/EndToEndTests/convergence.py",
            String(trials), try xenvfbPath(), m.dir, m.dom0Socket, m.guestSocket, "7",
        ])
        #expect(status == 0, "exit \(status)\n\(output)")
        if let line = output.split(separator: "\n").last(where: { $0.hasPrefix("convergence:") }) { print(line) }
    }
}
