import Control
import Testing

@Suite struct QKeyCodeTests {
    @Test func qcodesMapToTheLinuxKeysOfAPCKeyboard() {
        let expected: [String: UInt32] = [
            "esc": 1, "1": 2, "0": 11, "a": 30, "z": 44, "q": 16, "p": 25, "ret": 28, "spc": 57,
            "shift": 42, "shift_r": 54, "ctrl": 29, "ctrl_r": 97, "alt": 56, "alt_r": 100,
            "meta_l": 125, "meta_r": 126, "f1": 59, "f10": 68, "f11": 87, "f12": 88, "f13": 183, "f24": 194,
            "kp_0": 82, "kp_enter": 96, "kp_divide": 98, "kp_multiply": 55, "asterisk": 55,
            "up": 103, "down": 108, "left": 105, "right": 106, "pgup": 104, "pgdn": 109,
            "home": 102, "end": 107, "insert": 110, "delete": 111, "print": 99, "pause": 119,
            "less": 86, "menu": 139, "compose": 127, "audiomute": 113, "power": 116,
        ]
        for (name, code) in expected {
            #expect(QKeyCode.linuxKeycode(name) == code, "\(name)")
        }
        #expect(QKeyCode.linuxKeycode("nosuchkey") == nil)
        #expect(QKeyCode.linuxKeycode("unmapped") == nil)
    }

    @Test func everyQEMUPCKeyHasADistinctCodeInTheKeyboardRange() {
        // QEMU 7.2's QKeyCode list without `unmapped`.
        let names = """
        shift shift_r alt alt_r ctrl ctrl_r menu esc 1 2 3 4 5 6 7 8 9 0 minus equal backspace tab
        q w e r t y u i o p bracket_left bracket_right ret a s d f g h j k l semicolon apostrophe
        grave_accent backslash z x c v b n m comma dot slash asterisk spc caps_lock f1 f2 f3 f4 f5
        f6 f7 f8 f9 f10 num_lock scroll_lock kp_divide kp_multiply kp_subtract kp_add kp_enter
        kp_decimal sysrq kp_0 kp_1 kp_2 kp_3 kp_4 kp_5 kp_6 kp_7 kp_8 kp_9 less f11 f12 print home
        pgup pgdn end left up down right insert delete stop again props undo front copy open paste
        find cut lf help meta_l meta_r compose pause ro hiragana henkan yen muhenkan
        katakanahiragana kp_comma kp_equals power sleep wake audionext audioprev audiostop
        audioplay audiomute volumeup volumedown mediaselect mail calculator computer ac_home
        ac_back ac_forward ac_refresh ac_bookmarks lang1 lang2 f13 f14 f15 f16 f17 f18 f19 f20
        f21 f22 f23 f24
        """.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        var seen: [UInt32: String] = [:]
        for name in names {
            guard let code = QKeyCode.linuxKeycode(name) else {
                Issue.record("qcode \(name) has no key")
                continue
            }
            #expect(code >= 1 && code < 0x2ff, "\(name) -> \(code)")
            // sysrq and print are one physical key (KEY_SYSRQ), as are kp_multiply and asterisk.
            let shared: Set<[String]> = [["print", "sysrq"], ["asterisk", "kp_multiply"]]
            if let other = seen[code], !shared.contains([other, name].sorted()) {
                Issue.record("\(name) and \(other) both map to \(code)")
            }
            seen[code] = name
        }
    }

    @Test func buttonsMapToLinuxButtonCodesAndTheWheelToNone() {
        #expect(QInputButton.left.linuxCode == 0x110)
        #expect(QInputButton.right.linuxCode == 0x111)
        #expect(QInputButton.middle.linuxCode == 0x112)
        #expect(QInputButton(rawValue: "wheel-up") == .wheelUp)
        #expect(QInputButton.wheelUp.linuxCode == nil)
    }
}
