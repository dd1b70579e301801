import Testing
@testable import RFB

@Suite struct PasswordExpiryTests {
    @Test func qmpTimesParse() {
        #expect(RFBPasswordExpiry(qmp: "now") == .now)
        #expect(RFBPasswordExpiry(qmp: "never") == .never)
        #expect(RFBPasswordExpiry(qmp: "+60") == .after(seconds: 60))
        #expect(RFBPasswordExpiry(qmp: "1700000000") == .at(unixTime: 1_700_000_000))
        for bad in ["", "+", "-5", "+-5", "1e9", " 5", "5 ", "soon", "++5", String(repeating: "9", count: 100)] {
            #expect(RFBPasswordExpiry(qmp: bad) == nil, "\(bad)")
        }
    }

    @Test func hugeRelativeTimesSaturateInsteadOfOverflowing() {
        // A QMP client sent this and crashed the libvncserver-based code.
        let e = RFBPasswordExpiry(qmp: "+9223372036854775807")
        #expect(e == .after(seconds: Int.max))
        #expect(e?.deadline(now: 1_700_000_000) == nil) // never, in effect
        #expect(RFBPasswordExpiry(qmp: "+99999999999999999999999") == .after(seconds: Int.max))
        #expect(RFBPasswordExpiry(qmp: "99999999999999999999999") == .at(unixTime: Int.max))
        #expect(RFBPasswordExpiry.after(seconds: Int.max).deadline(now: Int.max) == nil)
        #expect(RFBPasswordExpiry.after(seconds: -5).deadline(now: 100) == 100)
        #expect(RFBPasswordExpiry.after(seconds: 5).deadline(now: 100) == 105)
        #expect(RFBPasswordExpiry.now.deadline(now: 100) == Int.min)
        #expect(RFBPasswordExpiry.at(unixTime: 7).deadline(now: 100) == 7)
        #expect(RFBPasswordExpiry.never.deadline(now: 100) == nil)
    }
}
