import Glibc
import Testing
@testable import XenStore

/// The same requests sent to the embedded xenstored and to Debian's C
/// xenstored 4.17 (run without Xen through scripts/xenstored-shim.c); every
/// reply and watch event must be the same. Both connections are dom0: the C
/// daemon serves its socket only as dom0.
@Suite struct DifferentialTests {
    static let realXenstored = repoRoot + "/.build-tools/xen-utils/usr/lib/xen-4.17/bin/xenstored"
    static let shim = repoRoot + "/.build-tools/xenstored-shim.so"

    enum Tx { case none, slot(Int), raw(UInt32) }

    struct Step {
        var conn: Int
        var type: UInt32
        var payload: [UInt8]
        var tx: Tx
        var save: Int?
        var label: String
    }

    static func step(_ conn: Int, _ type: XSMessageType, _ strings: [String], value: [UInt8]? = nil, tx: Tx = .none, save: Int? = nil) -> Step {
        var payload: [UInt8] = []
        for s in strings { payload += Array(s.utf8) + [0] }
        if let value { payload += value }
        let shown = strings.map { $0.count > 40 ? "<\($0.count) chars>" : $0 }.joined(separator: " ")
        return Step(conn: conn, type: type.rawValue, payload: payload, tx: tx, save: save,
                    label: "\(conn == 0 ? "A" : "B") \(type.name) \(shown)\(value.map { " +\($0.count)B" } ?? "")")
    }

    static func raw(_ conn: Int, _ type: UInt32, _ payload: [UInt8], label: String) -> Step {
        Step(conn: conn, type: type, payload: payload, tx: .none, save: nil, label: label)
    }

