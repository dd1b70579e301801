import Testing
import Glibc
import CSDL2
import Damage
import EventLoop
import Console
@testable import Displays

/// SDL keeps one event queue and one video subsystem per process, so the
/// in-process SDL tests (dummy driver) run one at a time.
@Suite(.serialized) struct SDLDisplayTests {
    struct Fixture {
        let loop: EventLoop
        let console: Console
        let sdl: SDLDisplay
        let sink = RecordingSink()

        init(width: Int = 160, height: Int = 100, closeQuits: Bool = false) throws {
            loop = try EventLoop()
            console = Console(width: width, height: height)
            console.input = sink
            sdl = try SDLDisplay(options: .init(title: "guest-7", closeQuits: closeQuits, videoDriver: "dummy"), loop: loop, console: console)
            console.add(sdl)
        }
    }

    static func push(_ build: (inout SDL_Event) -> Void) {
        var e = SDL_Event()
        build(&e)
        #expect(SDL_PushEvent(&e) == 1)
    }

    static func key(_ scancode: SDL_Scancode, down: Bool, mod: SDL_Keymod = KMOD_NONE) {
        push { e in
            e.type = down ? SDL_KEYDOWN.rawValue : SDL_KEYUP.rawValue
            e.key.state = UInt8(down ? SDL_PRESSED : SDL_RELEASED)
            e.key.keysym.scancode = scancode
            e.key.keysym.mod = UInt16(mod.rawValue)
        }
    }

    @Test func readBackEqualsTheFrameAfterUpdates() throws {
        let f = try Fixture()
        defer { f.console.closeAll() }
        #expect(f.sdl.title == "guest-7")
        paint(f.console.frame, f.console.frame.bounds, seed: 6)
        f.console.update([f.console.frame.bounds])
        fill(f.console.frame, Rect(x: 20, y: 30, width: 50, height: 10), rgb: 0x0012_3456)
        f.console.update([Rect(x: 20, y: 30, width: 50, height: 10)])
        // The SDL thread takes the changes before it answers readBack.
        let shot = try #require(f.sdl.readBack())
        #expect(shot.width == 160 && shot.height == 100)
        var mismatches = 0
        for y in 0..<100 {
            for x in 0..<160 where shot.pixels[y * 160 + x] & 0xffffff != f.console.frame.pixel(x: x, y: y) & 0xffffff {
                mismatches += 1
            }
        }
        #expect(mismatches == 0)
    }

    @Test func resizeFollowsTheFrame() throws {
        let f = try Fixture()
        defer { f.console.closeAll() }
        f.console.resize(width: 96, height: 64)
        paint(f.console.frame, f.console.frame.bounds, seed: 12)
        f.console.update([f.console.frame.bounds])
        let shot = try #require(f.sdl.readBack())
        #expect(shot.width == 96 && shot.height == 64)
        #expect(shot.pixels[63 * 96 + 95] & 0xffffff == f.console.frame.pixel(x: 95, y: 63) & 0xffffff)
    }

