import Glibc
import Testing
@testable import XenStore

/// Watches, transactions and robustness, over raw protocol connections.
@Suite struct ProtocolTests {
    @Test func watchFiresAtOnceThenForDescendantsAndRemoval() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let w = try RawClient(path: fx.socket)
        let c = try RawClient(path: fx.socket)
        #expect(RawClient.text(w.request(.watch, ["/w/x", "tok"])) == "OK")
        #expect(w.nextEvent() == "/w/x tok")
        #expect(RawClient.text(w.request(.watch, ["/w/x", "tok"])) == "error EEXIST")
        _ = c.request(.write, ["/w/y"], value: [1])          // sibling: no event
        _ = c.request(.write, ["/w/x/deep/er"], value: [2])
        #expect(w.nextEvent() == "/w/x/deep/er tok")
        _ = c.request(.write, ["/w/x"], value: [3])
        #expect(w.nextEvent() == "/w/x tok")
        // Removing an ancestor reaches a watch on a descendant, with its own path.
        _ = c.request(.rm, ["/w"])
        #expect(w.nextEvent() == "/w/x tok")
        #expect(RawClient.text(w.request(.unwatch, ["/w/x", "tok"])) == "OK")
        #expect(RawClient.text(w.request(.unwatch, ["/w/x", "tok"])) == "error ENOENT")
        _ = c.request(.write, ["/w/x"], value: [4])
        #expect(w.nextEvent(seconds: 0.3) == nil)
    }

    @Test func relativeWatchOfAGuestReportsRelativePathsAndHonoursPermissions() throws {
        let fx = try XenstoreFixture(domains: [5])
        defer { fx.stop() }
        let dom0 = try RawClient(path: fx.socket)
        _ = dom0.request(.mkdir, ["/local/domain/5"])
        _ = dom0.request(.setPerms, ["/local/domain/5", "n5"])
        _ = dom0.request(.mkdir, ["/local/domain/5/device/private"])
        _ = dom0.request(.setPerms, ["/local/domain/5/device/private", "n0"])
        let guest = RawClient(fd: try fx.server.connect(asDomain: 5))
        // An empty relative path would end in "/": invalid, as in xenstored.
        #expect(RawClient.text(guest.request(.watch, ["", "home"])) == "error EINVAL")
        #expect(RawClient.text(guest.request(.watch, ["device", "home"])) == "OK")
        #expect(guest.nextEvent() == "device home")
        #expect(RawClient.text(guest.request(.watch, ["/local/domain/6", "other"])) == "OK")
        #expect(guest.nextEvent() == "/local/domain/6 other")
        // Nodes the guest cannot read (nor their parent): no event.
        _ = dom0.request(.write, ["/local/domain/6/secret"], value: [1])
        _ = dom0.request(.write, ["/local/domain/5/device/private/key"], value: [1])
        _ = dom0.request(.write, ["/local/domain/5/device/vfb"], value: [1])
        #expect(guest.nextEvent() == "device/vfb home")
        #expect(guest.nextEvent(seconds: 0.3) == nil)
    }

    @Test func introduceAndReleaseFireSpecialWatchesForDom0Only() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let dom0 = try RawClient(path: fx.socket)
        let guest = RawClient(fd: try fx.server.connect(asDomain: 5))
        #expect(RawClient.text(dom0.request(.watch, ["@introduceDomain", "i"])) == "OK")
        #expect(RawClient.text(dom0.request(.watch, ["@releaseDomain", "r"])) == "OK")
        #expect(RawClient.text(guest.request(.watch, ["@releaseDomain", "g"])) == "OK")
        #expect(dom0.nextEvent() == "@introduceDomain i")
        #expect(dom0.nextEvent() == "@releaseDomain r")
        #expect(guest.nextEvent() == "@releaseDomain g")
        #expect(RawClient.text(dom0.request(.isDomainIntroduced, ["9"])) == "F")
        #expect(RawClient.text(dom0.request(.introduce, ["9", "1234", "3"])) == "OK")
        #expect(dom0.nextEvent() == "@introduceDomain i")
        #expect(RawClient.text(dom0.request(.isDomainIntroduced, ["9"])) == "T")
        #expect(RawClient.text(dom0.request(.release, ["9"])) == "OK")
        #expect(dom0.nextEvent() == "@releaseDomain r")
        #expect(RawClient.text(dom0.request(.release, ["9"])) == "error ENOENT")
        #expect(guest.nextEvent(seconds: 0.3) == nil, "@releaseDomain is n0: not for guests")
        // The API does the same from inside the process.
        fx.server.introduceDomain(11)
        #expect(dom0.nextEvent() == "@introduceDomain i")
    }

    @Test func transactionKeepsWhatItFirstReadAndConflictsGetEAGAIN() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let a = try RawClient(path: fx.socket)
        let b = try RawClient(path: fx.socket)
        _ = b.request(.write, ["/t/x"], value: Array("1".utf8))
        _ = b.request(.write, ["/t/late"], value: Array("1".utf8))
        let tx = UInt32(RawClient.text(a.request(.transactionStart, [""])))!
        #expect(tx != 0)
        #expect(RawClient.text(a.request(.read, ["/t/x"], tx: tx)) == "1")
        _ = b.request(.write, ["/t/x"], value: Array("2".utf8))
        _ = b.request(.write, ["/t/late"], value: Array("2".utf8))
        #expect(RawClient.text(a.request(.read, ["/t/x"], tx: tx)) == "1", "kept from its first access")
        // As xenstored's access_node: a node is copied when first touched, not at the start.
        #expect(RawClient.text(a.request(.read, ["/t/late"], tx: tx)) == "2")
        #expect(RawClient.text(a.request(.write, ["/t/y"], value: Array("from-tx".utf8), tx: tx)) == "OK")
        #expect(RawClient.text(b.request(.read, ["/t/y"])) == "error ENOENT", "not visible before commit")
        #expect(RawClient.text(a.request(.transactionEnd, ["T"], tx: tx)) == "error EAGAIN")
        #expect(RawClient.text(b.request(.read, ["/t/y"])) == "error ENOENT", "a failed commit writes nothing")
        #expect(RawClient.text(a.request(.read, ["/t/x"], tx: tx)) == "error ENOENT", "the transaction is gone")
    }

    @Test func transactionCommitsAppliesWritesAndFiresWatchesThenAbortDiscards() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let a = try RawClient(path: fx.socket)
        let w = try RawClient(path: fx.socket)
        _ = w.request(.mkdir, ["/c"])
        _ = w.request(.watch, ["/c", "t"])
        #expect(w.nextEvent() == "/c t")
        // A change to nodes the transaction did not touch does not conflict.
        var tx = UInt32(RawClient.text(a.request(.transactionStart, [""])))!
        _ = a.request(.write, ["/c/one"], value: Array("1".utf8), tx: tx)
        _ = a.request(.write, ["/elsewhere2"], value: [1])
        #expect(w.nextEvent(seconds: 0.2) == nil, "no event before commit")
        #expect(RawClient.text(a.request(.transactionEnd, ["T"], tx: tx)) == "OK")
        #expect(w.nextEvent() == "/c/one t")
        #expect(RawClient.text(w.request(.read, ["/c/one"])) == "1")
        tx = UInt32(RawClient.text(a.request(.transactionStart, [""])))!
        _ = a.request(.rm, ["/c"], tx: tx)
        #expect(RawClient.text(a.request(.transactionEnd, ["F"], tx: tx)) == "OK")
        #expect(RawClient.text(w.request(.read, ["/c/one"])) == "1", "aborted")
        #expect(RawClient.text(a.request(.transactionEnd, ["T"], tx: 999)) == "error ENOENT")
        #expect(RawClient.text(a.request(.transactionEnd, ["T"])) == "error ENOENT")
    }

    @Test func oversizedMessageClosesOnlyThatConnection() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let good = try RawClient(path: fx.socket)
        let bad = try RawClient(path: fx.socket)
        _ = good.request(.write, ["/alive"], value: Array("yes".utf8))
        let header = XSMessage(type: XSMessageType.write.rawValue, reqID: 1, txID: 0, payload: []).encoded()
        var big = Array(header[0..<12])
        withUnsafeBytes(of: UInt32(XSLimits.payloadMax + 1).littleEndian) { big += $0 }
        _ = bad.sendRaw(big + [UInt8](repeating: 0x41, count: 100))
        #expect(bad.isClosed())
        #expect(RawClient.text(good.request(.read, ["/alive"])) == "yes")
        let r = try fx.tool("xenstore-read", ["/alive"])
        #expect(r.stdout == "yes\n", "\(r)")
    }

    @Test func unknownOrMalformedRequestsGetErrorsAndTheConnectionStays() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let c = try RawClient(path: fx.socket)
        let id = c.sendRaw(XSMessage(type: 999, reqID: 77, txID: 0, payload: []).encoded())
        #expect(id)
        let m = c.receive()!
        #expect(m.type == XSMessageType.error.rawValue && m.reqID == 77 && m.payload == Array("ENOSYS".utf8) + [0])
        #expect(RawClient.text(c.request(.watchEvent, ["/x", "y"])) == "error ENOSYS")
        #expect(RawClient.text(c.request(.read, ["/a", "b"])) == "error EINVAL", "two args to READ")
        #expect(RawClient.text(c.request(.read, [], value: Array("/tool".utf8))) == "error EINVAL", "no NUL")
        #expect(RawClient.text(c.request(.transactionEnd, ["X"], tx: 0)) == "error ENOENT")
        #expect(RawClient.text(c.request(.read, ["/tool"])) == "")
    }

    @Test func aClientThatNeverReadsIsDroppedOthersKeepWorking() throws {
        var limits = XenstoreServer.Limits()
        limits.maxQueuedEvents = 64
        limits.maxQueuedBytes = 16 << 10
        let fx = try XenstoreFixture(limits: limits)
        defer { fx.stop() }
        let sleeper = try RawClient(path: fx.socket)
        _ = sleeper.send(.watch, Array("/busy\0t\0".utf8))   // and never reads again
        let writer = try RawClient(path: fx.socket)
        let value = [UInt8](repeating: 0x61, count: 16)
        // Far more events than the socket buffer and the queue cap hold.
        for i in 0..<3000 {
            _ = writer.request(.write, ["/busy/n\(i % 50)"], value: value)
        }
        #expect(RawClient.text(writer.request(.read, ["/busy/n1"])) == String(repeating: "a", count: 16))
        // Draining now finds EOF after what the kernel buffered: the server dropped it.
        #expect(sleeper.isClosed(seconds: 5))
    }

    @Test func directoryPartPagesThroughALongChildList() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let c = try RawClient(path: fx.socket)
        let names = (0..<400).map { "child-with-a-long-name-\($0)" }
        for n in names { _ = c.request(.mkdir, ["/big/" + n]) }
        #expect(RawClient.text(c.request(.directory, ["/big"])) == "error E2BIG")
        var collected: [String] = []
        var offset = 0
        var generation: String?
        while true {
            let r = c.request(.directoryPart, ["/big", "\(offset)"])
            #expect(r.0 == .directoryPart)
            var parts = r.1.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            let gen = parts.removeFirst()
            if let generation { #expect(gen == generation) }
            generation = gen
            let done = parts.count >= 2 && parts[parts.count - 2].isEmpty && parts.last!.isEmpty
            let got = parts.filter { !$0.isEmpty }
            collected += got
            offset += got.reduce(0) { $0 + $1.utf8.count + 1 }
            if done || got.isEmpty { break }
        }
        #expect(collected == names)
        // libxenstore falls back to DIRECTORY_PART on E2BIG.
        let r = try fx.tool("xenstore-list", ["/big"])
        #expect(r.stdout.split(separator: "\n").map(String.init) == names)
    }
}