    /// A script covering each request type, the error cases and watch events.
    static let script: [Step] = {
        let A = 0, B = 1
        var s: [Step] = []
        // Reads and path validation.
        s.append(step(A, .read, ["/"]))
        s.append(step(A, .directory, ["/"]))
        s.append(step(A, .read, ["/missing"]))
        s.append(step(A, .read, ["/missing/deeper"]))
        for bad in ["", "/a/", "//a", "/a//b", "/a b", "/a.b", "/" + String(repeating: "p", count: 3072)] {
            s.append(step(A, .read, [bad]))
            s.append(step(A, .write, [bad], value: [1]))
        }
        s.append(step(A, .read, ["relative"]))
        s.append(step(A, .read, ["@introduceDomain"]))
        // Writes, mkdir, directories.
        s.append(step(A, .write, ["/d/a"], value: Array("alpha".utf8)))
        s.append(step(A, .write, ["/d/bin"], value: [0, 1, 0, 2]))
        s.append(step(A, .write, ["/d/empty"], value: []))
        s.append(step(A, .write, ["relative/node"], value: Array("r".utf8)))
        s.append(step(A, .read, ["/local/domain/0/relative/node"]))
        s.append(raw(A, XSMessageType.write.rawValue, Array("/d/nonul".utf8), label: "A WRITE without NUL"))
        s.append(step(A, .read, ["/d/bin"]))
        // Not compared: a READ whose payload is not exactly one string. The C
        // daemon answers with whatever errno is left over (ENOENT here); the
        // embedded one answers EINVAL (see ProtocolTests).
        s.append(step(A, .mkdir, ["/d/a"]))
        s.append(step(A, .mkdir, ["/d/m/n/o"]))
        s.append(step(A, .read, ["/d/m/n"]))
        s.append(step(A, .directory, ["/d"]))
        s.append(step(A, .directory, ["/d/a"]))
        s.append(step(A, .directory, ["/d/none"]))
        s.append(step(A, .directoryPart, ["/d", "0"]))
        s.append(step(A, .directoryPart, ["/d", "4"]))
        s.append(step(A, .directoryPart, ["/d", "1000"]))
        s.append(step(A, .directoryPart, ["/d"]))
        s.append(step(A, .directoryPart, ["/d/none", "0"]))
        // Permissions.
        s.append(step(A, .getPerms, ["/d/a"]))
        s.append(step(A, .setPerms, ["/d/a", "n5", "r6", "w7", "b8"]))   // owner 5 does not exist
        s.append(step(A, .setPerms, ["/d/a", "r0", "r6", "w7", "b8"]))
        s.append(step(A, .getPerms, ["/d/a"]))
        s.append(step(A, .write, ["/d/a/child"], value: [1]))
        s.append(step(A, .getPerms, ["/d/a/child"]))
        s.append(step(A, .setPerms, ["/d/a", "x5"]))
        s.append(step(A, .setPerms, ["/d/a", "r"]))
        s.append(step(A, .setPerms, ["/d/a"]))
        s.append(step(A, .setPerms, ["/d/none", "n0"]))
        s.append(step(A, .getPerms, ["/d/none"]))
        // Removal.
        s.append(step(A, .rm, ["/d/none"]))
        s.append(step(A, .rm, ["/none/none"]))
        s.append(step(A, .rm, ["/"]))
        s.append(step(A, .rm, ["/d/m"]))
        s.append(step(A, .directory, ["/d"]))
        // Watches.
        s.append(step(A, .watch, ["/w", "tok"]))
        s.append(step(A, .watch, ["/w", "tok"]))
        s.append(step(A, .watch, ["/w", "tok2"]))
        s.append(step(A, .watch, ["/w/", "bad"]))
        s.append(step(A, .watch, ["/w"]))
        s.append(step(A, .watch, ["rel", "reltok"]))
        s.append(step(A, .watch, ["@introduceDomain", "intro"]))
        s.append(step(A, .watch, ["@releaseDomain", "rel"]))
        s.append(step(B, .write, ["/w/x"], value: [1]))
        s.append(step(B, .write, ["/wx"], value: [1]))
        s.append(step(B, .write, ["/local/domain/0/rel/y"], value: [1]))
        s.append(step(B, .mkdir, ["/w/x/y/z"]))
        s.append(step(B, .setPerms, ["/w/x", "r3"]))
        s.append(step(B, .setPerms, ["/w/x", "n0", "r3"]))
        s.append(step(B, .rm, ["/w"]))
        s.append(step(A, .unwatch, ["/w", "tok2"]))
        s.append(step(A, .unwatch, ["/w", "tok2"]))
        s.append(step(A, .unwatch, ["rel", "reltok"]))
        s.append(step(B, .write, ["/w/again"], value: [1]))
        s.append(step(A, .watch, ["/v/x/y", "deep"]))
        s.append(step(A, .watch, ["/v/x", "mid"]))
        s.append(step(B, .write, ["/v/x/y/z"], value: [1]))
        s.append(step(B, .write, ["/v/x/q"], value: [1]))
        s.append(step(B, .rm, ["/v"]))
        s.append(step(B, .rm, ["/v"]))
        s.append(step(A, .resetWatches, [""]))
        s.append(step(B, .write, ["/w/after-reset"], value: [1]))
        // Transactions.
        s.append(step(A, .write, ["/t/x"], value: Array("1".utf8)))
        s.append(step(A, .watch, ["/t", "tw"]))
        s.append(step(A, .transactionStart, [""], save: 1))
        s.append(step(A, .transactionStart, [""], tx: .slot(1)))
        s.append(step(A, .read, ["/t/x"], tx: .slot(1)))
        s.append(step(A, .write, ["/t/y"], value: Array("2".utf8), tx: .slot(1)))
        s.append(step(A, .directory, ["/t"], tx: .slot(1)))
        s.append(step(B, .directory, ["/t"]))
        s.append(step(A, .transactionEnd, ["T"], tx: .slot(1)))
        s.append(step(A, .read, ["/t/y"]))
        s.append(step(A, .transactionStart, [""], save: 2))
        s.append(step(A, .read, ["/t/x"], tx: .slot(2)))
        s.append(step(B, .write, ["/t/x"], value: Array("3".utf8)))
        s.append(step(A, .read, ["/t/x"], tx: .slot(2)))
        s.append(step(A, .write, ["/t/z"], value: Array("4".utf8), tx: .slot(2)))
        s.append(step(A, .transactionEnd, ["T"], tx: .slot(2)))
        s.append(step(A, .read, ["/t/z"]))
        s.append(step(A, .transactionStart, [""], save: 3))
        s.append(step(A, .rm, ["/t"], tx: .slot(3)))
        s.append(step(A, .transactionEnd, ["X"], tx: .slot(3)))
        s.append(step(A, .transactionEnd, ["F"], tx: .slot(3)))
        s.append(step(A, .read, ["/t/x"]))
        // What conflicts: a read-only transaction, a sibling created, an unrelated write.
        s.append(step(A, .transactionStart, [""], save: 4))
        s.append(step(A, .read, ["/t/x"], tx: .slot(4)))
        s.append(step(B, .write, ["/t/x"], value: Array("5".utf8)))
        s.append(step(A, .transactionEnd, ["T"], tx: .slot(4)))
        s.append(step(A, .transactionStart, [""], save: 5))
        s.append(step(A, .write, ["/t/new"], value: [1], tx: .slot(5)))
        s.append(step(B, .write, ["/t/sibling"], value: [1]))
        s.append(step(A, .transactionEnd, ["T"], tx: .slot(5)))
        s.append(step(A, .transactionStart, [""], save: 6))
        s.append(step(A, .write, ["/t/x"], value: [6], tx: .slot(6)))
        s.append(step(B, .write, ["/unrelated"], value: [1]))
        s.append(step(B, .read, ["/t/x"]))
        s.append(step(A, .transactionEnd, ["T"], tx: .slot(6)))
        s.append(step(A, .read, ["/t/x"]))
        // A node is copied into the transaction when first touched, not at its start.
        s.append(step(A, .transactionStart, [""], save: 8))
        s.append(step(B, .write, ["/t/late"], value: Array("7".utf8)))
        s.append(step(A, .read, ["/t/late"], tx: .slot(8)))
        s.append(step(A, .write, ["/t/other"], value: [8], tx: .slot(8)))
        s.append(step(A, .transactionEnd, ["T"], tx: .slot(8)))
        s.append(step(A, .transactionStart, [""], save: 7))
        s.append(step(A, .rm, ["/t/sibling"], tx: .slot(7)))
        s.append(step(A, .mkdir, ["/t/made"], tx: .slot(7)))
        s.append(step(A, .setPerms, ["/t/made", "n0", "r2"], tx: .slot(7)))
        s.append(step(A, .getPerms, ["/t/made"], tx: .slot(7)))
        s.append(step(A, .transactionEnd, ["T"], tx: .slot(7)))
        s.append(step(A, .directory, ["/t"]))
        s.append(step(A, .transactionEnd, ["T"]))
        s.append(step(A, .transactionEnd, ["T"], tx: .raw(4242)))
        s.append(step(A, .read, ["/t/x"], tx: .raw(4242)))
        s.append(step(A, .watch, ["/t2", "in-tx"], tx: .raw(4242)))
        // Domains and odd requests.
        s.append(step(A, .getDomainPath, ["5"]))
        s.append(step(A, .getDomainPath, ["abc"]))
        s.append(step(A, .getDomainPath, ["5", "6"]))
        s.append(step(A, .isDomainIntroduced, ["0"]))
        s.append(step(A, .isDomainIntroduced, ["5"]))
        s.append(step(A, .release, ["5"]))
        s.append(step(A, .resume, ["5"]))
        s.append(step(A, .watch, ["/x", "t", "extra"]))
        s.append(step(A, .watch, ["/x"]))
        s.append(step(A, .unwatch, ["/x"]))
        s.append(step(A, .unwatch, ["/x", "t", "extra"]))
        s.append(step(A, .directoryPart, ["/d", "0", "x"]))
        s.append(step(A, .introduce, ["5"]))
        s.append(step(A, .setTarget, ["5"]))
        s.append(step(A, .getPerms, ["@introduceDomain"]))
        s.append(step(A, .getPerms, ["@releaseDomain"]))
        s.append(step(A, .getPerms, ["@other"]))
        s.append(step(A, .setPerms, ["@releaseDomain", "n0", "r5"]))
        s.append(step(A, .getPerms, ["@releaseDomain"]))
        s.append(step(A, .setPerms, ["@other", "n0"]))
        s.append(step(A, .watch, ["@other", "o"]))
        s.append(step(A, .mkdir, ["/local/domain/0"]))
        s.append(step(A, .write, ["/d/" + String(repeating: "n", count: 2000)], value: [1]))
        s.append(step(A, .write, ["/d/v"], value: [UInt8](repeating: 0x76, count: 4000)))
        s.append(step(A, .read, ["/d/v"]))
        s.append(raw(A, 99, [], label: "A type 99"))
        s.append(raw(A, XSMessageType.watchEvent.rawValue, Array("/x\0t\0".utf8), label: "A WATCH_EVENT"))
        s.append(raw(A, XSMessageType.error.rawValue, Array("EINVAL\0".utf8), label: "A ERROR"))
        s.append(step(A, .read, ["/d/a"]))
        return s
    }()

