// Pure Swift, standard library only: the keymap has no C, libvncserver or
// logging dependency, so any VNC server (or another module) can use it.

/// Linux input codes used by the displays (linux/input-event-codes.h).
public enum LinuxInput {
    public static let BTN_LEFT: UInt32 = 0x110
    public static let BTN_RIGHT: UInt32 = 0x111
    public static let BTN_MIDDLE: UInt32 = 0x112
    public static let KEY_A: UInt32 = 30
    public static let KEY_LEFTSHIFT: UInt32 = 42
    public static let KEY_RIGHTSHIFT: UInt32 = 54
    public static let KEY_LEFTCTRL: UInt32 = 29
    public static let KEY_LEFTALT: UInt32 = 56
    public static let KEY_RIGHTALT: UInt32 = 100
    public static let KEY_CAPSLOCK: UInt32 = 58
    public static let KEY_NUMLOCK: UInt32 = 69
    public static let KEY_F: UInt32 = 33
    public static let KEY_MAX: UInt32 = 0x2ff
}

/// One key going down or up in the guest: a Linux `KEY_*` code.
public struct KeyEvent: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var code: UInt32
    public var pressed: Bool

    public init(code: UInt32, pressed: Bool) {
        self.code = code
        self.pressed = pressed
    }

    public var description: String { "\(code)\(pressed ? "↓" : "↑")" }
}

/// `-k` names a layout no table exists for.
public struct UnknownKeymap: Error, CustomStringConvertible, Equatable {
    public let name: String
    public var description: String {
        "unknown keymap '\(name)' (one of: \(Keymap.names.joined(separator: ", ")))"
    }
}

/// A keyboard layout for VNC clients that send X keysyms instead of key
/// codes (`-k LAYOUT`): which Linux key, with which Shift and AltGr, types a
/// keysym on a guest that uses that layout. The tables are QEMU's layouts
/// generated from xkeyboard-config (KeymapLayouts.swift,
/// scripts/keymaps/generate.py); only the layout asked for is parsed.
///
/// `keyEvents(keysym:down:state:)` follows QEMU's `keysym2scancode`
/// (ui/keymaps.c) and `do_key_event` (ui/vnc.c):
/// - a keysym on several keys takes the one whose Shift/AltGr the client
///   already holds (QEMU's preference; where none does, QEMU takes the
///   first, here the one needing the fewest and lowest modifiers);
/// - a release goes to the key the press went to, or to a key of that
///   keysym that is down (QEMU: "try find a key which is actually down");
/// - a keypad digit (KP_0..KP_9, KP_Decimal) with NumLock off, or another
///   keypad keysym with NumLock on, first taps NumLock (QEMU's lock-key
///   sync; not for KP_Add/KP_Subtract, which NumLock does not change);
/// - a keysym the layout cannot type is dropped (QEMU: "no scancode found").
///
/// Where QEMU differs: QEMU drops the Shift/AltGr a mapping needs
/// (`& SCANCODE_KEYMASK`), so '@' from a client that does not press AltGr
/// itself types 'q' on a German guest, and it toggles Caps Lock for an
/// uppercase letter sent without Shift. Here the keymap presses what the
/// keysym needs and the client does not hold (Shift, AltGr), and releases
/// for that key what the client holds but the keysym must not have, then
/// restores the client's own modifiers after the key's release — the event
/// sequence a real keyboard of that layout produces. Caps Lock the client
/// toggled is taken into account for letters.
public struct Keymap: Sendable {
    /// The `-k` name.
    public let name: String
    /// The xkb layout (and variant) the table was generated from.
    public let xkbLayout: String
    /// The layout's AltGr key (ISO_Level3_Shift), nil if it has none.
    public let altGrKey: UInt32?
    /// Keysyms, sorted; `entries[i]` is a key for `keysyms[i]`, in the
    /// table's order of preference among equal keysyms.
    private let keysyms: [UInt32]
    private let entries: [Entry]

    public init(name: String) throws(UnknownKeymap) {
        guard let layout = Self.layout(named: name) else { throw UnknownKeymap(name: name) }
        self.name = name
        self.xkbLayout = layout.xkb
        self.altGrKey = layout.altGr
        (keysyms, entries) = Self.parse(layout.table)
    }

    /// How many keysyms the table maps (for tests and diagnostics).
    public var count: Int { keysyms.count }

    // MARK: The table

    /// What a keysym's key needs of a modifier.
    enum Need: UInt8, Sendable {
        case any = 0, on = 1, off = 2
    }

    struct Entry: Sendable, Equatable {
        let code: UInt16
        /// 'g'-based flag of the generator: shift + 3*altgr + 9*caps.
        let flags: UInt8
        var shift: Need { Need(rawValue: flags % 3) ?? .any }
        var altGr: Need { Need(rawValue: (flags / 3) % 3) ?? .any }
        /// Caps Lock turns the Shift need around (letters).
        var capsInverts: Bool { flags >= 9 }
        /// The keyboard level: 0 plain, 1 Shift, 2 AltGr, 3 both.
        var level: Int { (shift == .on ? 1 : 0) + (altGr == .on ? 2 : 0) }
    }