@Suite struct QuotaTests {
    @Test func aGuestCannotOwnMoreNodesThanItsQuota() throws {
        var limits = XenstoreServer.Limits()
        limits.maxNodesPerDomain = 10
        let fx = try XenstoreFixture(limits: limits)
        defer { fx.stop() }
        fx.server.addDomain(5)
        let dom0 = try RawClient(path: fx.socket)
        _ = dom0.request(.mkdir, ["/local/domain/5"])
        _ = dom0.request(.setPerms, ["/local/domain/5", "n5"])   // 1 node owned by 5
        let guest = RawClient(fd: try fx.server.connect(asDomain: 5))
        var results: [String] = []
        for i in 0..<12 { results.append(RawClient.text(guest.request(.write, ["n\(i)"], value: [1]))) }
        #expect(results == Array(repeating: "OK", count: 9) + Array(repeating: "error ENOSPC", count: 3))
        // Removing frees quota; dom0 has none.
        #expect(RawClient.text(guest.request(.rm, ["n0"])) == "OK")
        #expect(RawClient.text(guest.request(.write, ["again"], value: [1])) == "OK")
        for i in 0..<20 { #expect(RawClient.text(dom0.request(.write, ["/d0/n\(i)"], value: [1])) == "OK") }
        // An oversized value from a guest: ENOSPC; from dom0 fine.
        let big = [UInt8](repeating: 0x62, count: 3000)
        #expect(RawClient.text(guest.request(.write, ["n1"], value: big)) == "error ENOSPC")
        #expect(RawClient.text(dom0.request(.write, ["/d0/big"], value: big)) == "OK")
    }
}

@Suite struct DomainLifecycleTests {
    @Test func releasingADomainRemovesWhatItOwnedAndOnlyExistingDomainsOwnNodes() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let xs = try XenStore(socketPath: fx.socket)
        try xs.write("/local/domain/7/name", "seven")
        do {
            try xs.setPermissions("/local/domain/7", [XSPermission(domid: 7, .none)])
            Issue.record("domain 7 does not exist yet, it cannot own a node")
        } catch {
            #expect(error.errno == ENOENT)
        }
        try xs.introduceDomain(7, mfn: 1234, eventChannel: 3)
        #expect(xs.isDomainIntroduced(7))
        try xs.setPermissions("/local/domain/7/name", [XSPermission(domid: 0, .read)])
        try xs.setPermissions("/local/domain/7", [XSPermission(domid: 7, .none)])
        try xs.write("/local/domain/7/data/x", "1")          // inherits owner 7
        try xs.write("/local/domain/7/data/y", "2")
        let w = try RawClient(path: fx.socket)
        _ = w.request(.watch, ["/local/domain/7/data/x", "x"])
        #expect(w.nextEvent() == "/local/domain/7/data/x x")
        try xs.releaseDomain(7)
        #expect(!xs.isDomainIntroduced(7))
        #expect(try xs.readIfPresent("/local/domain/7") == nil, "owned by 7: removed with its subtree")
        #expect(try xs.directory("/local/domain") == [])
        #expect(w.nextEvent() == "/local/domain/7/data/x x")
    }
}

