#if canImport(Glibc)
import Glibc
#endif
import Damage
import EventLoop
import GuestKit
import Host
import Support
import XenProtocol

/// `xenvfb-testtool sim-guest --machine DIR --xenstore SOCKET --domid N [--demo] [--vdispl] [--vdispl-only] [--commands]`
/// a simulated guest as a process of its own, as under Xen —
/// GuestKit's vfb and vkbd frontends on the SimHost machine in DIR, talking
/// to xenstored through SOCKET (a domain socket, so it acts as domain N).
///
/// Without `--demo` it draws `SimGuestCommand.pattern` once connected. It
/// reports on stdout, one line each: `connected`, `drawn`, and every input
/// event it receives (`key CODE 0|1`, `pos X Y Z`, `motion DX DY DZ`).
///
/// With `--vdispl` it also runs GuestKit's `DisplayGuest` on vdispl device
/// 0: two buffers per connector, the first shown with
/// `vdisplPattern(seed: 0)`, then `vdispl-shown`; `--vdispl-only` runs it
/// without the vfb and vkbd frontends (a guest whose only screen is vdispl).
///
/// With `--commands` it also takes commands on stdin, one per line, for
/// tests that change the screen and compare pictures:
/// - `draw SEED`: repaints the rectangle (100, 50, 200×150) with a pattern
///   of SEED, sends its UPDATE event, then says `drawn SEED`;
/// - `scribble SEED COUNT`: COUNT random writes, all reported by UPDATE
///   events, then says `scribbled SEED`;
/// - `dump PATH`: writes its framebuffer as a binary PPM (P6) to PATH, then
///   says `dumped PATH`;
/// - `animate FPS SECONDS`: a 160-row band moves down the screen FPS times a
///   second (one UPDATE of the band's rows each frame), then `animated N`;
/// - `noise FPS SECONDS`: every frame also fills the rest of the screen with
///   noise (one UPDATE each), as a video or a hostile guest does;
/// - `storm FPS SECONDS`: every frame also fills the OUT ring with RESIZE
///   events alternating between two heights (a RESIZE storm);
///   each ends with `noised N` / `stormed N`;
/// - `vflip SEED`: (with `--vdispl`) draws `vdisplPattern(seed:)` into
///   connector 0's hidden buffer, flips to it, and once the flip-done event
///   came says `vflipped SEED`;
/// - `vdump PATH`: writes connector 0's shown buffer as a PPM, then `vdumped PATH`;
/// - `resize W H`: changes mode as Linux's xenfb_set_par does (RESIZE, at
///   most the initial size), repaints the whole screen with the start-up
///   pattern and says `resized W H` (`error ...` without feature-resize).
enum SimGuestCommand {
    /// What the timers of `animate`, `noise` and `storm` do.
    final class Activity {
        var frames = 0
        var timer: EventLoop.TimerID?
    }
    nonisolated(unsafe) static var activities: [String: Activity] = [:]

    /// The test pattern, a pure function of the position.
    static func pattern(x: Int, y: Int) -> UInt32 {
        UInt32((x * 7) & 0xff) << 16 | UInt32((y * 3) & 0xff) << 8 | UInt32((x ^ y) & 0xff)
    }

    static func say(_ line: String) {
        var bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
    }

