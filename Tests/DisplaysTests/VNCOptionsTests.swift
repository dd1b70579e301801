import Testing
import Console
@testable import Displays

@Suite struct VNCOptionsTests {
    @Test func hostDisplayAndToParseAsQemuAndLibxlWriteThem() throws {
        #expect(try VNCOptions(spec: "127.0.0.1:0").address == .tcp(host: "127.0.0.1", display: 0, lastDisplay: 0))
        #expect(try VNCOptions(spec: "0.0.0.0:3,to=99").address == .tcp(host: "0.0.0.0", display: 3, lastDisplay: 99))
        #expect(try VNCOptions(spec: ":1").address == .tcp(host: "127.0.0.1", display: 1, lastDisplay: 1))
        #expect(try VNCOptions(spec: "[::1]:2").address == .tcp(host: "::1", display: 2, lastDisplay: 2))
        #expect(try VNCOptions(spec: "localhost:5").address == .tcp(host: "localhost", display: 5, lastDisplay: 5))
        #expect(try VNCOptions(spec: "unix:/run/xen/vnc-3,,x").address == .unix(path: "/run/xen/vnc-3,x"))
        #expect(try VNCOptions(spec: "none").address == VNCOptions.Address.none)
    }

    @Test func passwordAndOtherOptions() throws {
        let a = try VNCOptions(spec: "127.0.0.1:0,password=on")
        #expect(a.password)
        #expect(try VNCOptions(spec: "127.0.0.1:0,password").password)   // older libxl spelling
        #expect(try !VNCOptions(spec: "127.0.0.1:0,password=off").password)
        #expect(try VNCOptions(spec: "unix:/tmp/s,password=on").password)
        let b = try VNCOptions(spec: "[::]:0,ipv6=on,connections=4,share=force-shared,lossy,key-delay-ms=10")
        #expect(b.family == .ipv6 && b.maxConnections == 4)
    }

    @Test func badSpecsAreRejectedWithAReason() {
        let cases: [(String, String)] = [
            ("", "expected HOST:DISPLAY"),
            ("localhost", "expected HOST:DISPLAY"),
            ("127.0.0.1:x", "display=x is not a number"),
            ("127.0.0.1:-1", "is not a number"),
            ("127.0.0.1:70000", "is not a number"),
            ("::1:0", "IPv6 address in brackets"),
            ("127.0.0.1:5,to=4", "to=4 is below display 5"),
            ("127.0.0.1:5,to=", "is not a number"),
            ("unix:", "needs a socket path"),
            ("unix:/tmp/s,to=3", "to= needs a TCP address"),
            ("127.0.0.1:0,password=maybe", "is not on or off"),
            ("127.0.0.1:0,websocket=on", "unsupported option 'websocket=on'"),
            ("127.0.0.1:0,share=mine", "share=mine"),
            ("none,password=on", "password makes no sense"),
        ]
        for (spec, message) in cases {
            do {
                _ = try VNCOptions(spec: spec)
                Issue.record("'\(spec)' was accepted")
            } catch {
                #expect(error.message.contains(message), "'\(spec)': \(error.message)")
            }
        }
    }
}

@Suite struct KeymapTests {
    @Test func enUSMapsLettersDigitsPunctuationAndSpecialKeys() throws {
        let k = try Keymap(name: "en-us")
        #expect(k.keycode(forKeysym: 0x61) == 30)   // a → KEY_A
        #expect(k.keycode(forKeysym: 0x41) == 30)   // A → KEY_A (shift is its own key)
        #expect(k.keycode(forKeysym: 0x31) == 2)    // 1
        #expect(k.keycode(forKeysym: 0x21) == 2)    // ! → KEY_1
        #expect(k.keycode(forKeysym: 0x40) == 3)    // @ → KEY_2
        #expect(k.keycode(forKeysym: 0x3a) == 39)   // : → KEY_SEMICOLON
        #expect(k.keycode(forKeysym: 0x7c) == 43)   // | → KEY_BACKSLASH
        #expect(k.keycode(forKeysym: 0x60) == 41)   // ` → KEY_GRAVE
        #expect(k.keycode(forKeysym: 0x2f) == 53)   // / → KEY_SLASH
        #expect(k.keycode(forKeysym: 0x20) == 57)   // space
        #expect(k.keycode(forKeysym: 0xff0d) == 28) // Return
        #expect(k.keycode(forKeysym: 0xffe1) == 42) // Shift_L
        #expect(k.keycode(forKeysym: 0xffbe) == 59) // F1
        #expect(k.keycode(forKeysym: 0xffc9) == 88) // F12
        #expect(k.keycode(forKeysym: 0xff52) == 103) // Up
        #expect(k.keycode(forKeysym: 0xffb7) == 71) // KP_7
        #expect(k.keycode(forKeysym: 0x0100_0061) == 30) // Unicode keysym for a
        #expect(k.keycode(forKeysym: 0xe4) == nil)  // ä: not on a US keyboard
    }

    @Test func germanLayoutSwapsYAndZAndHasUmlautsAndAltGr() throws {
        let k = try Keymap(name: "de")
        #expect(k.keycode(forKeysym: 0x7a) == 21)   // z → KEY_Y
        #expect(k.keycode(forKeysym: 0x79) == 44)   // y → KEY_Z
        #expect(k.keycode(forKeysym: 0xfc) == 26)   // ü → KEY_LEFTBRACE
        #expect(k.keycode(forKeysym: 0xf6) == 39)   // ö → KEY_SEMICOLON
        #expect(k.keycode(forKeysym: 0xe4) == 40)   // ä → KEY_APOSTROPHE
        #expect(k.keycode(forKeysym: 0xdf) == 12)   // ß → KEY_MINUS
        #expect(k.keycode(forKeysym: 0x40) == 16)   // @ = AltGr+Q
        #expect(k.keycode(forKeysym: 0x7b) == 8)    // { = AltGr+7
        #expect(k.keycode(forKeysym: 0x20ac) == 18) // € = AltGr+E
        #expect(k.keycode(forKeysym: 0x2d) == 53)   // - → KEY_SLASH
        #expect(k.keycode(forKeysym: 0x3c) == 86)   // < → KEY_102ND
        #expect(k.keycode(forKeysym: 0x22) == 3)    // " = Shift+2
    }

    @Test func frenchLayoutIsAzerty() throws {
        let k = try Keymap(name: "fr")
        #expect(k.keycode(forKeysym: 0x61) == 16)   // a → KEY_Q
        #expect(k.keycode(forKeysym: 0x71) == 30)   // q → KEY_A
        #expect(k.keycode(forKeysym: 0x7a) == 17)   // z → KEY_W
        #expect(k.keycode(forKeysym: 0x77) == 44)   // w → KEY_Z
        #expect(k.keycode(forKeysym: 0x6d) == 39)   // m → KEY_SEMICOLON
        #expect(k.keycode(forKeysym: 0x31) == 2)    // 1 = Shift+& → KEY_1
        #expect(k.keycode(forKeysym: 0xe9) == 3)    // é → KEY_2
        #expect(k.keycode(forKeysym: 0x26) == 2)    // & → KEY_1
        #expect(k.keycode(forKeysym: 0x40) == 11)   // @ = AltGr+à → KEY_0
        #expect(k.keycode(forKeysym: 0x2c) == 50)   // , → KEY_M
        #expect(k.keycode(forKeysym: 0xf9) == 40)   // ù → KEY_APOSTROPHE
    }

    @Test func unknownKeymapIsAnError() {
        #expect(throws: DisplayError.self) { try Keymap(name: "xx") }
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