    /// Parses a generated table: `CODE` tokens (hex) start a key, `FLAG
    /// KEYSYM` tokens (a letter g..x, then hex) are that key's keysyms.
    static func parse(_ table: StaticString) -> ([UInt32], [Entry]) {
        var found: [(keysym: UInt32, order: Int, entry: Entry)] = []
        table.withUTF8Buffer { text in
            var code: UInt32 = 0
            var i = 0
            while i < text.count {
                let c = text[i]
                if c == 0x20 || c == 0x0a { i += 1; continue }
                var flag: UInt8?
                if c >= UInt8(ascii: "g") && c <= UInt8(ascii: "x") {
                    flag = c - UInt8(ascii: "g")
                    i += 1
                }
                var value: UInt32 = 0
                var digits = 0
                while i < text.count, let d = hexValue(text[i]) {
                    if digits < 8 { value = value << 4 | d }
                    digits += 1
                    i += 1
                }
                if let flag {
                    if digits > 0 && digits <= 8 && code > 0 && code <= LinuxInput.KEY_MAX {
                        found.append((value, found.count, Entry(code: UInt16(code), flags: flag)))
                    }
                } else if digits == 0 {
                    i += 1 // not part of the format: skip it
                } else {
                    code = digits <= 8 ? value : 0
                }
            }
        }
        found.sort { ($0.keysym, $0.order) < ($1.keysym, $1.order) }
        return (found.map(\.keysym), found.map(\.entry))
    }

    private static func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(c - UInt8(ascii: "a") + 10)
        default: return nil
        }
    }

    /// The table's entries for `keysym`, best first (empty: none).
    func entries(for keysym: UInt32) -> ArraySlice<Entry> {
        var lo = 0, hi = keysyms.count
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            if keysyms[mid] < keysym { lo = mid + 1 } else { hi = mid }
        }
        var end = lo
        while end < keysyms.count && keysyms[end] == keysym { end += 1 }
        return entries[lo..<end]
    }

    /// The entries for what a client sent: the keysym itself, or for a
    /// Unicode keysym of a Latin-1 character (0x01000000 + code point), the
    /// Latin-1 keysym (which is the code point).
    func lookup(_ keysym: UInt32) -> ArraySlice<Entry> {
        let direct = entries(for: keysym)
        if !direct.isEmpty { return direct }
        if keysym >= 0x0100_0000 {
            let codePoint = keysym - 0x0100_0000
            if (0x20...0x7e).contains(codePoint) || (0xa0...0xff).contains(codePoint) {
                return entries(for: codePoint)
            }
        }
        return direct
    }

    /// The Linux key a client holding no modifier gets for a keysym (nil:
    /// the layout has none), without the Shift or AltGr it may need.
    public func keycode(forKeysym keysym: UInt32) -> UInt32? {
        var state = KeymapState()
        return keyEvents(keysym: keysym, down: true, state: &state)?.last?.code
    }

    // MARK: Key events

    private var shiftKeys: [UInt32] { [LinuxInput.KEY_LEFTSHIFT, LinuxInput.KEY_RIGHTSHIFT] }

    /// The keys whose state the keymap manages: both Shifts and AltGr.
    private func isManagedModifier(_ code: UInt32) -> Bool {
        code == LinuxInput.KEY_LEFTSHIFT || code == LinuxInput.KEY_RIGHTSHIFT || (altGrKey != nil && code == altGrKey)
    }

    /// The modifier keys the client holds itself.
    private func clientModifiers(_ state: KeymapState) -> Set<UInt32> {
        state.clientDown.filter(isManagedModifier)
    }

    /// The modifier keys that must be down for `entry` to type its keysym.
    private func modifiers(for entry: Entry, state: KeymapState) -> Set<UInt32> {
        var target = clientModifiers(state)
        var shift = entry.shift
        if entry.capsInverts && state.capsLock {
            shift = shift == .on ? .off : (shift == .off ? .on : .any)
        }
        switch shift {
        case .on: if !shiftKeys.contains(where: target.contains) { target.insert(LinuxInput.KEY_LEFTSHIFT) }
        case .off: target.subtract(shiftKeys)
        case .any: break
        }
        if let altGrKey {
            switch entry.altGr {
            case .on: target.insert(altGrKey)
            case .off: target.remove(altGrKey)
            case .any: break
            }
        }
        return target
    }

    /// The key events that type `keysym` going down or up, given what the
    /// client and the guest hold (`state`, updated). nil: the layout has no
    /// key for the keysym; the caller drops it (and logs it once).
    public func keyEvents(keysym: UInt32, down: Bool, state: inout KeymapState) -> [KeyEvent]? {
        let candidates = lookup(keysym)
        guard let first = candidates.first else { return nil }
        var out: [KeyEvent] = []
        if down {
            // Fewest modifier changes first, then the lowest level (plain,
            // Shift, AltGr, both: what a typist uses), then the table's order.
            let held = clientModifiers(state)
            var entry = first
            var best = (Int.max, Int.max)
            for candidate in candidates {
                let cost = (modifiers(for: candidate, state: state).symmetricDifference(held).count, candidate.level)
                if cost < best { entry = candidate; best = cost }
            }
            let code = UInt32(entry.code)
            state.keysymKeys[keysym] = code
            state.clientDown.insert(code)
            if isManagedModifier(code) {
                sync(to: clientModifiers(state), state: &state, into: &out)
                return out
            }
            syncNumLock(code: code, keysym: keysym, state: &state, into: &out)
            sync(to: modifiers(for: entry, state: state), state: &state, into: &out)
            state.emit(KeyEvent(code: code, pressed: true), into: &out)
            return out
        }
        let code: UInt32
        if let pressed = state.keysymKeys.removeValue(forKey: keysym) {
            code = pressed
        } else if let other = candidates.first(where: { state.clientDown.contains(UInt32($0.code)) }) {
            code = UInt32(other.code)
        } else {
            return []
        }
        state.clientDown.remove(code)
        state.keysymKeys = state.keysymKeys.filter { $0.value != code }
        if !isManagedModifier(code) && state.down.contains(code) {
            state.emit(KeyEvent(code: code, pressed: false), into: &out)
        }
        sync(to: clientModifiers(state), state: &state, into: &out)
        return out
    }

    /// Presses and releases the managed modifiers so that exactly `target`
    /// of them are down: releases first, then presses (Shift before AltGr).
    private func sync(to target: Set<UInt32>, state: inout KeymapState, into out: inout [KeyEvent]) {
        let order = shiftKeys + (altGrKey.map { [$0] } ?? [])
        for code in order.reversed() where state.down.contains(code) && !target.contains(code) {
            state.emit(KeyEvent(code: code, pressed: false), into: &out)
        }
        for code in order where target.contains(code) && !state.down.contains(code) {
            state.emit(KeyEvent(code: code, pressed: true), into: &out)
        }
    }

    /// QEMU's NumLock sync: a keypad key typed as a digit needs NumLock on,
    /// as a cursor key off; tap NumLock when the guest's is the other way.
    private func syncNumLock(code: UInt32, keysym: UInt32, state: inout KeymapState, into out: inout [KeyEvent]) {
        // KEY_KP7 ... KEY_KPDOT, except KP_Subtract (74) and KP_Add (78).
        guard (71...83).contains(code) && code != 74 && code != 78 else { return }
        let digit = (0xffb0...0xffb9).contains(keysym) || keysym == 0xffac || keysym == 0xffae
        if digit != state.numLock {
            state.emit(KeyEvent(code: LinuxInput.KEY_NUMLOCK, pressed: true), into: &out)
            state.emit(KeyEvent(code: LinuxInput.KEY_NUMLOCK, pressed: false), into: &out)
        }
    }
}

