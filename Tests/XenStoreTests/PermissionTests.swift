import Glibc
import Testing
@testable import XenStore

/// Permissions as Xen's xenstored enforces them, seen by guests through
/// their domain sockets (Debian's tools) and by raw connections (exact errors).
@Suite struct PermissionTests {
    /// The layout libxl makes: /local/domain/N readable by N, N's data owned by N.
    private func makeGuestHomes(_ fx: XenstoreFixture) throws {
        for d in ["5", "6"] {
            #expect(try fx.tool("xenstore-write", ["/local/domain/\(d)/name", "guest\(d)"]).status == 0)
            #expect(try fx.tool("xenstore-chmod", ["-r", "/local/domain/\(d)", "n0", "r\(d)"]).status == 0)
            #expect(try fx.tool("xenstore-write", ["/local/domain/\(d)/data/seed", "s"]).status == 0)
            #expect(try fx.tool("xenstore-chmod", ["-r", "/local/domain/\(d)/data", "n\(d)"]).status == 0)
        }
        #expect(try fx.tool("xenstore-write", ["/local/domain/6/secret", "hidden"]).status == 0)
        #expect(try fx.tool("xenstore-chmod", ["/local/domain/6/secret", "n0"]).status == 0)
    }

    @Test func guestReadsOnlyWhatItMayThroughDebianTools() throws {
        let fx = try XenstoreFixture(domains: [5, 6])
        defer { fx.stop() }
        try makeGuestHomes(fx)
        var r = try fx.tool("xenstore-read", ["/local/domain/5/name"], as: 5)
        #expect(r.status == 0 && r.stdout == "guest5\n", "\(r)")
        // Relative paths resolve to the guest's home.
        r = try fx.tool("xenstore-read", ["name"], as: 5)
        #expect(r.status == 0 && r.stdout == "guest5\n", "\(r)")
        r = try fx.tool("xenstore-read", ["/local/domain/6/name"], as: 5)
        #expect(r.status != 0, "\(r)")
        r = try fx.tool("xenstore-read", ["/local/domain/6/secret"], as: 6)
        #expect(r.status != 0, "\(r)")
        r = try fx.tool("xenstore-ls", ["/local/domain/6"], as: 5)
        #expect(r.status != 0, "\(r)")
        r = try fx.tool("xenstore-read", ["/local/domain/6/secret"])
        #expect(r.stdout == "hidden\n", "dom0 reads everything: \(r)")
    }

