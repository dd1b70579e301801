import Testing
@testable import RFB

/// A masked client frame.
func clientFrame(opcode: UInt8, _ payload: [UInt8], fin: Bool = true, mask: [UInt8] = [0x37, 0xfa, 0x21, 0x3d]) -> [UInt8] {
    var f: [UInt8] = [(fin ? 0x80 : 0) | opcode]
    if payload.count < 126 {
        f.append(0x80 | UInt8(payload.count))
    } else if payload.count <= 0xffff {
        f += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
    } else {
        f.append(0x80 | 127)
        for i in (0..<8).reversed() { f.append(UInt8(truncatingIfNeeded: payload.count >> (8 * i))) }
    }
    f += mask
    f += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    return f
}

private struct Decoded {
    var data: [UInt8] = []
    var controls: [WebSocketDecoder.Control] = []
}

private func decode(_ bytes: [UInt8], byteByByte: Bool) throws -> Decoded {
    var d = WebSocketDecoder()
    var out = Decoded()
    let pieces = byteByByte ? bytes.map { [$0] } : [bytes]
    for p in pieces {
        var failure: ProtocolError?
        p.withUnsafeBytes { raw in
            do throws(ProtocolError) {
                try d.feed(raw, data: { out.data += $0 }, control: { out.controls.append($0) })
            } catch { failure = error }
        }
        if let failure { throw failure }
    }
    return out
}

@Suite struct WebSocketTests {
    @Test func sha1AndBase64MatchTheirRFCs() {
        #expect(SHA1.hash(Array("abc".utf8)) == hex("a9993e364706816aba3e25717850c26c9cd0d89d"))
        #expect(SHA1.hash([]) == hex("da39a3ee5e6b4b0d3255bfef95601890afd80709"))
        #expect(SHA1.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
            == hex("84983e441c3bd26ebaae4aa1f95129e5e54670f1"))
        let rfc4648 = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in rfc4648 { #expect(Base64.encode(Array(plain.utf8)) == encoded) }
        #expect(Base64.decodedCount("dGhlIHNhbXBsZSBub25jZQ==") == 16)
        #expect(Base64.decodedCount("dGhl*HNhbXBsZSBub25jZQ==") == nil)
        #expect(Base64.decodedCount("dGhlIHNhbXBsZSBub25jZQ=") == nil)
    }

    @Test func webSocketAcceptIsRFC6455sExample() {
        #expect(WebSocket.accept(key: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func framesDecodeTheSameWholeAndByteByByteIncludingFragmentsAndPings() throws {
        let big = (0..<70000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let stream = clientFrame(opcode: 2, [1, 2, 3]) + clientFrame(opcode: 2, Array(big[0..<300]), fin: false)
            + clientFrame(opcode: 9, [0x68, 0x69]) + clientFrame(opcode: 0, Array(big[300...]))
            + clientFrame(opcode: 10, []) + clientFrame(opcode: 8, [0x03, 0xe8, 0x41])
        for byteByByte in [false, true] {
            let d = try decode(stream, byteByByte: byteByByte)
            #expect(d.data == [1, 2, 3] + big)
            #expect(d.controls == [.ping([0x68, 0x69]), .pong, .close([0x03, 0xe8, 0x41])])
        }
    }

    @Test func malformedOrOversizedFramesAreRefused() {
        var unmasked = clientFrame(opcode: 2, [1])
        unmasked[1] &= 0x7f
        let hugeLength: [UInt8] = [0x82, 0x80 | 127, 0, 0, 0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0]
        let cases: [([UInt8], String)] = [
            (unmasked, "unmasked"),
            (clientFrame(opcode: 1, Array("hi".utf8)), "text"),
            (clientFrame(opcode: 3, []), "reserved opcode"),
            ([0xc2] + clientFrame(opcode: 2, [1]).dropFirst(), "reserved bit"),
            (clientFrame(opcode: 9, [UInt8](repeating: 0, count: 126)), "long control"),
            (clientFrame(opcode: 9, [], fin: false), "fragmented control"),
            (clientFrame(opcode: 0, [1]), "continuation without message"),
            (clientFrame(opcode: 2, [1], fin: false) + clientFrame(opcode: 2, [2]), "binary inside message"),
            (hugeLength, "a frame of 16 MiB + 1 byte"),
            ([0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4], "length with the top bit"),
        ]
        for (bytes, name) in cases {
            #expect(throws: ProtocolError.self, "\(name)") { _ = try decode(bytes, byteByByte: false) }
        }
    }

    @Test func theHandshakeAnswers101OnlyToAValidUpgradeAndBoundsTheRequest() {
        let valid = "GET /websockify HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        var h = WebSocketHandshake()
        let bytes = Array(valid.utf8) + [0x82]
        var outcome = WebSocketHandshake.Outcome.needMore
        for (i, b) in bytes.enumerated() {
            outcome = [b].withUnsafeBytes { h.feed($0) }
            if i < bytes.count - 2 { #expect(outcome == .needMore) } else { break }
        }
        guard case .accepted(let response, let consumed) = outcome else { Issue.record("not accepted: \(outcome)"); return }
        #expect(consumed == 1)
        let text = String(decoding: response, as: UTF8.self)
        #expect(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n") && !text.contains("Sec-WebSocket-Protocol"))

        var subprotocol = WebSocketHandshake()
        let other = valid.replacingOccurrences("\r\n\r\n", "\r\nSec-WebSocket-Protocol: base64\r\n\r\n")
        guard case .rejected = Array(other.utf8).withUnsafeBytes({ subprotocol.feed($0) }) else {
            Issue.record("a request for only the base64 subprotocol was accepted")
            return
        }
        var long = WebSocketHandshake()
        let filler = [UInt8](repeating: 0x41, count: WebSocketHandshake.maxRequest + 1)
        guard case .rejected = filler.withUnsafeBytes({ long.feed($0) }) else {
            Issue.record("an endless request line was not refused")
            return
        }
    }
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound] + replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