/// What one keyboard user (a VNC client) holds and what the guest has been
/// told, for `Keymap.keyEvents`: QEMU's `QKbdState`. Start with a fresh one
/// per client; feed it every key event that reaches the guest from that
/// client by another way (`record`), such as QEMU's extended key event.
public struct KeymapState: Sendable {
    /// Keys the guest has been told are down.
    public private(set) var down: Set<UInt32> = []
    /// Keys the client holds by its own events (not those the keymap added).
    var clientDown: Set<UInt32> = []
    /// The guest's Caps Lock and Num Lock, as toggled by the keys it was sent
    /// (both off at the start, as QEMU assumes).
    public private(set) var capsLock = false
    public private(set) var numLock = false
    /// The key each keysym the client holds went to.
    var keysymKeys: [UInt32: UInt32] = [:]

    public init() {}

    /// Records a key event of the client's that reached the guest without
    /// the keymap (an extended key event, a release on disconnect).
    public mutating func record(_ event: KeyEvent) {
        if event.pressed { clientDown.insert(event.code) } else { clientDown.remove(event.code) }
        var ignored: [KeyEvent] = []
        emit(event, into: &ignored)
    }

    /// Sends `event` to the guest: appends it and tracks the keys down and
    /// the locks (a press of a key that is already down toggles nothing,
    /// as Linux's input core ignores it).
    mutating func emit(_ event: KeyEvent, into out: inout [KeyEvent]) {
        out.append(event)
        if event.pressed {
            guard down.insert(event.code).inserted else { return }
            if event.code == LinuxInput.KEY_CAPSLOCK { capsLock.toggle() }
            if event.code == LinuxInput.KEY_NUMLOCK { numLock.toggle() }
        } else {
            down.remove(event.code)
        }
    }
}

/// Keysyms already reported as having no key, so each is logged once; at
/// most `limit` are remembered, so a client cannot grow it without bound.
public struct UnmappedKeysyms: Sendable {
    public static let limit = 256
    public private(set) var reported: Set<UInt32> = []

    public init() {}

    /// True the first time `keysym` is reported (while fewer than `limit` were).
    public mutating func firstReport(_ keysym: UInt32) -> Bool {
        guard reported.count < Self.limit else { return false }
        return reported.insert(keysym).inserted
    }
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
