import Glibc
import Synchronization
import Testing
@testable import RFB

/// A blocking test socket with a timeout.
final class TestSocket {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw TestFailure("connect to \(port): \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// Exactly `n` bytes, or fewer if the server closed or went silent.
    func read(_ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: max(n, 1))
        while out.count < n {
            let got = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, n - out.count) }
            if got <= 0 { break }
            out += buf[0..<got]
        }
        return out
    }

    /// Reads until the server closes (true) or 5 s pass (false).
    func closedByServer() -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }

    /// RFB 3.8 with security None up to ServerInit (returned).
    func handshake() -> [UInt8] {
        _ = read(12)
        send(Array("RFB 003.008\n".utf8))
        _ = read(2)
        send([1])
        _ = read(4)
        send([1])
        let head = read(20)
        let length = read(4)
        return head + read(Int(length.last ?? 0))
    }
}

/// An in-process server over a fake frame, with the events it delivered.
final class ServerFixture: @unchecked Sendable {
    let frame: FakeFrame
    let events = Mutex<[RFBEvent]>([])
    var server: RFBServer!

    init(password: Bool = false, webSocket: Bool = false, width: Int = 64, height: Int = 48) throws {
        frame = FakeFrame(width: width, height: height)
        var options = RFBServerOptions(address: .tcp(host: "127.0.0.1", port: 0))
        options.passwordRequired = password
        if webSocket { options.webSockets = [.tcp(host: "127.0.0.1", port: 0)] }
        server = try RFBServer(options: options, source: frame) { [weak self] e in self?.events.withLock { $0.append(e) } }
    }

    deinit { server.close() }

    var port: Int { Int(server.info.listen.service)! }
    var webSocketPort: Int { Int(server.info.websockets[0].service)! }

    /// Waits up to 5 s for `condition` on the events.
    func waitFor(_ condition: ([RFBEvent]) -> Bool) -> Bool {
        let deadline = monotonicSeconds() + 5
        while monotonicSeconds() < deadline {
            if events.withLock({ condition($0) }) { return true }
            usleep(5000)
        }
        return false
    }
}

@Suite struct ServerTests {
    @Test func infoAndEventsFollowClientsComingAndGoing() throws {
        let f = try ServerFixture()
        #expect(f.server.info.listen.host == "127.0.0.1" && f.server.info.listen.family == "ipv4")
        #expect(f.server.info.auth == "none" && f.server.info.clients.isEmpty)
        var client: TestSocket? = try TestSocket(port: f.port)
        #expect(f.waitFor { $0.contains { if case .connected = $0 { return true }; return false } })
        let clients = f.server.info.clients
        #expect(clients.count == 1 && clients[0].host == "127.0.0.1" && clients[0].family == "ipv4" && !clients[0].websocket)
        let serverInit = client!.handshake()
        #expect(Array(serverInit.prefix(4)) == [0, 64, 0, 48])
        client!.send([4, 1, 0, 0, 0, 0, 0, 0x62, 5, 4, 0x01, 0x00, 0x00, 0x07])
        #expect(f.waitFor { $0.contains { if case .pointer(4, 63, 7, _) = $0 { return true } else { return false } } })
        #expect(f.events.withLock { $0.contains { if case .key(0x62, true, nil, _) = $0 { return true } else { return false } } })
        client = nil
        #expect(f.waitFor { $0.contains { if case .disconnected = $0 { return true }; return false } })
        #expect(f.server.info.clients.isEmpty)
    }

    @Test func markDirtyFromAnotherThreadReachesAWaitingClient() throws {
        let f = try ServerFixture()
        let c = try TestSocket(port: f.port)
        _ = c.handshake()
        c.send(setEncodings([0]) + updateRequest(incremental: false))
        #expect(c.read(4 + 12 + 64 * 48 * 4).count == 4 + 12 + 64 * 48 * 4)
        c.send(updateRequest(incremental: true))
        let start = monotonicSeconds()
        f.server.markDirty([RFBRect(x: 40, y: 40, width: 3, height: 3)])
        let update = c.read(4 + 12)
        #expect(update == [0, 0, 0, 1, 0, 32, 0, 32, 0, 16, 0, 16, 0, 0, 0, 0]) // the 16×16 tile, raw
        #expect(c.read(16 * 16 * 4).count == 16 * 16 * 4)
        #expect(monotonicSeconds() - start < 1)
    }

    @Test func anUpdateLargerThanTheOutputBoundArrivesWholeAtAFastReader() throws {
        // Regression: with the queue drained at once and no socket event to
        // wait for, the rest of the update must still be produced.
        let f = try ServerFixture(width: 800, height: 600)
        let c = try TestSocket(port: f.port)
        _ = c.handshake()
        c.send(setEncodings([0]) + updateRequest(incremental: false))
        let start = monotonicSeconds()
        let header = c.read(4)
        #expect(header.count == 4 && header[0] == 0)
        var pixels = 0
        for _ in 0..<(Int(header[2]) << 8 | Int(header[3])) {
            let r = c.read(12)
            guard r.count == 12 else { break }
            let n = (Int(r[4]) << 8 | Int(r[5])) * (Int(r[6]) << 8 | Int(r[7]))
            pixels += c.read(n * 4).count / 4
        }
        #expect(pixels == 800 * 600)
        #expect(monotonicSeconds() - start < 5)
    }

