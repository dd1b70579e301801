import Testing
@testable import RFB

/// Every message, once whole and once one byte at a time.
private let samples: [([UInt8], ClientMessage)] = [
    ([0, 0, 0, 0, 16, 15, 1, 1, 0, 31, 0, 31, 0, 31, 10, 5, 0, 0, 0, 0],
     .setPixelFormat(RFBPixelFormat(bitsPerPixel: 16, depth: 15, bigEndian: true, trueColour: true, redMax: 31, greenMax: 31,
                                    blueMax: 31, redShift: 10, greenShift: 5, blueShift: 0))),
    ([2, 0, 0, 2, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0x21], .setEncodings([16, -223])),
    ([2, 0, 0, 0], .setEncodings([])),
    ([3, 1, 0, 1, 0, 2, 0x01, 0x00, 0x00, 0x80], .framebufferUpdateRequest(incremental: true, x: 1, y: 2, width: 256, height: 128)),
    ([4, 1, 0, 0, 0, 0, 0xff, 0x0d], .keyEvent(down: true, keysym: 0xff0d)),
    ([5, 3, 0x01, 0x02, 0x00, 0x05], .pointerEvent(buttons: 3, x: 258, y: 5)),
    ([6, 0, 0, 0, 0, 0, 0, 3, 0x61, 0x62, 0x63], .clientCutText(length: 3)),
    ([6, 0, 0, 0, 0xff, 0xff, 0xff, 0xfc, 0, 0, 0, 0], .clientCutText(length: 4)), // extended clipboard: -4
    ([255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e], .qemuExtendedKeyEvent(down: true, keysym: 0x61, keycode: 0x1e)),
    ([251, 0, 0x04, 0x00, 0x03, 0x00, 1, 0] + [UInt8](repeating: 7, count: 16), .setDesktopSize(width: 1024, height: 768, screens: 1)),
]

@Suite struct ParserTests {
    @Test func everyMessageParsesTheSameWholeAndByteByByte() throws {
        for (bytes, expected) in samples {
            var whole = ClientMessageParser()
            var got: [ClientMessage] = []
            try whole.feed(bytes) { got.append($0) }
            #expect(got == [expected], "whole \(bytes)")

            var split = ClientMessageParser()
            var pieces: [ClientMessage] = []
            for (i, b) in bytes.enumerated() {
                try split.feed([b]) { pieces.append($0) }
                if i < bytes.count - 1 { #expect(pieces.isEmpty, "reported before its last byte: \(bytes)") }
            }
            #expect(pieces == [expected], "byte by byte \(bytes)")
        }
    }

    @Test func allMessagesInOneBufferComeOutInOrder() throws {
        var parser = ClientMessageParser()
        var got: [ClientMessage] = []
        try parser.feed(samples.flatMap(\.0)) { got.append($0) }
        #expect(got == samples.map(\.1))
    }

    @Test func setEncodingsKeepsTheFirst256AndSkipsTheRest() throws {
        var bytes: [UInt8] = [2, 0, 0x03, 0xe8] // 1000 encodings
        for i in 0..<1000 { bytes += [0, 0, UInt8(i >> 8), UInt8(i & 0xff)] }
        bytes += [4, 0, 0, 0, 0, 0, 0, 0x41]
        var parser = ClientMessageParser()
        var got: [ClientMessage] = []
        try parser.feed(bytes) { got.append($0) }
        #expect(got.count == 2)
        #expect(got.first == .setEncodings((0..<256).map { Int32($0) }))
        #expect(got.last == .keyEvent(down: false, keysym: 0x41))
    }

    @Test func clipboardLongerThanOneMebibyteClosesTheClient() {
        for length: [UInt8] in [[0x00, 0x10, 0x00, 0x01], [0x80, 0x00, 0x00, 0x00], [0x7f, 0xff, 0xff, 0xff], [0xff, 0xef, 0xff, 0xff]] {
            var parser = ClientMessageParser()
            #expect(throws: ProtocolError.self) { try parser.feed([6, 0, 0, 0] + length) { _ in } }
        }
    }

    @Test func clipboardOfExactlyTheLimitIsSkippedWithoutBeingStored() throws {
        var parser = ClientMessageParser()
        var got: [ClientMessage] = []
        try parser.feed([6, 0, 0, 0, 0x00, 0x10, 0x00, 0x00]) { got.append($0) }
        for _ in 0..<16 { try parser.feed([UInt8](repeating: 0x61, count: 65536)) { got.append($0) } }
        #expect(got == [.clientCutText(length: 1 << 20)])
    }

    @Test func unknownTypesAndQEMUSubmessagesOtherThanKeysAreErrors() {
        for bytes: [UInt8] in [[1], [7], [150], [248], [255, 1, 0, 0], [255, 2]] {
            var parser = ClientMessageParser()
            #expect(throws: ProtocolError.self, "\(bytes)") { try parser.feed(bytes) { _ in } }
        }
    }

    @Test func randomBytesNeverTrap() {
        var rng = SplitMix(seed: 42)
        for _ in 0..<2000 {
            var parser = ClientMessageParser()
            let n = Int(rng.next() % 200)
            let bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = try? parser.feed(bytes) { _ in }
        }
    }
}

/// A small deterministic generator for hostile-input tests.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
