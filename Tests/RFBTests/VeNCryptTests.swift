import Testing
@testable import RFB

/// The VeNCrypt negotiation (rfbproto "VeNCrypt", as QEMU's
/// vnc-auth-vencrypt.c speaks it) up to the point where the connection
/// starts TLS, and what follows the TLS handshake. The TLS itself is tested
/// with real clients (EndToEndTests/ClientMatrixTests).
@Suite struct VeNCryptTests {
    /// Version, security type 19, VeNCrypt 0.2, the subtype; returns the harness in `.tlsHandshake`.
    func negotiate(password: Bool, byteByByte: Bool = false) throws -> SessionHarness {
        let h = SessionHarness(frame: FakeFrame(width: 5, height: 3), passwordRequired: password, vencrypt: true)
        #expect(h.take(12) == Array("RFB 003.008\n".utf8))
        try h.send(Array("RFB 003.008\n".utf8), byteByByte: byteByByte)
        #expect(h.take(2) == [1, 19], "only VeNCrypt is offered")
        try h.send([19])
        #expect(h.take(2) == [0, 2], "VeNCrypt 0.2")
        try h.send([0, 2], byteByByte: byteByByte)
        let subtype: UInt8 = password ? 5 : 4 // 261 X509Vnc, 260 X509None
        #expect(h.take(6) == [0, 1, 0, 0, 1, subtype], "version accepted, one subtype")
        try h.send([0, 0, 1, subtype], byteByByte: byteByByte)
        #expect(h.take(1) == [1], "subtype accepted")
        #expect(h.session.phase == .tlsHandshake)
        #expect(h.pending.isEmpty)
        return h
    }

    @Test func x509NoneSendsTheSecurityResultOnceTLSIsUpAndThenServerInit() throws {
        let h = try negotiate(password: false, byteByByte: true)
        h.session.tlsEstablished()
        h.drain()
        #expect(h.take(4) == [0, 0, 0, 0])
        try h.send([1])
        #expect(h.take(4) == [0, 5, 0, 3])
        #expect(h.session.phase == .normal)
    }

    @Test func x509VncRunsVNCAuthenticationInsideTLS() throws {
        let h = try negotiate(password: true)
        h.password = Array("pw".utf8)
        h.session.tlsEstablished()
        h.drain()
        let challenge = try #require(h.take(16))
        try h.send(vncAuthResponse(challenge: challenge, password: Array("pw".utf8)))
        #expect(h.take(4) == [0, 0, 0, 0])
        try h.send([0])
        #expect(h.session.phase == .normal)
    }

    @Test func bytesAfterTheSubtypeAreKeptForTLSNotParsedAsRFB() throws {
        let h = SessionHarness(frame: FakeFrame(width: 5, height: 3), vencrypt: true)
        // A client that sends its ClientHello without waiting for the ack.
        let hello: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]
        try h.send(Array("RFB 003.008\n".utf8) + [19, 0, 2, 0, 0, 1, 4] + hello)
        #expect(h.session.phase == .tlsHandshake)
        #expect(h.session.takeTLSPrefix() == hello)
        #expect(h.session.takeTLSPrefix().isEmpty)
    }

    @Test func wrongChoicesAreRefusedAsQEMURefusesThem() throws {
        // Security type None when VeNCrypt is offered: a failed security result.
        let a = SessionHarness(frame: FakeFrame(width: 5, height: 3), vencrypt: true)
        #expect(throws: ProtocolError.self) { try a.send(Array("RFB 003.008\n".utf8) + [1]) }
        a.drain()
        #expect(a.pending.suffix(4 + 4 + 21).prefix(4) == [0, 0, 0, 1])
        // VeNCrypt 0.1: refused with 1.
        let b = SessionHarness(frame: FakeFrame(width: 5, height: 3), vencrypt: true)
        #expect(throws: ProtocolError.self) { try b.send(Array("RFB 003.008\n".utf8) + [19, 0, 1]) }
        b.drain()
        #expect(b.pending.last == 1)
        #expect(b.session.phase == .closing)
        // A subtype that was not offered (X509Plain, 262): refused with 0.
        let c = SessionHarness(frame: FakeFrame(width: 5, height: 3), vencrypt: true)
        #expect(throws: ProtocolError.self) { try c.send(Array("RFB 003.008\n".utf8) + [19, 0, 2, 0, 0, 1, 6]) }
        c.drain()
        #expect(c.pending.last == 0)
        #expect(c.session.phase == .closing)
        // RFB 3.3 cannot negotiate a security type: refused with a reason.
        let d = SessionHarness(frame: FakeFrame(width: 5, height: 3), vencrypt: true)
        #expect(throws: ProtocolError.self) { try d.send(Array("RFB 003.003\n".utf8)) }
        d.drain()
        #expect(d.pending.dropFirst(12).prefix(4) == [0, 0, 0, 0])
    }

    @Test func tlsEstablishedOutsideTheHandshakeDoesNothing() throws {
        let h = SessionHarness(frame: FakeFrame(width: 5, height: 3), vencrypt: true)
        h.session.tlsEstablished()
        h.drain()
        #expect(h.session.phase == .version)
        #expect(h.pending == Array("RFB 003.008\n".utf8))
    }

    @Test func queryVNCNamesTheSubtypeAsQEMU() {
        var info = RFBServerInfo(listen: RFBListenInfo(host: "", service: "", family: ""), listeners: [], websockets: [],
                                 auth: "none", clients: [])
        #expect(info.queryVNCAuth == "none")
        info.vencrypt = "x509-none"
        #expect(info.queryVNCAuth == "vencrypt+x509+none")
        info.auth = "vnc"
        info.vencrypt = "x509-vnc"
        #expect(info.queryVNCAuth == "vencrypt+x509+vnc")
    }
}
