/// Linux input codes used by the displays (linux/input-event-codes.h).
public enum LinuxInput {
    public static let BTN_LEFT: UInt32 = 0x110
    public static let BTN_RIGHT: UInt32 = 0x111
    public static let BTN_MIDDLE: UInt32 = 0x112
    public static let KEY_A: UInt32 = 30
    public static let KEY_LEFTSHIFT: UInt32 = 42
    public static let KEY_LEFTCTRL: UInt32 = 29
    public static let KEY_LEFTALT: UInt32 = 56
    public static let KEY_RIGHTALT: UInt32 = 100
    public static let KEY_F: UInt32 = 33
    public static let KEY_MAX: UInt32 = 0x2ff
}

/// A keyboard layout for VNC clients that send only keysyms (`-k LANG`):
/// which Linux key produces a keysym on that layout. Shift and AltGr are not
/// synthesised; the client sends them as keys of their own.
///
/// QEMU's Extended Key Event (raw scancodes) bypasses the keymap entirely.
public struct Keymap: Sendable {
    public let name: String
    private let table: [UInt32: UInt32]

    public static let names = ["en-us", "de", "fr"]

    public init(name: String) throws(DisplayError) {
        let lower = name.lowercased()
        let layout: [(UInt32, String)]
        switch lower {
        case "en-us", "us", "en": layout = Self.enUS
        case "de": layout = Self.de
        case "fr": layout = Self.fr
        default:
            throw DisplayError("-k \(name): unknown keymap (supported: \(Self.names.joined(separator: ", ")))")
        }
        var table = Self.common
        for (code, chars) in layout {
            for ch in chars.unicodeScalars {
                let sym = Self.keysym(for: ch)
                if table[sym] == nil { table[sym] = code }
            }
        }
        // Dead keys, which have keysyms of their own.
        switch lower {
        case "de":
            table[0xfe52] = 41; table[0xfe51] = 13; table[0xfe50] = 13   // dead circumflex, acute, grave
        case "fr":
            table[0xfe52] = 26; table[0xfe57] = 26                        // dead circumflex, diaeresis
        default: break
        }
        self.name = Self.names.first { $0 == lower } ?? "en-us"
        self.table = table
    }

    /// The Linux key code for an X keysym, or nil if the layout has no key for it.
    public func keycode(forKeysym keysym: UInt32) -> UInt32? {
        if let code = table[keysym] { return code }
        // Unicode keysyms (0x01000000 + code point) for characters that have a Latin-1 keysym.
        if keysym >= 0x0100_0000 && keysym <= 0x0100_00ff { return table[keysym - 0x0100_0000] }
        if keysym >= 0x0100_0100 && keysym <= 0x0110_ffff, let s = Unicode.Scalar(keysym - 0x0100_0000) {
            return table[Self.keysym(for: s)]
        }
        return nil
    }

    /// Latin-1 characters are their own keysyms; the few others used here have legacy keysyms.
    static func keysym(for scalar: Unicode.Scalar) -> UInt32 {
        switch scalar.value {
        case 0x20...0x7e, 0xa0...0xff: return scalar.value
        case 0x20ac: return 0x20ac // EuroSign
        default: return 0x0100_0000 + scalar.value
        }
    }

    /// Keys that do not depend on the layout (X keysym → Linux key code).
    static let common: [UInt32: UInt32] = {
        var t: [UInt32: UInt32] = [
            0xff08: 14, 0xff09: 15, 0xff0d: 28, 0xff1b: 1, 0xffff: 111, 0x20: 57,
            0xff50: 102, 0xff51: 105, 0xff52: 103, 0xff53: 106, 0xff54: 108,
            0xff55: 104, 0xff56: 109, 0xff57: 107, 0xff63: 110, 0xff13: 119,
            0xff14: 70, 0xff15: 99, 0xff61: 99, 0xff67: 127, 0xff7f: 69, 0xffe5: 58,
            0xffe1: 42, 0xffe2: 54, 0xffe3: 29, 0xffe4: 97, 0xffe7: 125, 0xffe8: 126,
            0xffe9: 56, 0xffea: 100, 0xffeb: 125, 0xffec: 126, 0xfe03: 100, 0xff7e: 100,
            0xff8d: 96, 0xffaa: 55, 0xffab: 78, 0xffad: 74, 0xffae: 83, 0xffaf: 98, 0xffbd: 117,
            0xff95: 71, 0xff96: 75, 0xff97: 72, 0xff98: 77, 0xff99: 80, 0xff9a: 73,
            0xff9b: 81, 0xff9c: 79, 0xff9d: 76, 0xff9e: 82, 0xff9f: 83,
            0xffc8: 87, 0xffc9: 88, // F11, F12
        ]
        for i: UInt32 in 0..<10 { t[0xffbe + i] = 59 + i }          // F1..F10
        let keypad: [UInt32] = [82, 79, 80, 81, 75, 76, 77, 71, 72, 73] // KP_0..KP_9
        for (i, code) in keypad.enumerated() { t[0xffb0 + UInt32(i)] = code }
        return t
    }()

