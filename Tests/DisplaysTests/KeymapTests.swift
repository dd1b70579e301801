#if canImport(Glibc)
import Glibc
#endif
@testable import Displays
import Testing

// Keysyms (X11 keysymdef.h) and Linux key codes the tests use.
private let XK_Shift_L: UInt32 = 0xffe1, XK_Caps_Lock: UInt32 = 0xffe5, XK_Tab: UInt32 = 0xff09
private let XK_ISO_Level3_Shift: UInt32 = 0xfe03, XK_KP_1: UInt32 = 0xffb1, XK_KP_End: UInt32 = 0xff9c
private let XK_EuroSign: UInt32 = 0x20ac
private let SHIFT: UInt32 = 42, ALTGR: UInt32 = 100, CAPS: UInt32 = 58, NUMLOCK: UInt32 = 69
private let KEY_Q: UInt32 = 16, KEY_E: UInt32 = 18, KEY_A: UInt32 = 30, KEY_2: UInt32 = 3, KEY_TAB: UInt32 = 15

private func down(_ code: UInt32) -> KeyEvent { KeyEvent(code: code, pressed: true) }
private func up(_ code: UInt32) -> KeyEvent { KeyEvent(code: code, pressed: false) }

/// Types keysyms (down or up) through a keymap, collecting what the guest gets.
private final class Typist {
    let keymap: Keymap
    var state = KeymapState()

    init(_ name: String) throws { keymap = try Keymap(name: name) }

    func press(_ keysym: UInt32) -> [KeyEvent]? { keymap.keyEvents(keysym: keysym, down: true, state: &state) }
    func release(_ keysym: UInt32) -> [KeyEvent]? { keymap.keyEvents(keysym: keysym, down: false, state: &state) }
    func tap(_ keysym: UInt32) -> [KeyEvent]? {
        guard let d = press(keysym), let u = release(keysym) else { return nil }
        return d + u
    }
}

@Suite struct KeymapTests {
    @Test func everyQEMUKeymapNameHasAGeneratedTable() throws {
        // QEMU's -k names (pc-bios/keymaps), with ar, its older name for ara.
        let qemu = ["ar", "ara", "bepo", "cz", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi", "fo", "fr",
                    "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv", "mk", "nl", "no", "pl",
                    "pt", "pt-br", "ru", "sl", "sv", "th", "tr"]
        #expect(Keymap.names == qemu)
        for name in qemu {
            let k = try Keymap(name: name)
            #expect(k.count > 200, "\(name): \(k.count) keysyms")
            // Every layout types space, digits or their shifted row, Return and the function keys.
            for keysym: UInt32 in [0x20, 0xff0d, 0xff1b, 0xffbe, 0xffc9, 0xff52, XK_Shift_L] {
                #expect(k.keycode(forKeysym: keysym) != nil, "\(name): keysym 0x\(String(keysym, radix: 16))")
            }
        }
    }

    @Test func unknownKeymapIsAnErrorThatListsTheNames() {
        #expect(throws: UnknownKeymap(name: "xx")) { try Keymap(name: "xx") }
        #expect(UnknownKeymap(name: "xx").description.contains("en-us, es, et"))
        #expect(throws: UnknownKeymap.self) { try Keymap(name: "EN-US") }
    }

    @Test func enUSMapsLettersDigitsPunctuationAndSpecialKeys() throws {
        let k = try Keymap(name: "en-us")
        let expected: [(UInt32, UInt32?)] = [
            (0x61, 30), (0x41, 30), (0x31, 2), (0x21, 2), (0x40, 3), (0x3a, 39), (0x7c, 43), (0x60, 41),
            (0x2f, 53), (0x20, 57), (0xff0d, 28), (0xffe1, 42), (0xffbe, 59), (0xffc9, 88), (0xff52, 103),
            (0xffb7, 71), (0x0100_0061, 30), (0xe4, nil), (0xfe03, 100), (0xff61, 99),
        ]
        for (keysym, code) in expected {
            #expect(k.keycode(forKeysym: keysym) == code, "keysym 0x\(String(keysym, radix: 16))")
        }
    }

    @Test func germanAndFrenchLayoutsPutKeysymsOnTheirKeys() throws {
        let de = try Keymap(name: "de")
        for (keysym, code): (UInt32, UInt32) in [(0x7a, 21), (0x79, 44), (0xfc, 26), (0xf6, 39), (0xe4, 40), (0xdf, 12),
                                                 (0x40, 16), (0x7b, 8), (0x20ac, 18), (0x2d, 53), (0x3c, 86), (0x22, 3)] {
            #expect(de.keycode(forKeysym: keysym) == code, "de keysym 0x\(String(keysym, radix: 16))")
        }
        let fr = try Keymap(name: "fr")
        for (keysym, code): (UInt32, UInt32) in [(0x61, 16), (0x71, 30), (0x7a, 17), (0x77, 44), (0x6d, 39), (0x31, 2),
                                                 (0xe9, 3), (0x26, 2), (0x40, 11), (0x2c, 50), (0xf9, 40)] {
            #expect(fr.keycode(forKeysym: keysym) == code, "fr keysym 0x\(String(keysym, radix: 16))")
        }
    }

