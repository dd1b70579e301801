import Support
import Testing

/// The one QemuOpts parser every QEMU-style option goes through.
@Suite struct QEMUOptionsTests {
    @Test func aDoubledCommaIsALiteralCommaEverywhere() throws {
        #expect(QEMUOptions.split("unix:/a,,b,password=on") == ["unix:/a,b", "password=on"])
        let opts = try QEMUOptions.parse("socket,id=m,path=/run/x,,y,server=on", impliedKey: "backend")
        #expect(opts.map(\.key) == ["backend", "id", "path", "server"])
        #expect(opts[2].value == "/run/x,y")
    }

    @Test func theFirstBareItemIsTheImpliedKeyAndLaterOnesAreFlags() throws {
        let opts = try QEMUOptions.parse("sdl,gl=off,nowait,nodelay,noautostart", impliedKey: "type")
        #expect(opts.map(\.key) == ["type", "gl", "nowait", "nodelay", "autostart"])
        #expect(opts[0].value == "sdl" && opts[2].value == nil && opts[4].value == "off")
    }

    @Test func emptyNamesAndEmptyItemsAreRefusedButATrailingCommaIsNot() throws {
        #expect(throws: QEMUOptions.ParseError.self) { try QEMUOptions.parse("a,=b", impliedKey: nil) }
        #expect(throws: QEMUOptions.ParseError.self) { try QEMUOptions.parse(",b", impliedKey: nil) }
        #expect(try QEMUOptions.parse("a=1,", impliedKey: nil).count == 1)
        #expect(throws: QEMUOptions.ParseError.self) {
            try QEMUOptions.parse(Array(repeating: "k=v", count: QEMUOptions.maxItems + 1).joined(separator: ","), impliedKey: nil)
        }
    }

    @Test func booleansAreQEMUsSpellingsOnly() {
        for on in [nil, "on", "yes", "true", "y"] { #expect(QEMUOptions.bool(on) == true) }
        for off in ["off", "no", "false", "n"] { #expect(QEMUOptions.bool(off) == false) }
        for bad in ["1", "0", "ON", "maybe", ""] { #expect(QEMUOptions.bool(bad) == nil, "\(bad)") }
    }

    @Test func integersAreDigitsWithinTheRange() {
        #expect(QEMUOptions.integer("99", range: 0...99) == 99)
        for bad in ["100", "-1", "+5", " 5", "", "5x", "99999999999999999999"] {
            #expect(QEMUOptions.integer(bad, range: 0...99) == nil, "\(bad)")
        }
    }
}
