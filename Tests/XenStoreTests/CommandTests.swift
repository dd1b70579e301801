import Glibc
import Testing
@testable import XenStore

/// `xenvfb xenstored` as a process, driven by Debian's tools.
@Suite struct CommandTests {
    @Test(arguments: [SIGTERM, SIGINT, SIGHUP])
    func servesUntilASignalThenRemovesItsSocketsAndExitsZero(signal: Int32) throws {
        let dir = try makeTempDir()
        defer { removeTree(dir) }
        let sock = dir + "/socket", guestSock = dir + "/dom5"
        let server = try Child(try xenvfbPath(), ["xenstored", "--socket", sock, "--domain-socket", "5:" + guestSock], env: [:])
        #expect(waitForSocket(sock) && waitForSocket(guestSock))
        var r = try runTool("xenstore-write", ["/local/domain/5/name", "five"], env: ["XENSTORED_PATH": sock])
        #expect(r.status == 0, "\(r)")
        r = try runTool("xenstore-chmod", ["/local/domain/5/name", "r5"], env: ["XENSTORED_PATH": sock])
        #expect(r.status == 0, "\(r)")
        r = try runTool("xenstore-read", ["name"], env: ["XENSTORED_PATH": guestSock])
        #expect(r.stdout == "five\n", "\(r)")
        kill(server.pid, signal)
        let result = server.wait()
        #expect(result.status == 0, "\(result)")
        #expect(access(sock, F_OK) != 0 && access(guestSock, F_OK) != 0, "sockets removed")
    }

    @Test func anOversizedMessageCostsItsConnectionWithOneLogLine() throws {
        let dir = try makeTempDir()
        defer { removeTree(dir) }
        let sock = dir + "/socket"
        let server = try Child(try xenvfbPath(), ["xenstored", "--socket", sock], env: ["XENVFB_LOG": "info"])
        #expect(waitForSocket(sock))
        let good = try RawClient(path: sock)
        let bad = try RawClient(path: sock)
        var header = XSMessage(type: XSMessageType.read.rawValue, reqID: 1, txID: 0, payload: []).encoded()
        header.replaceSubrange(12..<16, with: [0x00, 0x00, 0x01, 0x00])   // 65536 bytes
        _ = bad.sendRaw(header)
        #expect(bad.isClosed())
        #expect(RawClient.text(good.request(.write, ["/still"], value: Array("fine".utf8))) == "OK")
        #expect(RawClient.text(good.request(.read, ["/still"])) == "fine")
        kill(server.pid, SIGTERM)
        let result = server.wait()
        #expect(result.status == 0, "\(result)")
        let lines = result.stderr.split(separator: "\n").filter { $0.contains("closing connection") }
        #expect(lines.count == 1, "\(result.stderr)")
        #expect(lines.first?.contains("65536") == true && lines.first?.contains("4096") == true, "\(result.stderr)")
    }

    @Test func badArgumentsExitTwoWithAMessage() throws {
        let bin = try xenvfbPath()
        for args in [["xenstored"], ["xenstored", "--socket"], ["xenstored", "--socket", "/tmp/x", "--domain-socket", "five:/tmp/y"],
                     ["xenstored", "--bogus"]] {
            let r = try runTool(bin, args, env: [:])
            #expect(r.status == 2, "\(args): \(r)")
            #expect(!r.stderr.isEmpty, "\(args): \(r)")
        }
        let help = try runTool(bin, ["xenstored", "--help"], env: [:])
        #expect(help.status == 0 && help.stdout.contains("--domain-socket DOMID:PATH"), "\(help)")
    }

    /// Restricting the Xen handles closes libxenstore's connection, which
    /// the backends need as long as the guest runs: the device model says so
    /// and exits 1 before it opens anything (with the arguments libxl passes
    /// for dm_restrict=1), rather than failing later on EBADF.
    @Test func theDeviceModelRefusesXenDomidRestrictAndSaysWhy() throws {
        let r = try runTool(try xenvfbPath(), ["-xen-domid", "7", "-no-shutdown", "-nodefaults", "-no-user-config", "-xen-attach",
                                               "-name", "g", "-vnc", "none", "-display", "none", "-nographic",
                                               "-xen-domid-restrict", "-chroot", "/nonexistent", "-machine", "xenpv", "-m", "256"],
                            env: ["XENSTORED_PATH": "/nonexistent/socket"])
        #expect(r.status == 1, "\(r)")
        #expect(r.stderr.contains("-xen-domid-restrict (libxl's dm_restrict=1) is not supported"), "\(r)")
        #expect(r.stderr.contains("Remove dm_restrict=1"), "\(r)")
    }
}
