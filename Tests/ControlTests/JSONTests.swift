import Testing
@testable import Control

@Suite struct JSONTests {
    @Test func valuesRoundTripThroughText() throws {
        let values: [JSON] = [
            .null, true, false, 0, -1, .int(.max), .int(.min), 1.5, -0.25, 1e300, .double(.leastNonzeroMagnitude),
            "", "plain", "quote \" backslash \\ slash / newline \n tab \t nul \u{0} del \u{7F}", "é ☃ 𝄞 😀",
            [], [1, "two", [3.0, nil]], [:],
            ["execute": "query-status", "id": ["a": [1, 2], "b": nil], "arguments": [:]],
        ]
        for v in values {
            let text = v.serialized
            #expect(try JSON.parse(text) == v, "\(text)")
            #expect(try JSON.parse(v.prettySerialized) == v)
        }
    }

    @Test func objectsKeepInsertionOrderButCompareUnordered() throws {
        let parsed = try JSON.parse(#"{"b":1,"a":2,"c":{"z":[],"y":{}}}"#)
        #expect(parsed.serialized == #"{"b":1,"a":2,"c":{"z":[],"y":{}}}"#)
        #expect(parsed == ["a": 2, "c": ["y": [:], "z": []], "b": 1])
        #expect(parsed != ["a": 2, "b": 1])
    }

    @Test func numbersAreIntegersWhenTheyFitAndDoublesOtherwise() throws {
        #expect(try JSON.parse("42") == .int(42))
        #expect(try JSON.parse("-0") == .int(0))
        #expect(try JSON.parse("9223372036854775807") == .int(.max))
        #expect(try JSON.parse("-9223372036854775808") == .int(.min))
        #expect(try JSON.parse("9223372036854775808") == .double(9223372036854775808))
        #expect(try JSON.parse("1.0") == .double(1))
        #expect(try JSON.parse("1e2") == .double(100))
        #expect(try JSON.parse("-2.5E-3") == .double(-0.0025))
        #expect(try JSON.parse("0.1").serialized == "0.1")
    }

    @Test func escapesIncludingSurrogatePairsDecode() throws {
        #expect(try JSON.parse(#""\u0041\u00e9\u2603\uD834\uDD1E\ud83d\ude00""#) == "Aé☃𝄞😀")
        #expect(try JSON.parse(#""\"\\\/\b\f\n\r\t""#) == "\"\\/\u{8}\u{C}\n\r\t")
        #expect(try JSON.parse(#""\u0000""#) == "\u{0}")
    }

    @Test func serializerEscapesControlCharacters() {
        #expect(JSON.string("a\u{1}b\nc\"").serialized == #""a\u0001b\nc\"""#)
    }

    @Test func invalidTextsAreRejectedWithTheirReason() {
        let cases: [(String, JSONError.Kind)] = [
            ("", .empty), ("   ", .unexpectedEnd), ("{", .unexpectedEnd), ("[1,", .unexpectedEnd),
            ("[1,]", .unexpectedCharacter), ("{\"a\":1,}", .unexpectedCharacter), ("{a:1}", .unexpectedCharacter),
            ("01", .invalidNumber), ("-", .invalidNumber), ("1.", .invalidNumber), (".5", .unexpectedCharacter),
            ("1e", .invalidNumber), ("+1", .unexpectedCharacter), ("1e400", .numberOutOfRange),
            ("NaN", .unexpectedCharacter), ("Infinity", .unexpectedCharacter), ("tru", .unexpectedEnd),
            ("nul", .unexpectedEnd), ("truth", .unexpectedCharacter), ("\"abc", .unexpectedEnd),
            ("\"a\u{1}b\"", .controlCharacterInString), ("\"\\x\"", .invalidEscape), ("\"\\u12\"", .unexpectedEnd), ("\"\\u12zz\"", .invalidEscape),
            ("\"\\uD834\"", .invalidSurrogate), ("\"\\uDD1E\"", .invalidSurrogate),
            ("\"\\uD834\\u0041\"", .invalidSurrogate), ("1 2", .trailingCharacters), ("{} x", .trailingCharacters),
            ("{\"a\":1,\"a\":2}", .duplicateKey), ("// c\n1", .unexpectedCharacter), ("'a'", .unexpectedCharacter),
            ("[1 2]", .unexpectedCharacter), ("{\"a\" 1}", .unexpectedCharacter), ("\u{FEFF}1", .unexpectedCharacter),
        ]
        for (text, kind) in cases {
            #expect(throws: JSONError.self, "\(text)") { try JSON.parse(text) }
            do { _ = try JSON.parse(text) } catch { #expect(error.kind == kind, "\(text): \(error)") }
        }
    }

    @Test func invalidUTF8IsRejected() throws {
        let cases: [[UInt8]] = [
            [0x22, 0xC0, 0xAF, 0x22],             // overlong '/'
            [0x22, 0xED, 0xA0, 0x80, 0x22],       // encoded surrogate
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], // above U+10FFFF
            [0x22, 0xE2, 0x98, 0x22],             // truncated
            [0x22, 0xFF, 0x22],
            [0x22, 0x80, 0x22],
        ]
        for bytes in cases {
            #expect(throws: JSONError(kind: .invalidUTF8, offset: 1)) { try JSON.parse(bytes) }
        }
        #expect(try JSON.parse([0x22, 0xF0, 0x9F, 0x98, 0x80, 0x22]) == "😀")
    }

    @Test func depthAndSizeAreLimited() throws {
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect(throws: JSONError.self) { try JSON.parse(deep) }
        let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(try JSON.parse(ok) != .null)
        let veryDeep = String(repeating: "[", count: 100_000)
        #expect(throws: JSONError.self) { try JSON.parse(veryDeep) }
        let big = "\"" + String(repeating: "a", count: 100) + "\""
        #expect(throws: JSONError(kind: .tooLarge, offset: 50)) { try JSON.parse(big, limits: .init(maxBytes: 50)) }
    }

    @Test func randomMutationsOfValidTextNeverCrash() {
        let seeds = [#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"\ud83d\ude00"},"id":[1,2.5e3,null,true]}"#,
                     #"[{"a":-0.0e+1},"\u00e9",[[[]]],{}]"#]
        var state: UInt64 = 12345
        func random(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
        var accepted = 0
        for _ in 0..<5000 {
            var bytes = Array(seeds[random(seeds.count)].utf8)
            for _ in 0..<(1 + random(4)) {
                let i = random(bytes.count)
                switch random(3) {
                case 0: bytes[i] = UInt8(truncatingIfNeeded: random(256))
                case 1: bytes.remove(at: i)
                default: bytes.insert(UInt8(truncatingIfNeeded: random(256)), at: i)
                }
            }
            if let v = try? JSON.parse(bytes) {
                accepted += 1
                #expect((try? JSON.parse(v.serialized)) == v)
            }
        }
        #expect(accepted < 5000)
    }
}

@Suite struct JSONStreamSplitterTests {
    @Test func messagesAreCutWithOrWithoutLineEnds() {
        var s = JSONStreamSplitter()
        s.append(Array(#"{"execute":"a"}{"execute":"b"}"#.utf8) + [13, 10] + Array(#"  [1,{"x":"}{]"}]"#.utf8))
        #expect(s.next() == .message(Array(#"{"execute":"a"}"#.utf8)))
        #expect(s.next() == .message(Array(#"{"execute":"b"}"#.utf8)))
        #expect(s.next() == .message(Array(#"[1,{"x":"}{]"}]"#.utf8)))
        #expect(s.next() == nil)
        #expect(s.pendingBytes == 0)
    }

    @Test func messagesSplitOverManyReadsAreReassembled() {
        let text = Array(#"{"execute":"x","arguments":{"s":"a\"}b"}}"#.utf8)
        var s = JSONStreamSplitter()
        var got: [JSONStreamSplitter.Piece] = []
        for b in text {
            s.append([b])
            while let p = s.next() { got.append(p) }
        }
        #expect(got == [.message(text)])
    }

    @Test func strayTextIsReturnedPerLine() {
        var s = JSONStreamSplitter()
        s.append(Array("garbage here\r\n42\n{}".utf8))
        #expect(s.next() == .stray(Array("garbage here".utf8)))
        #expect(s.next() == .stray(Array("42".utf8)))
        #expect(s.next() == .message(Array("{}".utf8)))
    }

    @Test func overlongInputIsReportedOnceAndThenIgnored() {
        var s = JSONStreamSplitter(maxBytes: 100)
        s.append(Array("{\"a\":\"".utf8) + Array(repeating: UInt8(ascii: "x"), count: 200))
        #expect(s.next() == .tooLong)
        s.append(Array("{}".utf8))
        #expect(s.next() == nil)
        var t = JSONStreamSplitter(maxBytes: 100)
        t.append(Array(repeating: UInt8(ascii: "x"), count: 101))
        #expect(t.next() == .tooLong)
    }

    @Test func whitespaceFloodsAreConsumedWithoutGrowing() {
        var s = JSONStreamSplitter(maxBytes: 100)
        for _ in 0..<100 {
            s.append(Array(repeating: UInt8(ascii: " "), count: 1000))
            #expect(s.next() == nil)
        }
        #expect(s.pendingBytes == 0)
    }
}