    static func main(_ args: [String]) -> Int32 {
        let log = Log.logger("sim-guest")
        var machine: String?, socket: String?, domid: UInt32?, demo = false, commands = false, vdispl = false, vdisplOnly = false
        do throws(UsageError) {
            for option in try SubcommandArguments.parse(args, valued: ["--machine", "--xenstore", "--domid"],
                                                        flags: ["--demo", "--commands", "--vdispl", "--vdispl-only"]) {
                switch option.name {
                case "--machine": machine = option.value
                case "--xenstore": socket = option.value
                case "--domid": domid = option.value.flatMap { UInt32(xenstoreDecimal: $0) }
                case "--demo": demo = true
                case "--vdispl": vdispl = true
                case "--vdispl-only": vdispl = true; vdisplOnly = true
                default: commands = true
                }
            }
        } catch {
            log.error("\(error)")
            return 2
        }
        guard let machine, let socket, let domid, domid > 0 else {
            log.error("usage: xenvfb-testtool sim-guest --machine DIR --xenstore SOCKET --domid N [--demo]")
            return 2
        }
        do {
            EventLoop.blockSignals([SIGINT, SIGTERM, SIGHUP])
            let loop = try EventLoop()
            try loop.handleSignals([SIGINT, SIGTERM, SIGHUP]) { _ in loop.stop() }
            let store = try XenStoreConnection(socketPath: socket, loop: loop)
            let domain = try GuestDomain(host: SimHost(directory: machine, domid: domid), store: store, loop: loop)
            let fb: FramebufferFrontend, kbd: KeyboardFrontend
            var demoGuest: DemoGuest?
            if demo {
                let d = DemoGuest(domain: domain)
                demoGuest = d
                fb = d.fb; kbd = d.kbd
            } else {
                fb = FramebufferFrontend(domain: domain)
                kbd = KeyboardFrontend(domain: domain)
            }
            kbd.onInput = { [previous = kbd.onInput] input in
                previous?(input)
                switch input {
                case .key(let code, let pressed): say("key \(code) \(pressed ? 1 : 0)")
                case .position(let x, let y, let z): say("pos \(x) \(y) \(z)")
                case .motion(let dx, let dy, let dz): say("motion \(dx) \(dy) \(dz)")
                case .other(let t): say("other \(t)")
                }
            }
            var announced = false
            let check = {
                guard !announced, fb.state == .connected, fb.updateWanted, kbd.state == .connected else { return }
                announced = true
                say("connected")
                if !demo {
                    paintPattern(fb)
                    say("drawn")
                }
            }
            fb.onChange = check
            kbd.onChange = check
            if let demoGuest { try demoGuest.start() } else if !vdisplOnly { try fb.start(); try kbd.start() }
            var displayGuest: DisplayGuest?
            if vdispl {
                let g = DisplayGuest(domain: domain)
                g.initialDraw = { _, b in paint(b, seed: 0) }
                g.onReady = { say("vdispl-shown") }
                try g.start()
                displayGuest = g
            }
            var input: [UInt8] = []
            if commands {
                try loop.watch(fd: 0) { _ in
                    var chunk = [UInt8](repeating: 0, count: 4096)
                    let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                    if n <= 0 {
                        loop.unwatch(fd: 0)
                        return
                    }
                    input += chunk[..<n]
                    while let nl = input.firstIndex(of: 10) {
                        let line = String(decoding: input[..<nl], as: UTF8.self)
                        input.removeSubrange(...nl)
                        command(line, fb: fb, display: displayGuest, loop: loop)
                    }
                }
            }
            loop.run()
            withExtendedLifetime((store, domain, fb, kbd, demoGuest, displayGuest)) {}
            return 0
        } catch {
            log.error("\(error)")
            return 1
        }
    }

    /// Paints the start-up pattern over the whole screen and reports it.
    static func paintPattern(_ fb: FramebufferFrontend) {
        _ = fb.withPixels { px in
            for y in 0..<fb.height {
                let row = (px.baseAddress! + y * fb.stride).assumingMemoryBound(to: UInt32.self)
                for x in 0..<fb.width { row[x] = pattern(x: x, y: y) }
            }
        }
        fb.update(Rect(x: 0, y: 0, width: fb.width, height: fb.height))
    }

    /// The pattern `draw SEED` paints.
    static func pattern(x: Int, y: Int, seed: Int) -> UInt32 {
        UInt32((x &* 3 &+ seed &* 41) & 0xff) << 16 | UInt32((y &* 5 &+ seed &* 13) & 0xff) << 8 | UInt32((x &+ y &+ seed) & 0xff)
    }