@Suite struct ConnectionLimitTests {
    @Test func aGuestCannotOpenMoreConnectionsThanItsLimit() throws {
        var limits = XenstoreServer.Limits()
        limits.maxConnectionsPerDomain = 4
        let fx = try XenstoreFixture(domains: [5], limits: limits)
        defer { fx.stop() }
        var open: [RawClient] = []
        for _ in 0..<4 {
            let c = try RawClient(path: fx.domainSocket(5))
            #expect(RawClient.text(c.request(.getDomainPath, ["5"])) == "/local/domain/5")
            open.append(c)
        }
        let extra = try RawClient(path: fx.domainSocket(5))
        #expect(extra.isClosed())
        // dom0 is not limited; a closed guest connection makes room again.
        let dom0 = try RawClient(path: fx.socket)
        #expect(RawClient.text(dom0.request(.getDomainPath, ["0"])) == "/local/domain/0")
        open.removeLast()
        var again: RawClient?
        for _ in 0..<100 {   // the server sees the close asynchronously
            let c = try RawClient(path: fx.domainSocket(5))
            if RawClient.text(c.request(.getDomainPath, ["5"])) == "/local/domain/5" { again = c; break }
            usleep(10_000)
        }
        #expect(again != nil)
    }
}

@Suite struct DomainQuotaTests {
    @Test func watchesCountPerDomainAcrossConnections() throws {
        var limits = XenstoreServer.Limits()
        limits.maxWatchesPerDomain = 3
        let fx = try XenstoreFixture(limits: limits)
        defer { fx.stop() }
        let a = RawClient(fd: try fx.server.connect(asDomain: 5))
        let b = RawClient(fd: try fx.server.connect(asDomain: 5))
        #expect(RawClient.text(a.request(.watch, ["x", "1"])) == "OK")
        #expect(RawClient.text(a.request(.watch, ["y", "2"])) == "OK")
        #expect(RawClient.text(b.request(.watch, ["z", "3"])) == "OK")
        // xenstored 4.17 checks `watches > quota`: one more fits.
        #expect(RawClient.text(b.request(.watch, ["v", "4"])) == "OK")
        #expect(RawClient.text(b.request(.watch, ["w", "5"])) == "error E2BIG")
        let dom0 = try RawClient(path: fx.socket)
        for i in 0..<5 { #expect(RawClient.text(dom0.request(.watch, ["/n\(i)", "t"])) == "OK") }
    }

    @Test func aDomainsConnectionsShareOneOutputBudget() throws {
        var limits = XenstoreServer.Limits()
        limits.maxQueuedBytesPerDomain = 32 << 10
        let fx = try XenstoreFixture(limits: limits)
        defer { fx.stop() }
        let dom0 = try RawClient(path: fx.socket)
        _ = dom0.request(.mkdir, ["/busy"])
        _ = dom0.request(.setPerms, ["/busy", "n0", "r5"])
        // Several guest connections watch and never read; together they pass the budget.
        let sleepers = try (0..<4).map { _ in RawClient(fd: try fx.server.connect(asDomain: 5)) }
        for s in sleepers { _ = s.send(.watch, Array("/busy\0t\0".utf8)) }
        let value = [UInt8](repeating: 0x61, count: 200)
        for i in 0..<3000 { _ = dom0.request(.write, ["/busy/n\(i % 20)"], value: value) }
        #expect(sleepers.contains { $0.isClosed(seconds: 5) })
        #expect(RawClient.text(dom0.request(.read, ["/busy/n1"])) == String(repeating: "a", count: 200))
    }
}