    /// Runs `script` over two connections (A, B); one line per reply or event.
    static func transcript(_ conns: [XSTransport], _ script: [Step]) -> [String] {
        var slots: [Int: UInt32] = [:]
        var lines: [String] = []
        func show(_ m: XSMessage) -> String {
            let type = XSMessageType(rawValue: m.type)?.name ?? "type \(m.type)"
            var parts = m.payload.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            if m.type == XSMessageType.directoryPart.rawValue, !parts.isEmpty { parts[0] = "<gen>" }
            if m.type == XSMessageType.transactionStart.rawValue { parts = ["<txid>"] }
            return "\(type) \(parts.joined(separator: "|").debugDescription)"
        }
        // A server that stops answering ends the transcript at once: each
        // further step would wait out its timeouts (minutes in all).
        func sync(_ i: Int) -> Bool {
            let id = conns[i].send(.read, Array("/tool/xenstored\0".utf8), tx: 0, rawType: nil)
            while let m = conns[i].receive(seconds: 5) {
                if m.reqID == id && m.type != XSMessageType.watchEvent.rawValue { return true }
                lines.append("  \(i == 0 ? "A" : "B") event \(show(m))")
            }
            lines.append("  \(i == 0 ? "A" : "B") no reply to sync: stopped")
            return false
        }
        for step in script {
            let tx: UInt32
            switch step.tx {
            case .none: tx = 0
            case .slot(let n): tx = slots[n] ?? 0
            case .raw(let v): tx = v
            }
            let c = conns[step.conn]
            let id = c.send(.read, step.payload, tx: tx, rawType: step.type)
            var reply = "no reply"
            while let m = c.receive(seconds: 5) {
                if m.type == XSMessageType.watchEvent.rawValue && m.reqID == 0 {
                    lines.append("  \(step.conn == 0 ? "A" : "B") event \(show(m))")
                    continue
                }
                if m.reqID == id {
                    reply = show(m)
                    if let save = step.save, m.type == XSMessageType.transactionStart.rawValue {
                        slots[save] = UInt32(String(decoding: m.payload.prefix { $0 != 0 }, as: UTF8.self))
                    }
                    break
                }
            }
            lines.append("\(step.label) -> \(reply)")
            guard sync(0), sync(1) else { break }
        }
        return lines
    }

