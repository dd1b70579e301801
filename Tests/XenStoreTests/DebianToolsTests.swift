import Glibc
import Testing
@testable import XenStore

/// The embedded xenstored driven by clients the project did not write:
/// Debian's xenstore-utils and test-xenstore from xen-utils-4.17.
@Suite struct DebianToolsTests {
    @Test func xenstoreReadWriteListExistsAndRemoveWork() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        // Several pairs in one call: the tool wraps them in a transaction.
        var r = try fx.tool("xenstore-write", ["/vm/a", "alpha", "/vm/b/c", "gamma", "/vm/b/d", ""])
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-read", ["/vm/a", "/vm/b/c"])
        #expect(r.status == 0 && r.stdout == "alpha\ngamma\n", "\(r)")
        r = try fx.tool("xenstore-ls", ["/vm"])
        #expect(r.stdout == "a = \"alpha\"\nb = \"\"\n c = \"gamma\"\n d = \"\"\n", "\(r)")
        r = try fx.tool("xenstore-list", ["/vm/b"])
        #expect(r.stdout == "c\nd\n", "\(r)")
        r = try fx.tool("xenstore-exists", ["/vm/b/c"])
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-exists", ["/vm/b/nothing"])
        #expect(r.status == 1, "\(r)")
        r = try fx.tool("xenstore-rm", ["/vm/b"])
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-read", ["/vm/b/c"])
        #expect(r.status == 1 && r.stderr.contains("couldn't read path /vm/b/c"), "\(r)")
        r = try fx.tool("xenstore-list", ["/vm"])
        #expect(r.stdout == "a\n", "\(r)")
        // Removing a missing node whose parent exists is fine; with no parent it is not.
        r = try fx.tool("xenstore-rm", ["/vm/gone"])
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-rm", ["/nowhere/gone"])
        #expect(r.status != 0, "\(r)")
    }

    @Test func xenstoreReadRejectsMalformedPaths() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        for bad in ["/a//b", "/a/", "/a b", "/caf\u{e9}"] {
            let r = try fx.tool("xenstore-write", [bad, "x"])
            #expect(r.status != 0, "\(bad): \(r)")
        }
        let r = try fx.tool("xenstore-ls", ["/"])
        #expect(r.stdout == "tool = \"\"\n xenstored = \"\"\n", "\(r)")
    }

    @Test func xenstoreChmodSetsPermissionsThatLsShows() throws {
        let fx = try XenstoreFixture(domains: [5])
        defer { fx.stop() }
        var r = try fx.tool("xenstore-write", ["/p/node", "v"])
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-chmod", ["/p/node", "n5", "r6", "b7"])
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-ls", ["-p", "/p"])
        #expect(r.stdout.hasSuffix("(n5,r6,b7)\n") && r.stdout.hasPrefix("node = \"v\""), "\(r)")
        // -r applies the list to the whole subtree.
        _ = try fx.tool("xenstore-write", ["/p/node/child", "c"])
        r = try fx.tool("xenstore-chmod", ["-r", "/p", "w0", "r3"])
        #expect(r.status == 0, "\(r)")
        r = try fx.tool("xenstore-ls", ["-p", "/p"])
        #expect(r.stdout.split(separator: "\n").filter { $0.hasSuffix("(w0,r3)") }.count == 2, "\(r)")
        // Only a domain that exists can own a node (domain 9 has no socket).
        r = try fx.tool("xenstore-chmod", ["/p/node", "n9"])
        #expect(r.status != 0 && r.stderr.contains("No such file or directory"), "\(r)")
    }

    @Test func xenstoreWatchSeesImmediateEventDescendantsAndRemoval() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let watcher = try Child("xenstore-watch", ["-n", "4", "/w"], env: ["XENSTORED_PATH": fx.socket])
        // The first event comes at once, before anything changes.
        #expect(watcher.pump(seconds: 10) { $0.stdoutLines.count >= 1 })
        #expect(watcher.stdoutLines == ["/w"])
        _ = try fx.tool("xenstore-write", ["/other", "x"])   // not below /w: no event
        _ = try fx.tool("xenstore-write", ["/w/a", "1"])
        _ = try fx.tool("xenstore-write", ["/w/a/b", "2"])
        _ = try fx.tool("xenstore-rm", ["/w"])
        let r = watcher.wait()
        #expect(r.status == 0, "\(r)")
        #expect(watcher.stdoutLines == ["/w", "/w/a", "/w/a/b", "/w"], "\(r)")
    }

    @Test func testXenstoreFromXenUtilsPassesEveryTest() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let list = try runTool(testXenstorePath, ["--list-tests"], env: ["XENSTORED_PATH": fx.socket])
        let names = list.stdout.split(separator: "\n").count
        #expect(names >= 12, "\(list)")
        let r = try runTool(testXenstorePath, [], env: ["XENSTORED_PATH": fx.socket])
        #expect(r.status == 0, "\(r)")
        // One timing line per test, none reporting an error.
        #expect(r.stdout.split(separator: "\n").filter { $0.hasSuffix(" ns") }.count == names, "\(r)")
        #expect(!r.stdout.contains("failed") && !r.stderr.contains("failed"), "\(r)")
    }

    @Test func testXenstoreRandomModeRunsWithoutErrors() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let r = try runTool(testXenstorePath, ["--random", "1"], env: ["XENSTORED_PATH": fx.socket])
        #expect(r.status == 0, "\(r)")
        #expect(!r.stdout.contains("failed") && !r.stderr.contains("failed"), "\(r)")
    }
}
