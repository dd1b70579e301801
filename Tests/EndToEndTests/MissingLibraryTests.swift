#if canImport(Glibc)
import Glibc
#endif
import GuestKit
import Testing

/// xenvfb as libxl starts it, on a dom0 where the library a display needs
/// (loaded with dlopen, so no package tool sees it) cannot be loaded: it must
/// say which Debian package to install and which option needed it, and exit
/// with status 1 before it writes device-model/<domid>/state = running, so
/// `xl create` fails at once instead of starting a guest without its display.
/// The library is hidden by bind-mounting /dev/null over it in a mount
/// namespace of the device model's own (unshare; as root, or in a user
/// namespace).
@Suite struct MissingLibraryTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let display: [String], soname: String, package: String, option: String
        var testDescription: String { option }
    }

    @Test(arguments: [
        Case(display: ["-display", "sdl"], soname: "libSDL2-2.0.so.0", package: "libsdl2-2.0-0", option: "-display sdl"),
        Case(display: ["-object", "tls-creds-x509,id=tls0,dir=/nonexistent,endpoint=server", "-vnc", "127.0.0.1:0,tls-creds=tls0"],
             soname: "libgnutls.so.30", package: "libgnutls30", option: "-vnc ...,tls-creds=ID"),
    ])
    func deviceModelWithoutItsDisplayLibraryExitsBeforeLibxlSeesItRunning(_ c: Case) throws {
        let domid: UInt32 = 9
        let m = try XenstoreMachine(domid: domid)
        defer { m.stop() }
        try m.dom0.write("/local/domain/\(domid)/name", "nolib")
        try Toolstack.addFramebuffer(store: m.dom0, domid: domid)
        // Hide the library (its real file, through ldconfig's cache), then run xenvfb.
        let script = """
            lib=$(/sbin/ldconfig -p | awk -v s="$1" '$1 == s { print $NF; exit }')
            [ -n "$lib" ] || { echo "test: $1 is not installed here"; exit 100; }
            mount --bind /dev/null "$lib" || exit 101
            shift
            exec "$@"
            """
        let unshare = ["/usr/bin/unshare"] + (geteuid() == 0 ? [] : ["--map-root-user"]) + ["--mount"]
        let (status, output) = try runToCompletion(unshare + [
            "/bin/sh", "-c", script, "sh", c.soname,
            "/usr/bin/env", "XENSTORED_PATH=\(m.dom0Socket)",
            try xenvfbPath(), "--domid", "\(domid)", "--name", "nolib", "--sim-host", m.dir,
         ] + c.display)
        try #require(status != 100 && status != 101, "could not hide \(c.soname): \(output)")
        #expect(status == 1, "exit \(status)\n\(output)")
        #expect(output.contains("needs \(c.soname) from the Debian package \(c.package)"), "\(output)")
        #expect(output.contains("(\(c.option)"), "the error names the option: \(output)")
        // Nothing for libxl: no state, no backends registered, the devices untouched.
        #expect(try m.dom0.read("/local/domain/0/device-model/\(domid)/state") == nil)
        #expect(try m.dom0.read("/local/domain/0/device-model/\(domid)/backends") == nil)
        #expect(try m.dom0.read("/local/domain/0/backend/vfb/\(domid)/0/state") == "1")
    }
}