    /// Debian's xenstored under the shim, serving `dir`/socket.
    static func startReal(_ dir: String, _ env: [String: String] = [:], args: [String] = []) throws -> Child {
        guard access(realXenstored, X_OK) == 0, access(shim, R_OK) == 0 else {
            throw TestFailure("\(realXenstored) or \(shim) missing: run scripts/test-tools.sh")
        }
        let real = try Child(realXenstored, ["-N"] + args, env: ["XENSTORED_RUNDIR": dir, "XENSTORED_PATH": dir + "/socket",
                                                          "LD_PRELOAD": shim].merging(env) { $1 })
        var st = stat()
        let deadline = now() + 20
        while stat(dir + "/socket", &st) != 0 && now() < deadline { usleep(10_000) }
        return real
    }

    static func compare(_ expected: [String], _ got: [String], _ script: [Step]) {
        if let out = getenv("XS_DIFF_DUMP") {
            let base = String(cString: out)
            for (name, lines) in [("real", expected), ("embedded", got)] {
                let f = fopen(base + "." + name, "w")
                for l in lines { fputs(l + "\n", f) }
                fclose(f)
            }
        }
        #expect(expected.count > script.count, "the real xenstored answered: \(expected.prefix(5))")
        for i in 0..<max(expected.count, got.count) {
            let e = i < expected.count ? expected[i] : "<nothing>"
            let g = i < got.count ? got[i] : "<nothing>"
            #expect(g == e, "line \(i): embedded differs from xenstored")
            if g != e { break }   // later lines follow from the first difference
        }
    }

    @Test func embeddedXenstoredAnswersLikeDebiansXenstored() throws {
        let dir = try makeTempDir()
        defer { removeTree(dir) }
        let real = try Self.startReal(dir)
        defer { kill(real.pid, SIGKILL); _ = real.wait(seconds: 10) }
        let expected = Self.transcript([try RawClient(path: dir + "/socket"), try RawClient(path: dir + "/socket")], Self.script)

        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let got = Self.transcript([try RawClient(path: fx.socket), try RawClient(path: fx.socket)], Self.script)
        Self.compare(expected, got, Self.script)
    }