    @Test func aKeysymNeedingAltGrGetsAltGrAroundItsKey() throws {
        let t = try Typist("de")
        #expect(t.press(0x40) == [down(ALTGR), down(KEY_Q)])            // @ = AltGr+Q
        #expect(t.release(0x40) == [up(KEY_Q), up(ALTGR)])
        #expect(t.tap(XK_EuroSign) == [down(ALTGR), down(KEY_E), up(KEY_E), up(ALTGR)])
        #expect(t.state.down.isEmpty)
    }

    @Test func anUppercaseLetterWithoutShiftGetsShift() throws {
        let t = try Typist("en-us")
        #expect(t.tap(0x41) == [down(SHIFT), down(KEY_A), up(KEY_A), up(SHIFT)])
        #expect(t.tap(0x61) == [down(KEY_A), up(KEY_A)])
    }

    @Test func theClientsOwnShiftIsUsedAndNotRepeated() throws {
        let t = try Typist("en-us")
        #expect(t.press(XK_Shift_L) == [down(SHIFT)])
        #expect(t.tap(0x41) == [down(KEY_A), up(KEY_A)])
        #expect(t.tap(0x40) == [down(KEY_2), up(KEY_2)])              // @ = Shift+2
        #expect(t.release(XK_Shift_L) == [up(SHIFT)])
    }

    @Test func aKeysymThatMustNotHaveShiftReleasesTheClientsShiftForItsKey() throws {
        // A US client types @ with Shift+2 and sends Shift_L, then '@'; on a
        // German guest @ is AltGr+Q, without Shift.
        let t = try Typist("de")
        #expect(t.press(XK_Shift_L) == [down(SHIFT)])
        #expect(t.press(0x40) == [up(SHIFT), down(ALTGR), down(KEY_Q)])
        #expect(t.release(0x40) == [up(KEY_Q), up(ALTGR), down(SHIFT)])
        #expect(t.release(XK_Shift_L) == [up(SHIFT)])
        #expect(t.state.down.isEmpty)
    }

    @Test func shiftTabKeepsTheClientsShift() throws {
        let t = try Typist("de")
        _ = t.press(XK_Shift_L)
        #expect(t.tap(XK_Tab) == [down(KEY_TAB), up(KEY_TAB)])
        #expect(t.state.down == [SHIFT])
    }

    @Test func capsLockTheClientToggledTurnsTheShiftOfLettersAround() throws {
        let t = try Typist("en-us")
        #expect(t.tap(XK_Caps_Lock) == [down(CAPS), up(CAPS)])
        #expect(t.state.capsLock)
        #expect(t.tap(0x41) == [down(KEY_A), up(KEY_A)])                      // A: Caps Lock does it
        #expect(t.tap(0x61) == [down(SHIFT), down(KEY_A), up(KEY_A), up(SHIFT)]) // a: Shift undoes it
        #expect(t.tap(0x40) == [down(SHIFT), down(KEY_2), up(KEY_2), up(SHIFT)]) // @: not a letter
    }

    @Test func aKeypadKeysymFirstSetsNumLockTheWayItNeeds() throws {
        let t = try Typist("en-us")
        #expect(t.tap(XK_KP_1) == [down(NUMLOCK), up(NUMLOCK), down(79), up(79)])
        #expect(t.state.numLock)
        #expect(t.tap(XK_KP_1) == [down(79), up(79)])
        #expect(t.tap(XK_KP_End) == [down(NUMLOCK), up(NUMLOCK), down(79), up(79)])
        #expect(!t.state.numLock)
        #expect(t.tap(0xffad) == [down(74), up(74)])                          // KP_Subtract: NumLock left alone
    }

    @Test func aKeysymTheLayoutCannotTypeIsDropped() throws {
        let t = try Typist("en-us")
        #expect(t.press(0xe4) == nil)              // ä
        #expect(t.release(0xe4) == nil)
        #expect(t.press(0x0100_4e2d) == nil)       // 中
        #expect(t.state.down.isEmpty)
        var reports = UnmappedKeysyms()
        let first = reports.firstReport(0xe4), second = reports.firstReport(0xe4)
        #expect(first && !second)
        for keysym in UInt32(1)...UInt32(1000) { _ = reports.firstReport(0x0100_0000 + keysym) }
        #expect(reports.reported.count == UnmappedKeysyms.limit)
    }

    @Test func unicodeKeysymsFindTheirCharactersKey() throws {
        let t = try Typist("de")
        #expect(t.tap(0x0100_20ac) == [down(ALTGR), down(KEY_E), up(KEY_E), up(ALTGR)])  // U+20AC €
        #expect(t.tap(0x0100_00e4) == [down(40), up(40)])                                 // U+00E4 ä
        let ru = try Typist("ru")
        #expect(ru.tap(0x0100_0444) == [down(KEY_A), up(KEY_A)])   // U+0444 ф, Cyrillic_ef
        #expect(ru.tap(0x6c6) == [down(KEY_A), up(KEY_A)])         // Cyrillic_ef
    }

