import Testing
@testable import RFB

@Suite struct DESTests {
    @Test func desMatchesPublishedVectors() {
        // The worked example of FIPS 46 as usually taught, and a second known pair.
        #expect(DES(key: 0x1334_5779_9BBC_DFF1).encrypt(0x0123_4567_89AB_CDEF) == 0x85E8_1354_0F0A_B405)
        #expect(DES(key: 0x0E32_9232_EA6D_0D73).encrypt(0x8787_8787_8787_8787) == 0)
    }

    @Test func vncResponseMatchesOpenSSLWithBitReversedKeys() {
        // openssl enc -des-ecb -K <key with each byte bit-reversed> -nopad (legacy provider)
        #expect(vncAuthResponse(challenge: Array(0..<16), password: Array("password".utf8))
            == hex("b866924125c8eebb9debc1db61c538e2"))
        #expect(vncAuthResponse(challenge: hex("ffeeddccbbaa99887766554433221100"), password: Array("abc".utf8))
            == hex("1644884249e9149e362672340bc2cd41"))
        // Only the first 8 bytes count.
        #expect(vncAuthResponse(challenge: Array(0..<16), password: Array("password-and-more".utf8))
            == hex("b866924125c8eebb9debc1db61c538e2"))
    }
}

func hex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var i = s.startIndex
    while i < s.endIndex {
        let j = s.index(i, offsetBy: 2)
        out.append(UInt8(s[i..<j], radix: 16)!)
        i = j
    }
    return out
}