    /// Connection A is guest domain 5 (over a ring page for the real
    /// daemon, a socket for the embedded one), B is dom0.
    static let guestScript: [Step] = {
        let G = 0, D = 1
        var s: [Step] = []
        s.append(step(D, .introduce, ["5", "1234", "3"]))
        s.append(step(D, .mkdir, ["/local/domain/5"]))
        s.append(step(D, .setPerms, ["/local/domain/5", "n0", "r5"]))
        s.append(step(D, .write, ["/local/domain/5/name"], value: Array("guest".utf8)))
        s.append(step(D, .mkdir, ["/local/domain/5/data"]))
        s.append(step(D, .setPerms, ["/local/domain/5/data", "n5"]))
        s.append(step(D, .write, ["/local/domain/6/secret"], value: Array("s".utf8)))
        s.append(step(D, .setPerms, ["/local/domain/6", "n6"]))
        s.append(step(D, .setPerms, ["/local/domain/6/secret", "n6"]))
        for (name, perms) in [("ro", ["n0", "r5"]), ("rw", ["n0", "b5"]), ("wo", ["n0", "w5"]), ("none", ["n0"]), ("other", ["r6", "n5"])] {
            s.append(step(D, .write, ["/shared/" + name], value: Array(name.utf8)))
            s.append(step(D, .setPerms, ["/shared/" + name] + perms))
        }
        // Reads.
        for p in ["name", "/local/domain/5/name", "data", "/local/domain/6/secret", "/local/domain/6/missing",
                  "/local/domain/6", "/shared/ro", "/shared/rw", "/shared/wo", "/shared/none", "/shared/other",
                  "/shared/missing", "/shared/none/missing", "/", "/tool"] {
            s.append(step(G, .read, [p]))
        }
        for p in ["/local/domain", "/local/domain/5", "/shared", "/shared/rw", "data"] {
            s.append(step(G, .directory, [p]))
            s.append(step(G, .getPerms, [p]))
        }
        // Writes.
        s.append(step(G, .write, ["name"], value: [1]))
        s.append(step(G, .write, ["data/a"], value: Array("1".utf8)))
        s.append(step(G, .write, ["data/deep/er/node"], value: Array("2".utf8)))
        s.append(step(G, .getPerms, ["data/a"]))
        s.append(step(G, .getPerms, ["data/deep/er"]))
        s.append(step(G, .write, ["/shared/ro"], value: [1]))
        s.append(step(G, .write, ["/shared/rw"], value: Array("y".utf8)))
        s.append(step(G, .write, ["/shared/wo"], value: Array("z".utf8)))
        s.append(step(G, .write, ["/shared/other"], value: [1]))
        s.append(step(G, .write, ["/shared/new"], value: [1]))
        s.append(step(G, .write, ["/toplevel"], value: [1]))
        s.append(step(G, .mkdir, ["/shared/rw/child"]))
        s.append(step(G, .getPerms, ["/shared/rw/child"]))
        s.append(step(G, .mkdir, ["/shared/wo/child"]))
        s.append(step(G, .mkdir, ["/shared/ro"]))
        s.append(step(G, .rm, ["/shared/rw/child"]))
        s.append(step(G, .rm, ["/shared/ro"]))
        s.append(step(G, .rm, ["/shared/wo/child"]))
        s.append(step(G, .rm, ["/shared/none/x"]))
        s.append(step(G, .rm, ["/shared/rw/none"]))
        s.append(step(G, .write, ["data/big"], value: [UInt8](repeating: 0x62, count: 3000)))
        s.append(step(G, .write, [String(repeating: "r", count: 2049)], value: [1]))
        // Permissions.
        s.append(step(G, .setPerms, ["data/a", "n5", "r6"]))
        s.append(step(G, .getPerms, ["data/a"]))
        s.append(step(G, .setPerms, ["data/a", "n6"]))
        s.append(step(G, .setPerms, ["data/a", "n7"]))
        s.append(step(G, .setPerms, ["name", "n5"]))
        s.append(step(G, .setPerms, ["/shared/rw", "n0", "b5"]))
        // Not compared: a guest's SET_PERMS on @releaseDomain. The C daemon
        // answers EAGAIN; the embedded one EACCES (the guest does not own it).
        s.append(step(D, .read, ["/local/domain/5/data/a"]))
        // Watches.
        s.append(step(G, .watch, ["data", "w"]))
        s.append(step(G, .watch, ["/local/domain/6", "w6"]))
        s.append(step(G, .watch, ["/shared", "ws"]))
        s.append(step(G, .watch, ["@introduceDomain", "wi"]))
        s.append(step(D, .write, ["/local/domain/6/secret2"], value: [1]))
        s.append(step(D, .write, ["/shared/ro"], value: [2]))
        s.append(step(D, .write, ["/shared/none"], value: [2]))
        s.append(step(D, .write, ["/shared/wo"], value: [2]))
        s.append(step(D, .write, ["/local/domain/5/data/b"], value: [2]))
        s.append(step(D, .setPerms, ["/shared/ro", "n0"]))
        s.append(step(D, .write, ["/shared/ro"], value: [3]))
        s.append(step(D, .rm, ["/shared"]))
        s.append(step(D, .introduce, ["6", "1", "1"]))
        // Transactions and privileged requests.
        s.append(step(G, .transactionStart, [""], save: 1))
        s.append(step(G, .write, ["data/tx"], value: [1], tx: .slot(1)))
        s.append(step(G, .read, ["name"], tx: .slot(1)))
        s.append(step(G, .transactionEnd, ["T"], tx: .slot(1)))
        s.append(step(G, .read, ["data/tx"]))
        s.append(step(G, .introduce, ["7", "1", "1"]))
        s.append(step(G, .release, ["6"]))
        s.append(step(G, .isDomainIntroduced, ["5"]))
        s.append(step(G, .getDomainPath, ["6"]))
        s.append(step(G, .control, ["print", "x"]))
        s.append(step(G, .setTarget, ["5", "6"]))
        s.append(step(G, .resetWatches, [""]))
        s.append(step(D, .write, ["/local/domain/5/data/c"], value: [1]))
        s.append(step(G, .read, ["data/c"]))
        return s
    }()

