import Testing
import Glibc
import CShims
import EventLoop
@testable import Control

/// The QMP server in-process: the parts other modules build on (the command
/// registry with late replies, the VNC provider, the shutdown chain) and the
/// per-client bounds, with a plain socket client pumped from the test's own
/// event loop.
@Suite struct QMPServerTests {
    @Test func lateRepliesKeepEachClientsCommandsInOrder() throws {
        let h = try Harness()
        h.server.registerCommand("slow") { _, reply in
            h.loop.addTimer(after: .milliseconds(30)) { reply.success("slow") }
        }
        h.server.registerCommand("fast") { _, reply in reply.success("fast") }
        let c = try h.connect()
        c.send(#"{"execute":"slow","id":1}{"execute":"fast","id":2}{"execute":"slow","id":3}"#)
        let replies = try (0..<3).map { _ in try c.message() }
        #expect(replies == [["return": "slow", "id": 1], ["return": "fast", "id": 2], ["return": "slow", "id": 3]])
    }

    @Test func slowCommandOnOneClientDoesNotHoldUpAnother() throws {
        let h = try Harness()
        var pending: QMPReply?
        h.server.registerCommand("hold") { _, reply in pending = reply }
        h.server.registerCommand("fast") { _, reply in reply.success() }
        let a = try h.connect(), b = try h.connect()
        a.send(#"{"execute":"hold","id":"a"}"#)
        try h.pump { pending != nil }
        b.send(#"{"execute":"fast","id":"b"}"#)
        #expect(try b.message() == ["return": [:], "id": "b"])
        pending?.success(true)
        #expect(try a.message() == ["return": true, "id": "a"])
    }

    @Test func aReplyAfterTheClientLeftOrASecondReplyIsIgnored() throws {
        let h = try Harness()
        var pending: QMPReply?
        h.server.registerCommand("hold") { _, reply in pending = reply }
        h.server.registerCommand("twice") { _, reply in
            reply.success(1)
            reply.success(2)
            reply.failure(.generic("three"))
        }
        let a = try h.connect()
        a.send(#"{"execute":"twice","id":0}{"execute":"hold"}"#)
        #expect(try a.message() == ["return": 1, "id": 0])
        try h.pump { pending != nil }
        a.close()
        try h.pump { h.server.clientCount == 0 }
        pending?.success() // must not crash or write anywhere
        let b = try h.connect()
        b.send(#"{"execute":"twice"}"#)
        #expect(try b.message() == ["return": 1])
    }

    @Test func halfClosedClientStillGetsTheLateAnswerWithoutSpinning() throws {
        let h = try Harness()
        var pending: QMPReply?
        h.server.registerCommand("hold") { _, reply in pending = reply }
        let c = try h.connect()
        c.send(#"{"execute":"hold","id":1}"#)
        try h.pump { pending != nil }
        shutdown(c.fd, Int32(SHUT_WR))
        for _ in 0..<3 { h.loop.runOnce(timeoutMilliseconds: 5) }
        #expect(h.loop.runOnce(timeoutMilliseconds: 20) == 0) // the hang-up no longer wakes the loop
        pending?.success("late")
        #expect(try c.message() == ["return": "late", "id": 1])
        try h.pump { h.server.clientCount == 0 }
    }

    @Test func eventsReachOnlyNegotiatedClients() throws {
        let h = try Harness()
        let negotiated = try h.connect()
        let fresh = try h.connect(negotiate: false)
        h.server.emitEvent("TEST_EVENT", data: ["n": 1])
        let event = try negotiated.message()
        #expect(event["event"] == "TEST_EVENT" && event["data"] == ["n": 1])
        #expect(event["timestamp"]?["seconds"]?.intValue != nil)
        fresh.send(#"{"execute":"qmp_capabilities","id":"x"}"#)
        #expect(try fresh.message() == ["return": [:], "id": "x"]) // and not the event first
    }

    @Test func vncPasswordSetEarlyIsHandedToTheProviderWhenItRegisters() throws {
        let h = try Harness()
        let c = try h.connect()
        c.send(#"{"execute":"query-vnc","id":1}"#)
        #expect(try c.message() == ["return": ["enabled": false], "id": 1])
        c.send(#"{"execute":"change-vnc-password","arguments":{"password":"early"},"id":2}"#)
        #expect(try c.message() == ["return": [:], "id": 2])
        let vnc = FakeVNC()
        h.server.vncProvider = vnc
        #expect(vnc.passwords == ["early"])
        c.send(#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"later"},"id":3}"#)
        #expect(try c.message() == ["return": [:], "id": 3])
        #expect(vnc.passwords == ["early", "later"])
        c.send(#"{"execute":"query-vnc","id":4}"#)
        #expect(try c.message() == ["return": ["enabled": true, "host": "127.0.0.1", "service": "5900"], "id": 4])
        vnc.refuse = true
        c.send(#"{"execute":"change-vnc-password","arguments":{"password":"x"},"id":5}"#)
        #expect(try c.message() == ["error": ["class": "GenericError", "desc": "Could not set password"], "id": 5])
    }

    @Test func clientThatDoesNotReadItsRepliesIsDisconnectedAlone() throws {
        var limits = QMPServer.Limits()
        limits.maxQueuedOutputBytes = 8192
        let h = try Harness(limits: limits)
        let big = String(repeating: "x", count: 4000)
        h.server.registerCommand("big") { _, reply in reply.success(.string(big)) }
        let reader = try h.connect()
        let hog = try h.connect()
        // Far more reply bytes than the socket buffers and the queue hold together.
        let command = Array(#"{"execute":"big"}"#.utf8)
        var sent = 0
        try h.pump {
            if sent < 2000 {
                let n = command.withUnsafeBytes { Glibc.send(hog.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
                if n == command.count { sent += 1 }
            }
            return h.server.clientCount == 1
        }
        #expect(h.server.clientCount == 1)
        reader.send(#"{"execute":"query-status","id":7}"#)
        #expect(try reader.message()["id"] == 7)
    }

    @Test func clientsBeyondTheLimitAreRefused() throws {
        var limits = QMPServer.Limits()
        limits.maxClients = 2
        let h = try Harness(limits: limits)
        let a = try h.connect(), b = try h.connect()
        let c = try h.connect(negotiate: false, greeting: false)
        try h.pump { c.peerClosed() }
        a.send(#"{"execute":"query-status","id":1}"#)
        #expect(try a.message()["id"] == 1)
        b.send(#"{"execute":"query-status","id":2}"#)
        #expect(try b.message()["id"] == 2)
    }

    @Test func prettyMonitorIndentsLikeQEMU() throws {
        let h = try Harness(pretty: true)
        let c = try h.connect(negotiate: false, greeting: false)
        let greeting = try c.rawMessage()
        #expect(greeting.hasPrefix("{\n    \"QMP\": {\n        \"version\": {"))
        #expect(try JSON.parse(greeting)["QMP"]?["capabilities"] == [])
    }

    @Test func commandsAddedByOtherModulesAreListed() throws {
        let h = try Harness()
        h.server.registerCommand("screendump") { _, reply in reply.success() }
        let c = try h.connect()
        c.send(#"{"execute":"query-commands"}"#)
        let names = try c.message()["return"]?.arrayValue?.compactMap { $0["name"]?.stringValue } ?? []
        #expect(names.contains("screendump") && names.contains("qmp_capabilities") && names.contains("query-status"))
    }

    @Test func closeRemovesTheSocketItCreatedOnly() throws {
        let h = try Harness()
        #expect(access(h.path, F_OK) == 0)
        h.server.close()
        #expect(access(h.path, F_OK) != 0)
        // A socket that replaced ours in the meantime is left alone.
        let h2 = try Harness()
        unlink(h2.path)
        let other = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(other) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(h2.path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(other, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(rc == 0)
        h2.server.close()
        #expect(access(h2.path, F_OK) == 0)
    }
}

@Suite struct ShutdownChainTests {
    @Test func hooksRunInReverseOrderAndMayFinishLater() throws {
        let loop = try EventLoop()
        let chain = ShutdownChain()
        var order: [String] = []
        chain.add("xenstore") { done in order.append("xenstore"); done() }
        chain.add("backends") { done in
            order.append("backends")
            loop.addTimer(after: .milliseconds(10)) { order.append("backends closed"); done() }
        }
        chain.add("displays") { done in order.append("displays"); done(); done() }
        var completed = 0
        chain.run(on: loop) { completed += 1; loop.stop() }
        chain.run(on: loop) { completed += 100 } // ignored
        loop.run()
        #expect(order == ["displays", "backends", "backends closed", "xenstore"])
        #expect(completed == 1)
    }

    @Test func aHookThatNeverFinishesIsCutOffByTheDeadline() throws {
        let loop = try EventLoop()
        let chain = ShutdownChain()
        var ranFirst = false
        chain.add("first") { done in ranFirst = true; done() }
        chain.add("stuck") { _ in }
        var completed = false
        chain.run(on: loop, deadline: .milliseconds(20)) { completed = true; loop.stop() }
        loop.run()
        #expect(completed)
        #expect(!ranFirst)
    }
}

// MARK: - Helpers

final class FakeVNC: QMPVNCProvider {
    var passwords: [String] = []
    var refuse = false
    func queryVNC() -> JSON { ["enabled": true, "host": "127.0.0.1", "service": "5900"] }
    func setVNCPassword(_ password: String) throws(QMPError) {
        if refuse { throw .generic("Could not set password") }
        passwords.append(password)
    }
}

/// A QMP server on its own loop and socket in a fresh temp directory.
final class Harness {
    let loop: EventLoop
    let server: QMPServer
    let dir: String
    let path: String

    init(limits: QMPServer.Limits = QMPServer.Limits(), pretty: Bool = false) throws {
        loop = try EventLoop()
        server = QMPServer(loop: loop, limits: limits)
        var template = Array("/tmp/xenvfb-qmpt-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw TestFailure("mkdtemp")
        }
        dir = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        path = dir + "/qmp.sock"
        try server.listen(QMPEndpoint(id: "test", socket: .path(path), pretty: pretty))
    }

    deinit {
        server.close()
        unlink(path)
        rmdir(dir)
    }

    /// Runs the loop until `done` holds (checked between wake-ups), for at most 10 s.
    func pump(_ done: () -> Bool) throws {
        let deadline = EventLoop.now() + 10_000_000_000
        while !done() {
            guard EventLoop.now() < deadline else { throw TestFailure("timed out waiting") }
            loop.runOnce(timeoutMilliseconds: 5)
        }
    }

    /// A connected client, past the greeting and (by default) negotiation.
    func connect(negotiate: Bool = true, greeting: Bool = true) throws -> TestClient {
        let c = try TestClient(path: path, harness: self)
        if greeting { _ = try c.message() }
        if negotiate {
            c.send(#"{"execute":"qmp_capabilities"}"#)
            #expect(try c.message() == ["return": [:]])
        }
        return c
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A non-blocking socket client whose reads pump the harness's loop.
final class TestClient {
    let fd: Int32
    unowned let harness: Harness
    private var buffer: [UInt8] = []
    private var eof = false

    init(path: String, harness: Harness) throws {
        self.harness = harness
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw TestFailure("connect: errno \(errno)") }
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    func send(_ text: String) {
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                off += n
            } else if n < 0 && errno == EAGAIN {
                harness.loop.runOnce(timeoutMilliseconds: 5) // let the server drain its side
            } else {
                return
            }
        }
    }

    private func fill() {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &chunk, chunk.count, Int32(MSG_DONTWAIT))
            if n > 0 { buffer.append(contentsOf: chunk[..<n]) } else { if n == 0 { eof = true }; return }
        }
    }

    /// True once the server closed the connection.
    func peerClosed() -> Bool {
        fill()
        return eof
    }

    /// The next CRLF-terminated message, as text.
    func rawMessage() throws -> String {
        var line: [UInt8]?
        try harness.pump {
            fill()
            if let i = buffer.indices.dropLast().first(where: { buffer[$0] == 13 && buffer[$0 + 1] == 10 }) {
                line = Array(buffer[..<i])
                buffer.removeFirst(i + 2)
                return true
            }
            return eof
        }
        guard let line else { throw TestFailure("connection closed") }
        return String(decoding: line, as: UTF8.self)
    }

    func message() throws -> JSON { try JSON.parse(try rawMessage()) }
}