    @Test func aReleaseGoesToTheKeyThePressWentTo() throws {
        // 'a' goes down; Shift_L; the client releases the key as 'A'.
        let t = try Typist("en-us")
        _ = t.press(0x61)
        _ = t.press(XK_Shift_L)
        #expect(t.release(0x41) == [up(KEY_A)])
        #expect(t.release(XK_Shift_L) == [up(SHIFT)])
        #expect(t.release(0x61) == [])             // nothing left to release
        #expect(t.state.down.isEmpty)
    }

    @Test func overlappingKeysEachGetTheirOwnModifiers() throws {
        let t = try Typist("de")
        #expect(t.press(0x40) == [down(ALTGR), down(KEY_Q)])       // @ down
        #expect(t.press(0x61) == [up(ALTGR), down(KEY_A)])         // a down: AltGr would type æ
        #expect(t.release(0x40) == [up(KEY_Q)])
        #expect(t.release(0x61) == [up(KEY_A)])
        #expect(t.state.down.isEmpty)
    }

    @Test func aKeysymOnSeveralKeysTakesTheOneTheClientsModifiersFit() throws {
        // en-gb: { is Shift+[ and AltGr+7.
        let t = try Typist("en-gb")
        #expect(t.tap(0x7b) == [down(SHIFT), down(26), up(26), up(SHIFT)])
        _ = t.press(XK_ISO_Level3_Shift)
        #expect(t.tap(0x7b) == [down(8), up(8)])
        _ = t.release(XK_ISO_Level3_Shift)
        #expect(t.state.down.isEmpty)
    }

    @Test func keysFromTheExtendedKeyEventCountAsTheClients() throws {
        let t = try Typist("en-us")
        t.state.record(down(SHIFT))
        #expect(t.tap(0x41) == [down(KEY_A), up(KEY_A)])
        t.state.record(up(SHIFT))
        #expect(t.state.down.isEmpty)
    }

    @Test func tablesAreParsedDefensively() {
        let (keysyms, entries) = Keymap.parse("1e g61 h41\nzz 300 g62 1 q 12345678901 g63 gffffffff0")
        // KEY 0x300 is above KEY_MAX: its entry is dropped; the 11-digit code
        // is no code, so g63 after it is dropped; the 9-digit keysym is dropped.
        #expect(keysyms == [0x41, 0x61])
        #expect(entries.map(\.code) == [0x1e, 0x1e])
    }

    @Test func xtScancodesMapToLinuxKeycodes() {
        #expect(XTScancode.linuxKeycode(0x1e) == 30)  // A
        #expect(XTScancode.linuxKeycode(0x1c) == 28)  // Enter
        #expect(XTScancode.linuxKeycode(0x9c) == 96)  // KP Enter (E0 1C)
        #expect(XTScancode.linuxKeycode(0x9d) == 97)  // right Ctrl (E0 1D)
        #expect(XTScancode.linuxKeycode(0xb8) == 100) // AltGr (E0 38)
        #expect(XTScancode.linuxKeycode(0xc8) == 103) // Up (E0 48)
        #expect(XTScancode.linuxKeycode(0xdb) == 125) // left Meta (E0 5B)
        #expect(XTScancode.linuxKeycode(0x56) == 86)  // 102nd key
        #expect(XTScancode.linuxKeycode(0) == nil)
        #expect(XTScancode.linuxKeycode(0xff) == nil)
    }
}

/// The committed KeymapLayouts.swift is what scripts/keymaps/generate.py
/// makes from this machine's xkeyboard-config, when it is the version the
/// file was generated from (Debian 12's xkb-data, as on CI).
@Suite struct KeymapLayoutsTests {
    static var installedXkeyboardConfig: String? {
        guard let bytes = readFile("/usr/share/pkgconfig/xkeyboard-config.pc") else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("Version:") {
            return line.dropFirst("Version:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.map(String.init)
        }
        return nil
    }

    @Test(.enabled(if: installedXkeyboardConfig == Keymap.xkeyboardConfigVersion && access("/usr/bin/python3", X_OK) == 0,
                   "needs python3 and xkb-data \(Keymap.xkeyboardConfigVersion) (scripts/deps.sh test)"))
    func generatedLayoutsMatchXkeyboardConfig() throws {
        let dir = try makeTempDir("keymaps")
        defer { removeTree(dir) }
        let out = dir + "/KeymapLayouts.swift"
        let r = run(["/usr/bin/python3", packageRoot + "/scripts/keymaps/generate.py", "-o", out])
        #expect(r.status == 0, "\(r.output)")
        let regenerated = readFile(out)
        let committed = readFile(packageRoot + "/Sources/Displays/KeymapLayouts.swift")
        #expect(regenerated != nil && regenerated == committed,
                "Sources/Displays/KeymapLayouts.swift is not what scripts/keymaps/generate.py makes: run it")
    }
}
