#if canImport(Glibc)
import Glibc
#endif
import GuestKit
import Testing

/// Real VNC clients at their default settings (noVNC in headless Chromium,
/// TigerVNC under Xvfb, gtk-vnc's gvnccapture) against the device model over
/// SimHost, plain, over WebSocket and over TLS (VeNCrypt, wss): clients.py
/// compares every picture with the guest's framebuffer pixel for pixel, types,
/// clicks and resizes the guest. The Debian packages come from
/// `scripts/deps.sh test`. One at a time (.serialized): a browser and an X
/// server each are heavy on a small CI machine. `XENVFB_CLIENT_SCENARIOS=a,b`
/// runs only those scenarios (the others pass without running).
@Suite(.serialized) struct ClientMatrixTests {
    @Test(arguments: ["novnc_ws", "novnc_wss", "novnc_wss_without_ca", "tigervnc", "tigervnc_x509none", "tigervnc_x509vnc",
                      "tigervnc_lowcolour", "tigervnc_format_switch", "gvnc", "gvnc_x509none", "tls_verify_peer"])
    func realClientSeesExactlyTheGuestsPicture(_ scenario: String) throws {
        try run(scenario)
    }

    /// openQA's os-autoinst with its generalhw backend runs a job against
    /// xenvfb (needles, a click, typed text, a resize). Optional: Debian's
    /// os-autoinst pulls in ~270 packages (Tesseract, QEMU); install them with
    /// `scripts/deps.sh openqa`, then
    /// `XENVFB_OPENQA=1 swift test --skip-build --filter ClientMatrixTests`.
    @Test(.enabled(if: getenv("XENVFB_OPENQA") != nil, "set XENVFB_OPENQA=1 (after scripts/deps.sh openqa)"))
    func openQAJobPassesWithPixelExactScreenshots() throws {
        try run("openqa_generalhw")
    }

    private func run(_ scenario: String) throws {
        if let only = getenv("XENVFB_CLIENT_SCENARIOS").map({ String(cString: $0) }),
           !only.split(separator: ",").contains(Substring(scenario)) { return }
        let python = repoRoot + "/.build-tools/venv/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) missing: run scripts/test-tools.sh")
        let m = try XenstoreMachine(domid: 7)
        defer { m.stop() }
        try m.dom0.write("/local/domain/7/name", "simguest")
        try Toolstack.addFramebuffer(store: m.dom0, domid: 7)
        let (status, output) = try runToCompletion([
            "/usr/bin/timeout", "300", python, repoRoot + "/Tests/EndToEndTests/clients.py",
            scenario, try xenvfbPath(), m.dir, m.dom0Socket, m.guestSocket, "7",
        ])
        #expect(status == 0, "\(scenario): exit \(status)\n\(output)")
        // What the client asked for (the README's table), in the test log.
        for line in output.split(separator: "\n") where line.hasPrefix("observed:") { print(line) }
    }
}