    @Test func aGuestGetsTheAnswersDebiansXenstoredGivesIt() throws {
        try Self.compareAsGuest(Self.guestScript)
    }

    /// Guest domain 5 as connection A (a ring page for the real daemon, a
    /// socket for the embedded one), dom0 as B; both daemons with `limits`
    /// (`args` for the real one).
    static func compareAsGuest(_ script: [Step], limits: XenstoreServer.Limits = .init(), args: [String] = []) throws {
        let dir = try makeTempDir()
        defer { removeTree(dir) }
        let ring = dir + "/ring-5", kick = dir + "/kick"
        for path in [ring, dir + "/ring-6"] {   // the pages INTRODUCE maps
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            #expect(fd >= 0 && ftruncate(fd, 4096) == 0)
            close(fd)
        }
        #expect(mkfifo(kick, 0o600) == 0)
        let real = try startReal(dir, ["XS_SHIM_DOMAINS": "5,6", "XS_SHIM_RING_DIR": dir, "XS_SHIM_KICK": kick], args: args)
        defer { kill(real.pid, SIGKILL); _ = real.wait(seconds: 10) }
        let expected = transcript([try RingClient(ringPath: ring, kickPath: kick), try RawClient(path: dir + "/socket")], script)

        let fx = try XenstoreFixture(limits: limits)
        defer { fx.stop() }
        fx.server.addDomain(6)
        let got = transcript([RawClient(fd: try fx.server.connect(asDomain: 5)), try RawClient(path: fx.socket)], script)
        compare(expected, got, script)
    }