    @Test func passwordsCanBeSetClearedAndExpired() throws {
        let f = try ServerFixture(password: true)
        #expect(f.server.info.auth == "vnc")
        func login(_ password: String) throws -> Bool {
            let c = try TestSocket(port: f.port)
            _ = c.read(12)
            c.send(Array("RFB 003.008\n".utf8))
            #expect(c.read(2) == [1, 2])
            c.send([2])
            let challenge = c.read(16)
            c.send(vncAuthResponse(challenge: challenge, password: Array(password.utf8)))
            return c.read(4) == [0, 0, 0, 0]
        }
        #expect(try !login("anything")) // no password set yet: nobody gets in
        f.server.setPassword("pa55")
        #expect(try login("pa55"))
        #expect(try !login("pa56"))
        f.server.expirePassword(.now)
        #expect(try !login("pa55"))
        f.server.setPassword("pa55") // a new password does not keep the expiry
        #expect(try login("pa55"))
        f.server.expirePassword(RFBPasswordExpiry(qmp: "+9223372036854775807")!)
        #expect(try login("pa55"))
        f.server.expirePassword(.at(unixTime: 1))
        #expect(try !login("pa55"))
        f.server.setPassword(nil)
        #expect(try !login(""))
    }

    @Test func webSocketClientsAreMarkedAndTheHandshakeIsChecked() throws {
        let f = try ServerFixture(webSocket: true)
        let ws = try TestSocket(port: f.webSocketPort)
        ws.send(Array(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, binary\r\n\r\n").utf8))
        var response: [UInt8] = []
        while !response.suffix(4).elementsEqual([13, 10, 13, 10]) {
            let b = ws.read(1)
            guard !b.isEmpty else { break }
            response += b
        }
        let text = String(decoding: response, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 101 "))
        #expect(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))
        #expect(text.contains("Sec-WebSocket-Protocol: binary\r\n"))
        // The version arrives as one unmasked binary frame.
        #expect(ws.read(2 + 12) == [0x82, 12] + Array("RFB 003.008\n".utf8))
        #expect(f.server.info.clients.first?.websocket == true)
        // A ping gets a pong with the same payload; the RFB stream goes on.
        ws.send([0x89, 0x83, 1, 2, 3, 4, 0x61 ^ 1, 0x62 ^ 2, 0x63 ^ 3])
        #expect(ws.read(5) == [0x8a, 3, 0x61, 0x62, 0x63])
        let version = Array("RFB 003.008\n".utf8)
        ws.send([0x82, 0x80 | 12, 9, 8, 7, 6] + version.enumerated().map { $0.element ^ [9, 8, 7, 6][$0.offset % 4] })
        #expect(ws.read(2 + 2) == [0x82, 2, 1, 1])
        // An unmasked frame from a client is a protocol error: closed.
        ws.send([0x82, 1, 1])
        #expect(ws.closedByServer())
    }

    @Test func aBadUpgradeRequestGets400AndIsClosed() throws {
        let f = try ServerFixture(webSocket: true)
        for request in ["GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                        "POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
                        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
                        "GET / HTTP/1.1\r\n" + String(repeating: "X-Filler: 0123456789\r\n", count: 500)] {
            let ws = try TestSocket(port: f.webSocketPort)
            ws.send(Array(request.utf8))
            let answer = String(decoding: ws.read(12), as: UTF8.self)
            #expect(answer == "HTTP/1.1 400", "\(request.prefix(40))")
            #expect(ws.closedByServer())
        }
        // The VNC port never looks for HTTP: it answers with its version and
        // closes on a request line that is not one.
        let vnc = try TestSocket(port: f.port)
        vnc.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(vnc.read(12) == Array("RFB 003.008\n".utf8))
        #expect(vnc.closedByServer())
    }

    @Test func aPortRangeTakesTheFirstFreePortAndIPv6Listens() throws {
        let frame = FakeFrame(width: 8, height: 8)
        let base = Int.random(in: 20000...40000)
        let range = RFBListenAddress.tcp(host: "127.0.0.1", port: base, lastPort: base + 20, family: .ipv4)
        let first = try RFBServer(options: RFBServerOptions(address: range), source: frame) { _ in }
        defer { first.close() }
        let second = try RFBServer(options: RFBServerOptions(address: range), source: frame) { _ in }
        defer { second.close() }
        let p1 = try #require(Int(first.info.listen.service)), p2 = try #require(Int(second.info.listen.service))
        #expect(p1 >= base && p2 > p1 && p2 <= base + 20)
        let full = RFBListenAddress.tcp(host: "127.0.0.1", port: p1, lastPort: p1, family: .ipv4)
        #expect(throws: RFBError.self) { _ = try RFBServer(options: RFBServerOptions(address: full), source: frame) { _ in } }

        let v6 = try RFBServer(options: RFBServerOptions(address: .tcp(host: "::1", port: 0, lastPort: 0, family: .ipv6)), source: frame) { _ in }
        defer { v6.close() }
        #expect(v6.info.listen.family == "ipv6" && v6.info.listen.host == "::1")
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_port = in_port_t(UInt16(Int(v6.info.listen.service)!).bigEndian)
        addr.sin6_addr.__in6_u.__u6_addr8.15 = 1
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        #expect(rc == 0)
        var version = [UInt8](repeating: 0, count: 12)
        #expect(version.withUnsafeMutableBytes { read(fd, $0.baseAddress, 12) } == 12)
        #expect(version == Array("RFB 003.008\n".utf8))
        let deadline = monotonicSeconds() + 5
        while v6.info.clients.isEmpty && monotonicSeconds() < deadline { usleep(5000) }
        #expect(v6.info.clients.first?.family == "ipv6")
    }

    @Test func closeEndsConnectionsAndCanBeCalledTwice() throws {
        let f = try ServerFixture()
        let c = try TestSocket(port: f.port)
        _ = c.handshake()
        f.server.close()
        #expect(c.closedByServer())
        f.server.close()
        #expect(throws: TestFailure.self) { _ = try TestSocket(port: f.port) }
    }
}