    /// Runs `frame` FPS times a second for SECONDS on the loop, then says `done N`.
    static func repeatEvery(_ name: String, fps: Int, seconds: Int, loop: EventLoop, done: String, _ frame: @escaping (Int) -> Void) {
        if let old = activities[name], let t = old.timer { loop.cancelTimer(t) }
        let activity = Activity()
        activities[name] = activity
        let interval = Duration.nanoseconds(Int64(1_000_000_000 / max(1, min(fps, 1000))))
        let end = EventLoop.now() + UInt64(max(0, seconds)) * 1_000_000_000
        activity.timer = loop.addTimer(after: interval, repeating: interval) {
            guard EventLoop.now() < end else {
                if let t = activity.timer { loop.cancelTimer(t) }
                activity.timer = nil
                say("\(done) \(activity.frames)")
                return
            }
            frame(activity.frames)
            activity.frames += 1
        }
    }

    /// The pattern `vflip SEED` paints into a whole vdispl buffer.
    static func vdisplPattern(x: Int, y: Int, seed: Int) -> UInt32 {
        UInt32((x &* 5 &+ seed &* 29) & 0xff) << 16 | UInt32((y &* 7 &+ seed &* 3) & 0xff) << 8 | UInt32((x &* y &+ seed) & 0xff)
    }

    static func paint(_ b: DisplayFrontend.DumbBuffer, seed: Int) {
        _ = b.withBytes { px in
            for y in 0..<b.height {
                let row = (px.baseAddress! + y * b.stride).assumingMemoryBound(to: UInt32.self)
                for x in 0..<b.width { row[x] = vdisplPattern(x: x, y: y, seed: seed) }
            }
        }
    }

    /// Writes `width`×`height` pixels as a binary PPM; whether it all went.
    static func writePPM(_ path: String, width: Int, height: Int, pixel: (Int, Int) -> UInt32) -> Bool {
        var bytes = Array("P6\n\(width) \(height)\n255\n".utf8)
        bytes.reserveCapacity(bytes.count + width * height * 3)
        for y in 0..<height {
            for x in 0..<width {
                let p = pixel(x, y)
                bytes += [UInt8(p >> 16 & 0xff), UInt8(p >> 8 & 0xff), UInt8(p & 0xff)]
            }
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            if n <= 0 { break }
            off += n
        }
        close(fd)
        return off == bytes.count
    }