    /// Rows of a PC keyboard: the Linux code of the first key, then the
    /// characters of consecutive keys unshifted and shifted, then single
    /// AltGr keys. Earlier entries win when a character appears twice.
    private static func layout(_ rows: [(UInt32, String, String)], altGr: [(UInt32, String)] = []) -> [(UInt32, String)] {
        var out: [(UInt32, String)] = []
        for (first, plain, _) in rows {
            for (i, ch) in plain.unicodeScalars.enumerated() { out.append((first + UInt32(i), String(ch))) }
        }
        for (first, _, shifted) in rows {
            for (i, ch) in shifted.unicodeScalars.enumerated() { out.append((first + UInt32(i), String(ch))) }
        }
        return out + altGr
    }

    static let enUS = layout([
        (2, "1234567890-=", "!@#$%^&*()_+"),
        (16, "qwertyuiop[]", "QWERTYUIOP{}"),
        (30, "asdfghjkl;'`", "ASDFGHJKL:\"~"),
        (43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
    ])

    static let de = layout([
        (2, "1234567890ß´", "!\"§$%&/()=?`"),
        (16, "qwertzuiopü+", "QWERTZUIOPÜ*"),
        (30, "asdfghjklöä^", "ASDFGHJKLÖÄ°"),
        (43, "#yxcvbnm,.-", "'YXCVBNM;:_"),
        (86, "<", ">"),
    ], altGr: [(3, "²"), (4, "³"), (8, "{"), (9, "["), (10, "]"), (11, "}"), (12, "\\"),
               (16, "@"), (18, "€"), (27, "~"), (50, "µ"), (86, "|")])

    static let fr = layout([
        (2, "&é\"'(-è_çà)=", "1234567890°+"),
        (16, "azertyuiop^$", "AZERTYUIOP¨£"),
        (30, "qsdfghjklmù²", "QSDFGHJKLM%"),
        (43, "*wxcvbn,;:!", "µWXCVBN?./§"),
        (86, "<", ">"),
    ], altGr: [(3, "~"), (4, "#"), (5, "{"), (6, "["), (7, "|"), (8, "`"), (9, "\\"), (10, "^"),
               (11, "@"), (12, "]"), (13, "}"), (18, "€"), (27, "¤")])
}

/// QEMU's Extended Key Event carries an XT (set 1) scancode, with E0-prefixed
/// codes as 0x80|code ("qnum"). Linux key codes equal set-1 codes below 0x59.
public enum XTScancode {
    public static func linuxKeycode(_ qnum: UInt32) -> UInt32? {
        if qnum > 0 && qnum < 0x59 { return qnum }
        return extended[qnum]
    }

    static let extended: [UInt32: UInt32] = [
        0x70: 93, 0x73: 89, 0x79: 92, 0x7b: 94, 0x7d: 124, 0x7e: 95, // Japanese keys
        0x64: 183, 0x65: 184, 0x66: 185, 0x67: 186, 0x68: 187, 0x69: 188, 0x6a: 189, 0x6b: 190, // F13..F20
        0x9c: 96, 0x9d: 97, 0xb5: 98, 0xb7: 99, 0xb8: 100, 0xc6: 119, 0xc5: 119,
        0xc7: 102, 0xc8: 103, 0xc9: 104, 0xcb: 105, 0xcd: 106, 0xcf: 107,
        0xd0: 108, 0xd1: 109, 0xd2: 110, 0xd3: 111, 0xdb: 125, 0xdc: 126, 0xdd: 127,
        0xa0: 113, 0xae: 114, 0xb0: 115, 0xde: 116, 0xdf: 142, 0xe3: 143,
        0x99: 163, 0x90: 165, 0xa2: 164, 0xa4: 166,
    ]
}
