import Glibc
import Testing
import EventLoop
@testable import XenStore

/// The libxenstore wrapper the device model uses, against the embedded server.
@Suite struct ClientTests {
    @Test func readWriteDirectoryPermissionsAndRemove() throws {
        let fx = try XenstoreFixture(domains: [5])
        defer { fx.stop() }
        let xs = try XenStore(socketPath: fx.socket)
        try xs.write("/dev/vfb/0/width", "800")
        try xs.write("/dev/vfb/0/raw", [0, 1, 2, 255])
        try xs.mkdir("/dev/vfb/0/empty")
        #expect(try xs.readString("/dev/vfb/0/width") == "800")
        #expect(try xs.read("/dev/vfb/0/raw") == [0, 1, 2, 255])
        #expect(try xs.directory("/dev/vfb/0") == ["width", "raw", "empty"])
        #expect(try xs.readIfPresent("/dev/vfb/0/nothing") == nil)
        #expect(try xs.exists("/dev/vfb/0/empty"))
        try xs.setPermissions("/dev/vfb/0", [XSPermission(domid: 5, .none), XSPermission(domid: 0, .read)])
        #expect(try xs.getPermissions("/dev/vfb/0") == [XSPermission(domid: 5, .none), XSPermission(domid: 0, .read)])
        try xs.rm("/dev")
        #expect(try xs.directory("/") == ["tool"])
        #expect(try xs.domainPath(7) == "/local/domain/7")
    }

    @Test func errorsNameTheOperationPathAndErrno() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let xs = try XenStore(socketPath: fx.socket)
        do {
            _ = try xs.read("/no/such/node")
            Issue.record("read of a missing node succeeded")
        } catch {
            #expect(error.isNotFound)
            #expect(error.description == "xenstore read /no/such/node: ENOENT (No such file or directory)")
        }
        do {
            _ = try XenStore(socketPath: fx.dir + "/not-a-socket")
            Issue.record("opened a missing socket")
        } catch {
            #expect(error.description.contains(fx.dir + "/not-a-socket"))
            #expect(error.description.contains("ENOENT"))
        }
    }

    @Test func aClientOnADomainSocketActsAsThatDomain() throws {
        let fx = try XenstoreFixture(domains: [5])
        defer { fx.stop() }
        let dom0 = try XenStore(socketPath: fx.socket)
        try dom0.mkdir("/local/domain/5")
        try dom0.setPermissions("/local/domain/5", [XSPermission(domid: 5, .none)])
        try dom0.write("/local/domain/5/name", "guest")   // inherits n5
        let guest = try XenStore(socketPath: fx.domainSocket(5))
        #expect(try guest.readString("name") == "guest")
        try guest.write("device/vkbd/0/state", "1")
        #expect(try dom0.getPermissions("/local/domain/5/device/vkbd/0/state") == [XSPermission(domid: 5, .none)])
        do {
            try guest.write("/local/domain/0/x", "1")
            Issue.record("guest wrote dom0's home")
        } catch {
            #expect(error.errno == EACCES)
        }
        // XENSTORED_PATH was only borrowed for xs_open.
        #expect(getenv("XENSTORED_PATH").map { String(cString: $0) } != fx.domainSocket(5))
    }

    @Test func transactionHelperRetriesAfterAConflict() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let xs = try XenStore(socketPath: fx.socket)
        let other = try XenStore(socketPath: fx.socket)
        try xs.write("/counter", "1")
        var attempts = 0
        let result = try xs.transaction { tx throws(XenStoreError) -> Int in
            attempts += 1
            let v = Int(try xs.readString("/counter", in: tx))!
            if attempts == 1 { try other.write("/counter", "10") }   // conflicts with this attempt
            try xs.write("/counter", "\(v + 1)", in: tx)
            return v + 1
        }
        #expect(attempts == 2)
        #expect(result == 11)
        #expect(try xs.readString("/counter") == "11")
        // A failing body aborts: nothing it wrote stays.
        do {
            try xs.transaction { tx throws(XenStoreError) in
                try xs.write("/partial", "x", in: tx)
                _ = try xs.read("/missing", in: tx)
            }
            Issue.record("transaction body error was swallowed")
        } catch {
            #expect(error.isNotFound)
        }
        #expect(try xs.readIfPresent("/partial") == nil)
    }

    @Test func watchEventsAreDispatchedOnTheEventLoop() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let loop = try EventLoop()
        let xs = try XenStore(socketPath: fx.socket, loop: loop)
        let writer = try XenStore(socketPath: fx.socket)
        var seen: [String] = []
        let thread = pthread_self()
        var onLoopThread = true
        try xs.watch("/fe", token: "frontend") { path, token in
            seen.append("\(token) \(path)")
            onLoopThread = onLoopThread && pthread_equal(thread, pthread_self()) != 0
        }
        func runUntil(_ count: Int) {
            let deadline = now() + 10
            while seen.count < count && now() < deadline { loop.runOnce(timeoutMilliseconds: 100) }
        }
        runUntil(1)
        #expect(seen == ["frontend /fe"])
        try writer.write("/fe/state", "3")
        runUntil(2)
        #expect(seen == ["frontend /fe", "frontend /fe/state"])
        try xs.unwatch("/fe", token: "frontend")
        try writer.write("/fe/state", "4")
        try xs.watch("/other", token: "o") { path, token in seen.append("\(token) \(path)") }
        runUntil(3)
        #expect(seen == ["frontend /fe", "frontend /fe/state", "o /other"], "nothing after unwatch")
        #expect(onLoopThread)
    }

    @Test func watchWithoutALoopIsAnError() throws {
        let fx = try XenstoreFixture()
        defer { fx.stop() }
        let xs = try XenStore(socketPath: fx.socket)
        #expect(throws: XenStoreError.noEventLoop) { try xs.watch("/x", token: "t") { _, _ in } }
    }
}