    static func command(_ line: String, fb: FramebufferFrontend, display: DisplayGuest?, loop: EventLoop) {
        let words = line.split(separator: " ", maxSplits: 1).map(String.init)
        let numbers = words.count == 2 ? words[1].split(separator: " ").compactMap { Int($0) } : []
        switch (words.first, words.count) {
        case ("animate", 2) where numbers.count == 2:
            repeatEvery("animate", fps: numbers[0], seconds: numbers[1], loop: loop, done: "animated") { n in
                guard fb.state == .connected, fb.height > 160 else { return }
                let top = (n * 8) % (fb.height - 160)
                _ = fb.withPixels { px in
                    for y in 0..<fb.height where y < 600 {
                        let inBand = y >= top && y < top + 160
                        let row = (px.baseAddress! + y * fb.stride).assumingMemoryBound(to: UInt32.self)
                        if inBand { for x in 0..<fb.width { row[x] = pattern(x: x, y: y - top, seed: n) } }
                    }
                }
                // The band's new rows and the rows it left.
                fb.update(Rect(x: 0, y: max(0, top - 8), width: fb.width, height: 168))
            }
        case ("noise", 2) where numbers.count == 2:
            var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
            repeatEvery("noise", fps: numbers[0], seconds: numbers[1], loop: loop, done: "noised") { _ in
                guard fb.state == .connected else { return }
                _ = fb.withPixels { px in
                    let words = px.count / 8
                    let p = px.baseAddress!.assumingMemoryBound(to: UInt64.self)
                    // Every 7th word: enough noise to defeat compression, cheap to make.
                    for i in stride(from: 0, to: words, by: 7) {
                        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
                        p[i] = rng
                    }
                }
                fb.update(Rect(x: 0, y: 0, width: fb.width, height: fb.height))
            }
        case ("storm", 2) where numbers.count == 2:
            repeatEvery("storm", fps: numbers[0], seconds: numbers[1], loop: loop, done: "stormed") { n in
                guard fb.state == .connected else { return }
                // As many as the ring has room for (a full ring each frame).
                for i in 0..<max(0, HostileGuest(fb: fb).outRoom) {
                    let h = (n + i) % 2 == 0 ? fb.height : fb.height - 1
                    fb.sendResize(width: fb.width, height: h, stride: fb.stride, depth: 32, offset: 0)
                }
            }
        case ("draw", 2):
            guard let seed = Int(words[1]), fb.state == .connected else { return say("error \(line)") }
            let r = Rect(x: 100, y: 50, width: min(200, fb.width - 100), height: min(150, fb.height - 50))
            _ = fb.withPixels { px in
                for y in r.y..<r.maxY {
                    let row = (px.baseAddress! + y * fb.stride).assumingMemoryBound(to: UInt32.self)
                    for x in r.x..<r.maxX { row[x] = pattern(x: x, y: y, seed: seed) }
                }
            }
            fb.update(r)
            say("drawn \(seed)")
        case ("scribble", 2):
            // `scribble SEED COUNT`: COUNT random writes (fills, patterns,
            // single pixels), each reported by UPDATE events that cover it
            // (exactly, over-reported, merged with the next, or past the
            // screen's edge), then `scribbled SEED`. For convergence tests.
            let args = words[1].split(separator: " ").compactMap { Int($0) }
            guard args.count == 2, fb.state == .connected, fb.width > 0, fb.height > 0 else { return say("error \(line)") }
            var rng = UInt64(truncatingIfNeeded: args[0]) &* 0x9E37_79B9_7F4A_7C15 | 1
            func next(_ n: Int) -> Int {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
                return Int(rng % UInt64(max(n, 1)))
            }
            var pending: Rect?
            for _ in 0..<max(args[1], 0) {
                let x = next(fb.width), y = next(fb.height)
                let r = Rect(x: x, y: y, width: min(1 + next(200), fb.width - x), height: min(1 + next(150), fb.height - y))
                let color = UInt32(truncatingIfNeeded: next(1 << 24))
                _ = fb.withPixels { px in
                    switch next(3) {
                    case 0:
                        for yy in r.y..<r.maxY {
                            let row = (px.baseAddress! + yy * fb.stride).assumingMemoryBound(to: UInt32.self)
                            for xx in r.x..<r.maxX { row[xx] = color }
                        }
                    case 1:
                        for yy in r.y..<r.maxY {
                            let row = (px.baseAddress! + yy * fb.stride).assumingMemoryBound(to: UInt32.self)
                            for xx in r.x..<r.maxX { row[xx] = pattern(x: xx, y: yy, seed: Int(color)) }
                        }
                    default:
                        let row = (px.baseAddress! + r.y * fb.stride).assumingMemoryBound(to: UInt32.self)
                        row[r.x] = color
                    }
                }
                switch next(4) {
                case 0: fb.update(r)
                case 1: fb.update(Rect(x: r.x - next(20), y: r.y - next(20), width: r.width + 40, height: r.height + 40))
                case 2: pending = pending.map { $0.union(r) } ?? r
                default:
                    if let p = pending { fb.update(p); pending = nil }
                    fb.update(r)
                }
            }
            if let p = pending { fb.update(p) }
            say("scribbled \(args[0])")
        case ("resize", 2):
            let size = words[1].split(separator: " ").compactMap { Int($0) }
            guard size.count == 2, fb.resize(width: size[0], height: size[1]) else { return say("error \(line)") }
            paintPattern(fb)
            say("resized \(size[0]) \(size[1])")
        case ("dump", 2):
            let path = words[1]
            let ok = writePPM(path, width: fb.width, height: fb.height) { x, y in fb.pixel(x: x, y: y) ?? 0 }
            say(ok ? "dumped \(path)" : "error \(line)")
        case ("vflip", 2):
            guard let seed = Int(words[1]), let display else { return say("error \(line)") }
            let sent = display.flip(connector: 0, draw: { paint($0, seed: seed) }, done: { say("vflipped \(seed)") })
            if !sent { say("error \(line)") }
        case ("vdump", 2):
            let path = words[1]
            guard let b = display?.front(0) else { return say("error \(line)") }
            let ok = writePPM(path, width: b.width, height: b.height) { x, y in b.pixel(x: x, y: y) ?? 0 }
            say(ok ? "vdumped \(path)" : "error \(line)")
        default:
            say("error \(line)")
        }
    }
}
