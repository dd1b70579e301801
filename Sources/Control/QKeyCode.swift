/// QEMU's `QKeyCode` names (the `qcode` of QMP `send-key` and
/// `input-send-event`) and the Linux key codes (linux/input-event-codes.h)
/// they stand for on a PC keyboard, as QEMU's keycodemapdb maps them.
public enum QKeyCode {
    /// The Linux `KEY_*` code for a qcode name, or nil for a name QEMU does
    /// not have (or `unmapped`).
    public static func linuxKeycode(_ name: String) -> UInt32? { table[name] }

    /// Every qcode name known here, sorted (for messages and tests).
    public static var names: [String] { table.keys.sorted() }

    static let table: [String: UInt32] = {
        var t: [String: UInt32] = [
            "esc": 1, "minus": 12, "equal": 13, "backspace": 14, "tab": 15,
            "bracket_left": 26, "bracket_right": 27, "ret": 28, "ctrl": 29,
            "semicolon": 39, "apostrophe": 40, "grave_accent": 41, "shift": 42, "backslash": 43,
            "comma": 51, "dot": 52, "slash": 53, "shift_r": 54, "asterisk": 55, "kp_multiply": 55, "alt": 56,
            "spc": 57, "caps_lock": 58, "num_lock": 69, "scroll_lock": 70,
            "kp_7": 71, "kp_8": 72, "kp_9": 73, "kp_subtract": 74, "kp_4": 75, "kp_5": 76,
            "kp_6": 77, "kp_add": 78, "kp_1": 79, "kp_2": 80, "kp_3": 81, "kp_0": 82,
            "kp_decimal": 83, "less": 86, "f11": 87, "f12": 88, "ro": 89, "katakana": 90,
            "hiragana": 91, "henkan": 92, "katakanahiragana": 93, "muhenkan": 94,
            "kp_enter": 96, "ctrl_r": 97, "kp_divide": 98, "print": 99, "sysrq": 99, "alt_r": 100,
            "lf": 101, "home": 102, "up": 103, "pgup": 104, "left": 105, "right": 106,
            "end": 107, "down": 108, "pgdn": 109, "insert": 110, "delete": 111,
            "audiomute": 113, "volumedown": 114, "volumeup": 115, "power": 116,
            "kp_equals": 117, "pause": 119, "kp_comma": 121, "lang1": 122, "lang2": 123,
            "yen": 124, "meta_l": 125, "meta_r": 126, "compose": 127, "stop": 128,
            "again": 129, "props": 130, "undo": 131, "front": 132, "copy": 133, "open": 134,
            "paste": 135, "find": 136, "cut": 137, "help": 138, "menu": 139,
            "calculator": 140, "sleep": 142, "wake": 143, "mail": 155, "ac_bookmarks": 156,
            "computer": 157, "ac_back": 158, "ac_forward": 159, "audionext": 163,
            "audioplay": 164, "audioprev": 165, "audiostop": 166, "ac_home": 172,
            "ac_refresh": 173, "mediaselect": 226,
        ]
        // Digits 1..9, 0 are KEY_1 (2) .. KEY_0 (11).
        for (i, d) in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"].enumerated() { t[d] = UInt32(2 + i) }
        for (first, row) in [(16, "qwertyuiop"), (30, "asdfghjkl"), (44, "zxcvbnm")] {
            for (i, c) in row.enumerated() { t[String(c)] = UInt32(first + i) }
        }
        for i in 0..<10 { t["f\(i + 1)"] = UInt32(59 + i) }     // F1..F10
        for i in 0..<12 { t["f\(i + 13)"] = UInt32(183 + i) }   // F13..F24
        return t
    }()
}

/// QEMU's `InputButton` names for `input-send-event` `btn` events.
public enum QInputButton: String, CaseIterable, Sendable {
    case left, middle, right
    case wheelUp = "wheel-up", wheelDown = "wheel-down"
    case side, extra
    case wheelLeft = "wheel-left", wheelRight = "wheel-right"
    case touch

    /// The Linux `BTN_*` code for a button vkbd reports as a key, or nil for
    /// a wheel direction (vkbd reports the vertical wheel as motion, and has
    /// no horizontal wheel).
    public var linuxCode: UInt32? {
        switch self {
        case .left: return 0x110
        case .right: return 0x111
        case .middle: return 0x112
        case .side: return 0x113
        case .extra: return 0x114
        case .touch: return 0x14a // BTN_TOUCH
        case .wheelUp, .wheelDown, .wheelLeft, .wheelRight: return nil
        }
    }
}
