import Testing
@testable import Support

@Suite struct ByteReaderTests {
    @Test func readsLittleEndianAndRefusesToLeaveTheBuffer() {
        let bytes: [UInt8] = [1, 0, 0, 0, 0xff, 0xff]
        bytes.withUnsafeBytes { raw in
            var r = ByteReader(raw)
            #expect(r.read(UInt32.self) == 1)
            #expect(r.read(UInt32.self) == nil)   // only 2 bytes left
            #expect(r.read(UInt16.self) == 0xffff)
            #expect(r.read(UInt8.self) == nil)
            #expect(r.load(UInt16.self, at: -1) == nil)
            #expect(r.load(UInt16.self, at: Int.max) == nil)
        }
    }

    @Test func decimalParsingRejectsWhatXenstoreNeverWrites() {
        #expect(UInt32(xenstoreDecimal: "42") == 42)
        #expect(UInt32(xenstoreDecimal: "") == nil)
        #expect(UInt32(xenstoreDecimal: " 42") == nil)
        #expect(UInt32(xenstoreDecimal: "0x10") == nil)
        #expect(UInt32(xenstoreDecimal: "4294967296") == nil)
        #expect(Int32(xenstoreDecimal: "-5") == -5)
    }
}