    @Test func keysMouseAndWheelBecomeLinuxInputEvents() throws {
        let f = try Fixture()
        defer { f.console.closeAll() }
        Self.key(SDL_SCANCODE_A, down: true)
        Self.key(SDL_SCANCODE_A, down: false)
        Self.push { e in e.type = SDL_MOUSEMOTION.rawValue; e.motion.x = 40; e.motion.y = 50 }
        Self.push { e in e.type = SDL_MOUSEBUTTONDOWN.rawValue; e.button.button = 1; e.button.x = 40; e.button.y = 50 }
        Self.push { e in e.type = SDL_MOUSEBUTTONUP.rawValue; e.button.button = 1; e.button.x = 40; e.button.y = 50 }
        Self.push { e in e.type = SDL_MOUSEWHEEL.rawValue; e.wheel.y = 1 }
        Self.push { e in e.type = SDL_MOUSEBUTTONDOWN.rawValue; e.button.button = 3; e.button.x = 500; e.button.y = 50 }
        f.sdl.pump()
        #expect(f.sink.events == [
            .key(code: LinuxInput.KEY_A, pressed: true), .key(code: LinuxInput.KEY_A, pressed: false),
            .absolute(x: 40, y: 50),
            .key(code: LinuxInput.BTN_LEFT, pressed: true), .key(code: LinuxInput.BTN_LEFT, pressed: false),
            .wheel(-1),
            .absolute(x: 159, y: 50),
            .key(code: LinuxInput.BTN_RIGHT, pressed: true),
        ])
        // Closing releases what is still held.
        f.sink.events.removeAll()
        f.console.closeAll()
        #expect(spin(f.loop, seconds: 2) { f.sink.events == [.key(code: LinuxInput.BTN_RIGHT, pressed: false)] }, "\(f.sink.events)")
    }

    @Test func ctrlAltTogglesGrabAndCtrlAltFTogglesFullScreenWithoutReachingTheGuest() throws {
        let f = try Fixture()
        defer { f.console.closeAll() }
        let ctrlAlt = SDL_Keymod(KMOD_LCTRL.rawValue | KMOD_LALT.rawValue)
        Self.key(SDL_SCANCODE_LCTRL, down: true, mod: KMOD_LCTRL)
        Self.key(SDL_SCANCODE_LALT, down: true, mod: ctrlAlt)
        Self.key(SDL_SCANCODE_LALT, down: false, mod: KMOD_LCTRL)
        Self.key(SDL_SCANCODE_LCTRL, down: false)
        f.sdl.pump()
        #expect(f.sdl.grabbed)
        #expect(f.sdl.title == "guest-7 - Press Ctrl-Alt to exit grab")
        #expect(f.sink.events == [
            .key(code: 29, pressed: true), .key(code: 56, pressed: true),
            .key(code: 56, pressed: false), .key(code: 29, pressed: false),
        ])
        f.sink.events.removeAll()
        Self.key(SDL_SCANCODE_LCTRL, down: true, mod: KMOD_LCTRL)
        Self.key(SDL_SCANCODE_LALT, down: true, mod: ctrlAlt)
        Self.key(SDL_SCANCODE_F, down: true, mod: ctrlAlt)
        Self.key(SDL_SCANCODE_F, down: false, mod: ctrlAlt)
        Self.key(SDL_SCANCODE_LALT, down: false, mod: KMOD_LCTRL)
        Self.key(SDL_SCANCODE_LCTRL, down: false)
        f.sdl.pump()
        #expect(f.sdl.isFullScreen)
        #expect(f.sdl.grabbed, "Ctrl-Alt-F is not a Ctrl-Alt on its own")
        #expect(!f.sink.events.contains(.key(code: LinuxInput.KEY_F, pressed: true)))
        #expect(!f.sink.events.contains(.key(code: LinuxInput.KEY_F, pressed: false)))
    }

    @Test func closingTheWindowKeepsRunningUnlessAsked() throws {
        let f = try Fixture()
        var quits = 0
        f.sdl.onQuit = { quits += 1 }
        #expect(f.loop.activeTimers == 0, "the window costs the loop no timer: SDL waits on a thread of its own")
        Self.push { e in e.type = SDL_QUIT.rawValue }
        #expect(spin(f.loop, seconds: 5) { !f.sdl.isOpen })
        #expect(quits == 0)
        f.console.update([f.console.frame.bounds]) // harmless after close
        f.console.closeAll()

        let g = try Fixture(closeQuits: true)
        var asked = 0
        g.sdl.onQuit = { asked += 1 }
        Self.push { e in e.type = SDL_QUIT.rawValue }
        #expect(spin(g.loop, seconds: 5) { !g.sdl.isOpen })
        #expect(asked == 1)
        g.console.closeAll()
    }

    @Test func sdlScancodesMapToLinuxKeycodes() {
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_A.rawValue)) == 30)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_Z.rawValue)) == 44)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_1.rawValue)) == 2)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_0.rawValue)) == 11)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_RETURN.rawValue)) == 28)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_F12.rawValue)) == 88)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_UP.rawValue)) == 103)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_KP_ENTER.rawValue)) == 96)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_NONUSBACKSLASH.rawValue)) == 86)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_RALT.rawValue)) == 100)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_LGUI.rawValue)) == 125)
        #expect(SDLScancode.linuxKeycode(UInt32(SDL_SCANCODE_VOLUMEUP.rawValue)) == 115)
        #expect(SDLScancode.linuxKeycode(0) == nil)
    }
}

/// SDL on a real X server: Xvfb started by the test, the window in a helper
/// process (SDLProbe), checked with ImageMagick's `import` and xdotool.
@Suite struct SDLUnderXvfbTests {
    /// Starts Xvfb on a free display number; returns it with its process.
    static func startXvfb() throws -> (display: String, server: Child) {
        for _ in 0..<20 {
            let n = Int.random(in: 100...2000)
            if fileExists("/tmp/.X11-unix/X\(n)") || fileExists("/tmp/.X\(n)-lock") { continue }
            let server = try Child(["Xvfb", ":\(n)", "-screen", "0", "640x480x24", "-nolisten", "tcp"], captureOutput: true)
            let deadline = EventLoop.now() + 10_000_000_000
            while EventLoop.now() < deadline && server.poll() == nil && !fileExists("/tmp/.X11-unix/X\(n)") { usleep(20_000) }
            if server.poll() == nil && fileExists("/tmp/.X11-unix/X\(n)") { return (":\(n)", server) }
            server.terminate()
        }
        throw TestFailure("could not start Xvfb on a free display")
    }