    /// Each quota a guest can run into, set low on both daemons, up to and
    /// past its limit: the same requests succeed and the same errors come.
    static let quotaScript: [Step] = {
        let G = 0, D = 1
        var s: [Step] = []
        s.append(step(D, .introduce, ["5", "1234", "3"]))
        s.append(step(D, .mkdir, ["/local/domain/5"]))
        s.append(step(D, .setPerms, ["/local/domain/5", "n5"]))
        // Transactions (-t 2): xenstored lets quota + 1 be open.
        for slot in 1...4 { s.append(step(G, .transactionStart, [""], save: slot)) }
        for slot in 1...4 { s.append(step(G, .transactionEnd, ["F"], tx: .slot(slot))) }
        s.append(step(G, .transactionStart, [""], save: 5))
        s.append(step(G, .transactionEnd, ["F"], tx: .slot(5)))
        // Watches (-W 3): quota + 1 too.
        for i in 0..<5 { s.append(step(G, .watch, ["w\(i)", "t"])) }
        s.append(step(G, .unwatch, ["w0", "t"]))
        s.append(step(G, .watch, ["w9", "t"]))
        s.append(step(G, .resetWatches, [""]))
        // Nodes one transaction touches (-Q transaction-nodes=8), then its commit.
        s.append(step(G, .transactionStart, [""], save: 6))
        for i in 0..<9 { s.append(step(G, .read, ["absent\(i)"], tx: .slot(6))) }
        s.append(step(G, .read, ["/local/domain/5"], tx: .slot(6)))
        s.append(step(G, .write, ["absent0"], value: [1], tx: .slot(6)))
        s.append(step(G, .transactionEnd, ["T"], tx: .slot(6)))
        // Nodes per domain (-E 15): checked in a transaction against what is
        // committed, and again at commit.
        s.append(step(G, .mkdir, ["x"]))
        s.append(step(G, .mkdir, ["y"]))
        s.append(step(G, .transactionStart, [""], save: 7))
        s.append(step(G, .transactionStart, [""], save: 8))
        for i in 0..<6 {
            s.append(step(G, .write, ["x/n\(i)"], value: [1], tx: .slot(7)))
            s.append(step(G, .write, ["y/n\(i)"], value: [1], tx: .slot(8)))
        }
        s.append(step(G, .transactionEnd, ["T"], tx: .slot(7)))
        s.append(step(G, .transactionEnd, ["T"], tx: .slot(8)))
        s.append(step(G, .directory, ["y"]))
        for i in 0..<7 { s.append(step(G, .write, ["z\(i)"], value: [1])) }
        s.append(step(G, .rm, ["x"]))
        s.append(step(G, .transactionStart, [""], save: 9))
        for i in 0..<6 { s.append(step(G, .write, ["q/n\(i)"], value: [1], tx: .slot(9))) }
        s.append(step(G, .rm, ["y"], tx: .slot(9)))
        s.append(step(G, .transactionEnd, ["T"], tx: .slot(9)))
        s.append(step(G, .rm, ["q"]))
        for i in 0..<7 { s.append(step(G, .rm, ["z\(i)"])) }
        // A write that makes many nodes: all of them count, before any is made.
        s.append(step(G, .write, [Array(repeating: "p", count: 14).joined(separator: "/")], value: [1]))
        s.append(step(G, .directory, ["/local/domain/5"]))
        s.append(step(G, .write, [Array(repeating: "p", count: 13).joined(separator: "/")], value: [1]))
        s.append(step(G, .write, ["one-more"], value: [1]))
        s.append(step(G, .rm, ["p"]))
        // Dom0 is held to none of them.
        for i in 0..<20 { s.append(step(D, .write, ["/local/domain/5/d0/n\(i)"], value: [1])) }
        s.append(step(D, .transactionStart, [""], save: 10))
        for i in 0..<12 { s.append(step(D, .read, ["/absent\(i)"], tx: .slot(10))) }
        s.append(step(D, .transactionEnd, ["T"], tx: .slot(10)))
        s.append(step(D, .rm, ["/local/domain/5/d0"]))
        // Memory (-Q memory=12000): nodes of 1900 bytes until it is full,
        // outside and inside a transaction.
        let big = [UInt8](repeating: 0x62, count: 1900)
        for i in 0..<8 { s.append(step(G, .write, ["m/\(i)"], value: big)) }
        s.append(step(G, .rm, ["m"]))
        s.append(step(G, .transactionStart, [""], save: 11))
        for i in 0..<8 { s.append(step(G, .write, ["m/\(i)"], value: big, tx: .slot(11))) }
        s.append(step(G, .transactionEnd, ["T"], tx: .slot(11)))
        s.append(step(G, .write, ["m/after"], value: big))
        return s
    }()

    @Test func aGuestMeetsEachQuotaWhereDebiansXenstoredPutsIt() throws {
        var limits = XenstoreServer.Limits()
        limits.maxTransactionsPerDomain = 2
        limits.maxWatchesPerDomain = 3
        limits.maxTransactionNodes = 8
        limits.maxNodesPerDomain = 15
        limits.maxMemoryPerDomain = 12000
        try Self.compareAsGuest(Self.quotaScript, limits: limits,
                                args: ["-t", "2", "-W", "3", "-Q", "transaction-nodes=8", "-E", "15", "-Q", "memory=12000"])
    }
}