    @Test func guestWritesOnlyWhereItMayAndOwnsWhatItCreates() throws {
        let fx = try XenstoreFixture(domains: [5, 6])
        defer { fx.stop() }
        try makeGuestHomes(fx)
        var r = try fx.tool("xenstore-write", ["data/new/deep", "v"], as: 5)
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-ls", ["-p", "/local/domain/5/data"])
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("new = \"\"") && $0.hasSuffix("(n5)") }, "\(r)")
        #expect(lines.contains { $0.hasPrefix(" deep = \"v\"") && $0.hasSuffix("(n5)") }, "\(r)")
        r = try fx.tool("xenstore-write", ["name", "renamed"], as: 5)
        #expect(r.status != 0, "read-only for the guest: \(r)")
        r = try fx.tool("xenstore-write", ["/local/domain/6/data/x", "v"], as: 5)
        #expect(r.status != 0, "\(r)")
        r = try fx.tool("xenstore-write", ["/toplevel", "v"], as: 5)
        #expect(r.status != 0, "\(r)")
        r = try fx.tool("xenstore-rm", ["/local/domain/6/data/seed"], as: 5)
        #expect(r.status != 0, "\(r)")
        r = try fx.tool("xenstore-read", ["/local/domain/6/data/seed"])
        #expect(r.stdout == "s\n", "still there: \(r)")
        r = try fx.tool("xenstore-read", ["/local/domain/5/name"])
        #expect(r.stdout == "guest5\n", "unchanged: \(r)")
        // dom0 grants write on one node: now the guest may.
        #expect(try fx.tool("xenstore-chmod", ["/local/domain/6/data/seed", "n6", "b5"]).status == 0)
        r = try fx.tool("xenstore-write", ["/local/domain/6/data/seed", "t"], as: 5)
        #expect(r.status == 0, "\(r)")
    }

    @Test func errorsRevealNothingAGuestMayNotRead() throws {
        let fx = try XenstoreFixture(domains: [5, 6])
        defer { fx.stop() }
        try makeGuestHomes(fx)
        let guest = RawClient(fd: try fx.server.connect(asDomain: 5))
        func text(_ t: XSMessageType, _ s: [String], _ v: [UInt8]? = nil) -> String { RawClient.text(guest.request(t, s, value: v)) }
        #expect(text(.read, ["/local/domain/5/name"]) == "guest5")
        #expect(text(.read, ["/local/domain/5/missing"]) == "error ENOENT")
        #expect(text(.read, ["/local/domain/6/secret"]) == "error EACCES")
        // A missing node under a node the guest may not read: EACCES, not ENOENT.
        #expect(text(.read, ["/local/domain/6/data/none"]) == "error EACCES")
        #expect(text(.write, ["/local/domain/5/name"], Array("x".utf8)) == "error EACCES")
        #expect(text(.write, ["data/mine"], Array("x".utf8)) == "OK")
        #expect(text(.getPerms, ["data/mine"]) == "n5")
        // The owner may change its node's permissions but not give it away.
        #expect(text(.setPerms, ["data/mine", "n5", "r6"]) == "OK")
        #expect(text(.getPerms, ["data/mine"]) == "n5\0r6")
        #expect(text(.setPerms, ["data/mine", "n6"]) == "error EPERM")
        #expect(text(.setPerms, ["name", "n5"]) == "error EACCES")
        // Privileged operations.
        #expect(text(.introduce, ["7", "0", "0"]) == "error EACCES")
        #expect(text(.isDomainIntroduced, ["0"]) == "error EACCES")
        // Malformed requests.
        #expect(text(.setPerms, ["data/mine", "x5"]) == "error EINVAL")
        #expect(text(.read, ["/local//domain"]) == "error EINVAL")
        #expect(text(.read, [String(repeating: "a", count: XSLimits.relPathMax + 1)]) == "error EINVAL")
        #expect(text(.read, ["/" + String(repeating: "a", count: XSLimits.absPathMax)]) == "error EINVAL")
        #expect(text(.getDomainPath, ["5"]) == "/local/domain/5")
    }

    @Test func defaultEntryAndExplicitEntriesFollowXenRules() {
        let perms = [XSPermission(domid: 3, .read), XSPermission(domid: 5, .none), XSPermission(domid: 6, .both)]
        #expect(XSCaller(domid: 0).access(perms).isSuperset(of: [.read, .write, .owner]))
        #expect(XSCaller(domid: 3).access(perms).isSuperset(of: [.read, .write, .owner]), "owner")
        #expect(XSCaller(domid: 5).access(perms) == .none)
        #expect(XSCaller(domid: 6).access(perms) == .both)
        #expect(XSCaller(domid: 9).access(perms) == .read, "default entry")
        #expect(XSCaller(domid: 9, target: 6).access(perms) == .both, "acting for its target")
    }

    @Test func pathRulesMatchXenstored() {
        #expect(XSPath.isValid("/"))
        #expect(XSPath.isValid("/a-b/c_d/@e/0"))
        #expect(!XSPath.isValid("a"))
        #expect(!XSPath.isValid("/a/"))
        #expect(!XSPath.isValid("//a"))
        #expect(!XSPath.isValid("/a.b"))
        #expect(XSPath.canonicalize("device/vfb", domid: 7) == "/local/domain/7/device/vfb")
        #expect(XSPath.canonicalize("@releaseDomain", domid: 7) == "@releaseDomain")
        let rel = String(repeating: "x", count: XSLimits.relPathMax)
        #expect(XSPath.isValid("/local/domain/7/" + rel, privileged: false))
        #expect(!XSPath.isValid("/local/domain/7/" + rel + "x", privileged: false))
        #expect(XSPath.isValid("/local/domain/7/" + rel + "x", privileged: true))
        #expect(XSPath.isChild("/a/b", of: "/a") && !XSPath.isChild("/ab", of: "/a") && XSPath.isChild("/a", of: "/"))
    }
}