    @Test func windowShowsTheFrameAndSendsKeysAndClicks() throws {
        let (display, server) = try Self.startXvfb()
        defer { server.terminate() }
        let env = ["DISPLAY": display]
        let probePath = packageRoot + "/.build/debug/SDLProbe"
        guard fileExists(probePath) else { throw TestFailure("\(probePath) missing: swift build first") }
        let probe = try Child([probePath, "200", "120", "3"], environment: env, captureOutput: true)
        defer { probe.terminate() }
        let deadline = EventLoop.now() + 20_000_000_000
        while !probe.outputText.contains("ready") && probe.poll() == nil && EventLoop.now() < deadline { usleep(20_000) }
        #expect(probe.outputText.contains("ready"), "\(probe.outputText)")

        let info = run(["xwininfo", "-name", "xenvfb-sdl-probe"], environment: env)
        #expect(info.status == 0, "\(info.output)")
        func field(_ name: String) -> Int? {
            info.output.split(separator: "\n").first { $0.contains(name) }
                .flatMap { Int($0.split(separator: ":").last!.filter { $0 != " " }) }
        }
        let x0 = try #require(field("Absolute upper-left X")), y0 = try #require(field("Absolute upper-left Y"))
        #expect(field("Width") == 200 && field("Height") == 120)

        let dir = try makeTempDir("sdl")
        defer { removeTree(dir) }
        let shot = run(["import", "-window", "root", dir + "/root.png"], environment: env)
        #expect(shot.status == 0, "\(shot.output)")
        let root = try decodeWithPillow(dir + "/root.png")
        let expected = Frame(width: 200, height: 120)
        paint(expected, expected.bounds, seed: 3)
        var window: [UInt8] = []
        for y in y0..<y0 + 120 {
            let start = (y * root.width + x0) * 3
            window += root.rgb[start..<start + 200 * 3]
        }
        #expect(firstDifference(window, rgbBytes(expected), width: 200) == nil)

        // A still screen with the window open: the probe (its loop and its
        // SDL thread, which waits on the X connection) wakes for nothing.
        func contextSwitches() -> Int {
            var total = 0
            for task in (try? listDirectory("/proc/\(probe.pid)/task")) ?? [] {
                let status = String(decoding: readFile("/proc/\(probe.pid)/task/\(task)/status") ?? [], as: UTF8.self)
                for line in status.split(separator: "\n") where line.hasPrefix("voluntary_ctxt_switches") || line.hasPrefix("nonvoluntary_ctxt_switches") {
                    total += Int(line.split(separator: ":").last!.filter { $0 != " " && $0 != "\t" }) ?? 0
                }
            }
            return total
        }
        usleep(300_000)
        let before = contextSwitches()
        usleep(2_000_000)
        let idleSwitches = contextSwitches() - before
        #expect(idleSwitches <= 4, "the idle probe switched context \(idleSwitches) times in 2 s (its SDL window must not poll)")

        let wid = run(["xdotool", "search", "--name", "xenvfb-sdl-probe"], environment: env).output
            .split(separator: "\n").first.map(String.init) ?? ""
        let input = run(["xdotool", "mousemove", "--window", wid, "40", "50", "sleep", "0.3",
                         "click", "1", "sleep", "0.3", "key", "a", "sleep", "0.5"], environment: env)
        #expect(input.status == 0, "\(input.output)")
        let expectedTail = [
            "absolute(x: 40, y: 50)",
            "key(code: 272, pressed: true)", "key(code: 272, pressed: false)",
            "key(code: 30, pressed: true)", "key(code: 30, pressed: false)",
        ]
        func inputLines() -> [String] {
            probe.outputText.split(separator: "\n").map(String.init)
                .filter { $0.hasPrefix("key(") || $0.hasPrefix("absolute(") || $0.hasPrefix("wheel(") }
        }
        // Give the probe time on a busy machine.
        let until = EventLoop.now() + 10_000_000_000
        while Array(inputLines().suffix(5)) != expectedTail && EventLoop.now() < until { usleep(20_000) }
        #expect(Array(inputLines().suffix(5)) == expectedTail, "\(inputLines())")
    }
}
