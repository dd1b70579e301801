#if canImport(Glibc)
import Glibc
#endif
import Damage
import EventLoop
import GuestKit
import Host
import Support
import XenStore

/// `xenvfb-bench backend`: the device model's real path, without Xen.
///
/// A simulated machine (SimHost, the embedded xenstored on a thread), the
/// shipped `xenvfb` binary as its device model (a process of its own, as
/// libxl starts it), and in this process a guest (GuestKit's frontends, which
/// behave as Linux's xen-fbfront) that draws known workloads and sends the
/// UPDATE events Linux's fb_deferred_io sends (one full-width band over the
/// pages written), plus VNC viewers that ask as real ones ask (Raw; ZRLE in
/// os-autoinst's order; TigerVNC's list, which gets Tight) and decode what
/// arrives. For each setup (viewers or PNG display) and workload it measures
/// the device model's CPU time (every thread, from /proc/PID/task/*/schedstat)
/// per guest frame and per delivered update, bytes per update, the device
/// model's context switches, and checks each viewer's final picture against
/// the guest's framebuffer. Times are ratios to a memcpy of the frame measured
/// in the same run. Then key-to-screen latency: a viewer's key → the guest
/// (vkbd) repaints a square with one write (a full-screen UPDATE, as Linux's
/// fb write() sends) → the same viewer sees it.
enum BackendBench {
    static let domid: UInt32 = 7

    struct Options {
        var seconds = 3.0
        var fps = 30
        var setups = Setup.all.map(\.name)
        var workloads = Workload.all.map(\.name)
        var rounds = 40
        var perfRecord: String?
    }

    /// Which displays the device model runs and which viewers attach.
    struct Setup {
        let name: String
        let viewers: [BenchClient.Profile]
        let png: Bool
        static let all: [Setup] = [
            Setup(name: "none", viewers: [], png: false),
            Setup(name: "raw", viewers: [.raw], png: false),
            Setup(name: "zrle", viewers: [.zrle], png: false),
            Setup(name: "tight", viewers: [.tight], png: false),
            Setup(name: "raw+tight", viewers: [.raw, .tight], png: false),
            Setup(name: "png", viewers: [], png: true),
        ]
        var vnc: Bool { !viewers.isEmpty }
    }

    /// What the guest draws each frame (n counts frames); returns the pixel
    /// rects it wrote.
    struct Workload: Sendable {
        let name: String
        let draw: @Sendable (Painter, Int) -> [Rect]
        static let all: [Workload] = [
            Workload(name: "cursor") { p, n in
                // A text cursor blinking: an 8×16 cell, on and off.
                let r = Rect(x: 96, y: 400, width: 8, height: 16)
                p.fill(r, n % 2 == 0 ? 0xe0e0e0 : 0x000000)
                return [r]
            },
            Workload(name: "terminal") { p, n in
                // A full-screen terminal scrolls one 16-row text line.
                p.scroll(up: 16)
                let line = Rect(x: 0, y: p.height - 16, width: p.width, height: 16)
                p.fill(line, 0x000000)
                for col in 0 ..< p.width / 8 where (col &* 7 &+ n &* 13) % 5 != 0 {
                    p.glyph(x: col * 8, y: line.y, seed: col &+ n &* 31)
                }
                return [Rect(x: 0, y: 0, width: p.width, height: p.height)]
            },
            Workload(name: "window") { p, n in
                // A 300×200 window dragged 8 px right per frame over a plain desktop.
                let x0 = 40 + (n % 50) * 8
                let old = Rect(x: n % 50 == 0 ? 40 + 49 * 8 : x0 - 8, y: 200, width: n % 50 == 0 ? 300 : 8, height: 200)
                p.fill(old, 0x204060)
                p.fill(Rect(x: x0, y: 200, width: 300, height: 200), 0xd0d0d0)
                p.fill(Rect(x: x0, y: 200, width: 300, height: 20), 0x3050a0)
                return [old, Rect(x: x0, y: 200, width: 300, height: 200)]
            },
            Workload(name: "band") { p, n in
                // The real-Xen test's animation: an 800×160 band moving down 8 rows a frame.
                let top = (n * 8) % (p.height - 160)
                p.pattern(Rect(x: 0, y: top, width: p.width, height: 160), seed: n)
                if top >= 8 { p.fill(Rect(x: 0, y: top - 8, width: p.width, height: 8), 0x101010) }
                return [Rect(x: 0, y: max(0, top - 8), width: p.width, height: 168)]
            },
            Workload(name: "video") { p, n in
                // Full-screen video: every pixel changes, smooth gradients plus grain.
                p.video(n)
                return [Rect(x: 0, y: 0, width: p.width, height: p.height)]
            },
        ]
    }

    static func main(_ args: [String]) -> Int32 {
        var o = Options()
        do throws(UsageError) {
            for option in try SubcommandArguments.parse(args, valued: ["--seconds", "--fps", "--setups", "--workloads", "--rounds", "--perf-record"]) {
                let v = option.value ?? ""
                switch option.name {
                case "--seconds": o.seconds = max(0.5, Double(v) ?? 3)
                case "--fps": o.fps = max(1, min(Int(v) ?? 30, 240))
                case "--setups": o.setups = v.split(separator: ",").map(String.init)
                case "--workloads": o.workloads = v.split(separator: ",").map(String.init)
                case "--rounds": o.rounds = max(0, Int(v) ?? 40)
                default: o.perfRecord = v
                }
            }
        } catch {
            print("\(error)\n" + usage)
            return 2
        }
        let setups = Setup.all.filter { o.setups.contains($0.name) }
        let workloads = Workload.all.filter { o.workloads.contains($0.name) }
        guard !setups.isEmpty, !workloads.isEmpty else { print(usage); return 2 }
        #if DEBUG
        print("note: debug build; build with -c release (and the device model with --static-swift-stdlib, as shipped)")
        #endif
        Log.bootstrap(level: .warning)
        EventLoop.blockSignals([SIGPIPE])
        let xenvfb = siblingPath("xenvfb")
        guard access(xenvfb, X_OK) == 0 else { print("no \(xenvfb): build the package first"); return 1 }

        var load = [UInt8](repeating: 0, count: 64)
        let lfd = open("/proc/loadavg", O_RDONLY)
        let ln = lfd >= 0 ? read(lfd, &load, 64) : 0
        if lfd >= 0 { close(lfd) }
        let loadText = String(decoding: load[0 ..< max(0, ln)], as: UTF8.self).split(separator: " ").prefix(3).joined(separator: " ")
        print("xenvfb-bench backend: device model \(xenvfb), guest 800x600x32 in this process, \(o.fps) guest frames/s for "
              + "\(BenchCommand.fmt(o.seconds)) s per cell; load average \(loadText)")
        var failures = 0
        var memcpyMicros = 0.0
        var rows: [String] = []
        var latencies: [String] = []
        for setup in setups {
            do {
                let m = try BenchMachine(xenvfb: xenvfb, setup: setup)
                defer { m.stop() }
                try m.connect()
                if memcpyMicros == 0 {
                    memcpyMicros = m.memcpyMicros()
                    print("memcpy of the 800x600 frame (1,920,000 bytes): \(BenchCommand.fmt(memcpyMicros)) µs of CPU (the unit of the ×-columns)")
                    print("")
                    print(header)
                }
                m.countSyscalls = m.countSyscalls && o.perfRecord == nil
                let perf = o.perfRecord.map { m.startPerf("\($0).\(setup.name)") }
                for w in workloads {
                    let c = try m.cell(w, seconds: o.seconds, fps: o.fps)
                    let row = format(setup, w, c, memcpyMicros)
                    print(row)
                    rows.append(row)
                    if !c.picturesMatch { failures += 1 }
                }
                if let perf { m.stopPerf(perf) }
                if setup.vnc && o.rounds > 0 {
                    let l = try m.keyToScreen(rounds: o.rounds)
                    latencies.append("\(BenchCommand.pad(setup.name, 10)) \(l)")
                }
            } catch {
                print("\(setup.name): \(error)")
                failures += 1
            }
        }
        if !latencies.isEmpty {
            print("")
            print("key-to-screen (viewer's key → guest repaints 16×16 with one write, a full-screen UPDATE → the same viewer has it), \(o.rounds) rounds:")
            latencies.forEach { print($0) }
        }
        return failures == 0 ? 0 : 1
    }

    static let usage = "usage: xenvfb-bench backend [--seconds S] [--fps N] [--setups none,raw,zrle,tight,raw+tight,png] "
        + "[--workloads cursor,terminal,window,band,video] [--rounds N] [--perf-record FILE]"

    static let header = BenchCommand.pad("setup", 10) + BenchCommand.pad("workload", 9) + BenchCommand.pad("frames", 7)
        + BenchCommand.pad("updates", 10) + BenchCommand.pad("DM CPU/frame", 18) + BenchCommand.pad("DM CPU/update", 18)
        + BenchCommand.pad("bytes/update", 20) + BenchCommand.pad("ctxsw", 7) + BenchCommand.pad("syscalls", 9)
        + BenchCommand.pad("faults", 8) + "picture"

    static func format(_ s: Setup, _ w: Workload, _ c: BenchMachine.CellResult, _ unit: Double) -> String {
        let frames = max(c.frames, 1)
        let perFrame = c.cpuMicros / Double(frames)
        let delivered = c.delivered.isEmpty ? frames : max(c.delivered.min()!, 1)
        let perUpdate = c.cpuMicros / Double(delivered)
        let bytes = c.delivered.isEmpty ? "-" : c.bytes.map { "\(($0 + delivered / 2) / delivered)" }.joined(separator: "/")
        let frameBytes = 800.0 * 600 * 4
        let bytesRatio = c.bytes.isEmpty ? "" : " (" + c.bytes.map { BenchCommand.fmt(Double($0) / Double(delivered) / frameBytes * 100) + "%" }.joined(separator: "/") + ")"
        return BenchCommand.pad(s.name, 10) + BenchCommand.pad(w.name, 9) + BenchCommand.pad("\(c.frames)", 7)
            + BenchCommand.pad(c.delivered.isEmpty ? "-" : c.delivered.map(String.init).joined(separator: "/"), 10)
            + BenchCommand.pad("\(BenchCommand.fmt(perFrame)) \(BenchCommand.ratio(perFrame, unit))", 18)
            + BenchCommand.pad(c.delivered.isEmpty ? "-" : "\(BenchCommand.fmt(perUpdate)) \(BenchCommand.ratio(perUpdate, unit))", 18)
            + BenchCommand.pad(bytes + bytesRatio, 20)
            + BenchCommand.pad(BenchCommand.fmt(Double(c.contextSwitches) / Double(frames)), 7)
            + BenchCommand.pad(c.syscalls.map { BenchCommand.fmt(Double($0) / Double(frames)) } ?? "-", 9)
            + BenchCommand.pad(BenchCommand.fmt(Double(c.faults) / Double(frames)), 8)
            + (c.picturesMatch ? "ok" : "DIFFERS: \(c.note)")
    }

    /// A binary built next to this one.
    static func siblingPath(_ name: String) -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0 ..< n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "./xenvfb-bench"
        return String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/" + name
    }
}

/// Draws into the guest's framebuffer.
struct Painter {
    let base: UnsafeMutableRawPointer
    let width: Int
    let height: Int
    let stride: Int

    func row(_ y: Int) -> UnsafeMutablePointer<UInt32> { (base + y * stride).assumingMemoryBound(to: UInt32.self) }

    func fill(_ r: Rect, _ colour: UInt32) {
        let c = r.intersection(Rect(x: 0, y: 0, width: width, height: height))
        guard !c.isEmpty else { return }
        for y in c.y ..< c.maxY { (row(y) + c.x).update(repeating: colour, count: c.width) }
    }

    func scroll(up rows: Int) {
        memmove(base, base + rows * stride, (height - rows) * stride)
    }

    /// An 8×16 character-like glyph.
    func glyph(x: Int, y: Int, seed: Int) {
        var bits = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15
        for j in 2 ..< 14 {
            let r = row(y + j) + x
            bits = bits &* 6364136223846793005 &+ 1442695040888963407
            for i in 1 ..< 7 where (bits >> UInt64(i + 20)) & 1 == 1 { r[i] = 0xc0c0c0 }
        }
    }

    func pattern(_ r: Rect, seed: Int) {
        for y in r.y ..< min(r.maxY, height) {
            let p = row(y)
            for x in r.x ..< min(r.maxX, width) {
                p[x] = UInt32((x &* 3 &+ seed &* 41) & 0xff) << 16 | UInt32(((y - r.y) &* 5 &+ seed &* 13) & 0xff) << 8
                    | UInt32((x &+ y - r.y &+ seed) & 0xff)
            }
        }
    }

    func video(_ n: Int) {
        var grain = UInt32(truncatingIfNeeded: n) &* 2654435761 | 1
        for y in 0 ..< height {
            let p = row(y)
            for x in 0 ..< width {
                grain ^= grain << 13; grain ^= grain >> 17; grain ^= grain << 5
                let r = UInt32(truncatingIfNeeded: (x + n * 3) / 3) & 0xff
                let g = UInt32(truncatingIfNeeded: (y + n * 2) / 2) & 0xff
                let b = UInt32(truncatingIfNeeded: (x + y + n * 5) / 4) & 0xff
                p[x] = ((r ^ (grain & 7)) << 16 | g << 8 | b) & 0xffffff
            }
        }
    }
}

/// One simulated machine: xenstored, the device model, the guest and the viewers.
final class BenchMachine {
    let setup: BackendBench.Setup
    let loop: EventLoop
    let dir: String
    let server: XenstoreServer
    let dom0: XenStoreConnection
    let dm: pid_t
    let domain: GuestDomain
    let fb: FramebufferFrontend
    let kbd: KeyboardFrontend
    private(set) var viewers: [BenchClient] = []
    private var stopped = false
    private var frame = 0
    /// Colour the guest paints on the next key press (key-to-screen).
    private var keyColour: UInt32 = 0

    var pngDir: String { dir + "/png" }

    init(xenvfb: String, setup: BackendBench.Setup) throws {
        self.setup = setup
        loop = try EventLoop()
        dir = try SimHost.makeDirectory(prefix: "xenvfb-bench")
        server = try XenstoreServer()
        let socket = dir + "/xenstored"
        try server.listen(path: socket)
        try server.addDomainSocket(domid: BackendBench.domid, path: dir + "/xenstored-dom\(BackendBench.domid)")
        server.introduceDomain(BackendBench.domid)
        try server.startOnThread()
        dom0 = try XenStoreConnection(socketPath: socket, loop: loop)
        try dom0.write("/local/domain/\(BackendBench.domid)/name", "bench")
        try Toolstack.addFramebuffer(store: dom0, domid: BackendBench.domid)

        var port = 0
        var args = ["--domid", "\(BackendBench.domid)", "--name", "bench", "--sim-host", dir, "--qmp", "unix:\(dir)/qmp"]
        if setup.vnc {
            port = Self.freePort()
            args += ["-vnc", "127.0.0.1:\(port - 5900)"]
        } else {
            args += ["-vnc", "none", "-display", "none", "-nographic"]
        }
        if setup.png { args += ["--display", "png:dir=\(dir)/png,interval=0,keep=2"] }
        dm = try Self.spawn(xenvfb, args, environment: ["XENSTORED_PATH=\(socket)"], stderr: dir + "/dm.log")
        self.port = port
        let guestStore = try XenStoreConnection(socketPath: dir + "/xenstored-dom\(BackendBench.domid)", loop: loop)
        domain = try GuestDomain(host: SimHost(directory: dir, domid: BackendBench.domid), store: guestStore, loop: loop)
        fb = FramebufferFrontend(domain: domain)
        kbd = KeyboardFrontend(domain: domain)
    }

    private let port: Int

    /// Waits for the device model, connects the guest and the viewers.
    func connect() throws {
        let dom0 = self.dom0
        guard run(seconds: 20, until: { (try? dom0.read("/local/domain/0/device-model/\(BackendBench.domid)/state")) == "running" }) else {
            throw BenchError("the device model did not start (\(dir)/dm.log)")
        }
        try fb.start()
        try kbd.start()
        let fb = self.fb, kbd = self.kbd
        guard run(seconds: 20, until: { fb.state == .connected && fb.updateWanted && kbd.state == .connected }) else {
            throw BenchError("the guest did not connect (\(dir)/dm.log)")
        }
        // A picture to start from, as a guest's console shows one.
        _ = fb.withPixels { px in
            Painter(base: px.baseAddress!, width: fb.width, height: fb.height, stride: fb.stride)
                .pattern(Rect(x: 0, y: 0, width: fb.width, height: fb.height), seed: 0)
        }
        fb.update(Rect(x: 0, y: 0, width: fb.width, height: fb.height))
        kbd.onInput = { [weak self] input in self?.keyInput(input) }
        for profile in setup.viewers {
            viewers.append(try BenchClient(port: port, profile: profile))
        }
        settle()
    }

    static func freePort() -> Int {
        for port in 5950 ..< 5999 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if rc == 0 { return port }
        }
        return 5999
    }

    static func spawn(_ path: String, _ args: [String], environment: [String], stderr: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) }
        var e = environ
        while let p = e.pointee { env.append(strdup(p)); e += 1 }
        env.append(nil)
        defer { env.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, env)
        guard rc == 0 else { throw BenchError("posix_spawn \(path): errno \(rc)") }
        return pid
    }

    func stop() {
        guard !stopped else { return }
        stopped = true
        viewers.forEach { $0.stop() }
        kill(dm, SIGTERM)
        var status: Int32 = 0
        waitpid(dm, &status, 0)
        fb.detach()
        kbd.detach()
        server.stop()
        SimHost.removeDirectory(dir)
    }

    @discardableResult
    func run(seconds: Double, until condition: () -> Bool) -> Bool {
        let deadline = EventLoop.now() + UInt64(seconds * 1e9)
        while !condition() {
            if EventLoop.now() > deadline { return false }
            loop.runOnce(timeoutMilliseconds: 5)
        }
        return true
    }

    /// Runs the loop until nothing has reached a viewer (or the PNG
    /// display's folder) for 300 ms.
    func settle() {
        var last = progress()
        var since = EventLoop.now()
        let deadline = since + 20_000_000_000
        while EventLoop.now() < deadline {
            loop.runOnce(timeoutMilliseconds: 20)
            let now = progress()
            if now != last { last = now; since = EventLoop.now() }
            if EventLoop.now() - since > 300_000_000 { return }
        }
    }

    private func progress() -> [Int] {
        viewers.map { $0.snapshot.updates } + [setup.png ? pngFrames() : 0, Int(cpuNanoseconds() / 1_000_000)]
    }

    // MARK: Measuring

    /// CPU time of every thread of the device model (ns), context switches.
    func cpuNanoseconds() -> UInt64 { taskSum { path in
        guard let text = Self.readFile(path + "/schedstat") else { return 0 }
        return UInt64(text.split(separator: " ").first ?? "0") ?? 0
    } }

    func contextSwitches() -> UInt64 { taskSum { path in
        guard let text = Self.readFile(path + "/status") else { return 0 }
        var n: UInt64 = 0
        for line in text.split(separator: "\n") where line.hasPrefix("voluntary_ctxt_switches:") || line.hasPrefix("nonvoluntary_ctxt_switches:") {
            n += UInt64(line.split(separator: "\t").last ?? "0") ?? 0
        }
        return n
    } }

    private func taskSum(_ value: (String) -> UInt64) -> UInt64 {
        guard let d = opendir("/proc/\(dm)/task") else { return 0 }
        defer { closedir(d) }
        var sum: UInt64 = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.first?.isNumber == true else { continue }
            sum += value("/proc/\(dm)/task/\(name)")
        }
        return sum
    }

    static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buf, buf.count)
        return n > 0 ? String(decoding: buf[0 ..< n], as: UTF8.self) : nil
    }

    /// The highest numbered capture of the PNG display.
    func pngFrames() -> Int {
        guard let d = opendir(pngDir) else { return 0 }
        defer { closedir(d) }
        var best = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix("frame-"), let n = Int(name.dropFirst(6).prefix { $0.isNumber }) { best = max(best, n) }
        }
        return best
    }

    /// Median CPU time of a memcpy of the guest's frame, in µs.
    func memcpyMicros() -> Double {
        let bytes = fb.stride * fb.height
        let a = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let b = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { a.deallocate(); b.deallocate() }
        memset(a, 0x20, bytes)
        memset(b, 0x10, bytes)
        var samples: [Double] = []
        for _ in 0 ..< 51 {
            let t = Self.threadMicros()
            memcpy(b, a, bytes)
            samples.append(Self.threadMicros() - t)
        }
        return samples.sorted()[samples.count / 2]
    }

    static func threadMicros() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) * 1e6 + Double(ts.tv_nsec) / 1e3
    }

    struct CellResult {
        var frames = 0
        var cpuMicros = 0.0
        var contextSwitches = 0
        /// System calls (perf stat, when perf works) and page faults of the device model.
        var syscalls: Int?
        var faults = 0
        var delivered: [Int] = []
        var bytes: [Int] = []
        var picturesMatch = true
        var note = ""
    }

    /// Draws `seconds` × `fps` frames of `w`, paced, then waits for the
    /// viewers to have everything.
    func cell(_ w: BackendBench.Workload, seconds: Double, fps: Int) throws -> CellResult {
        settle()
        var r = CellResult()
        let cpu0 = cpuNanoseconds(), cs0 = contextSwitches(), faults0 = faults()
        let counter = countSyscalls ? startSyscallCount() : nil
        let before = viewers.map(\.snapshot)
        let png0 = setup.png ? pngFrames() : 0
        let total = Int(seconds * Double(fps))
        let interval = 1_000_000_000 / UInt64(fps)
        let start = EventLoop.now()
        var drawn = 0
        while drawn < total {
            let due = start + UInt64(drawn) * interval
            let now = EventLoop.now()
            if now < due {
                loop.runOnce(timeoutMilliseconds: Int32(max(1, (due - now) / 1_000_000)))
                continue
            }
            draw(w)
            drawn += 1
            loop.runOnce(timeoutMilliseconds: 0)
        }
        settle()
        r.frames = drawn
        r.cpuMicros = Double(cpuNanoseconds() - cpu0) / 1000
        r.contextSwitches = Int(contextSwitches() - cs0)
        r.faults = Int(faults() - faults0)
        r.syscalls = counter.flatMap { stopSyscallCount($0) }
        for (v, b) in zip(viewers, before) {
            let s = v.snapshot
            r.delivered.append(s.updates - b.updates)
            r.bytes.append(s.bytes - b.bytes)
            if let e = v.error { r.picturesMatch = false; r.note = e }
        }
        if setup.png { r.delivered.append(pngFrames() - png0) }
        // Every viewer must show exactly what the guest has.
        var guest = [UInt32](repeating: 0, count: fb.width * fb.height)
        _ = fb.withPixels { px in
            for y in 0 ..< fb.height {
                let row = (px.baseAddress! + y * fb.stride).assumingMemoryBound(to: UInt32.self)
                for x in 0 ..< fb.width { guest[y * fb.width + x] = row[x] & 0xffffff }
            }
        }
        for v in viewers where r.picturesMatch {
            let p = v.pictureCopy()
            if p != guest {
                r.picturesMatch = false
                let k = (0 ..< p.count).first { p[$0] != guest[$0] } ?? 0
                r.note = "\(v.profile.rawValue) viewer: \(zip(p, guest).filter { $0 != $1 }.count) pixels, first at (\(k % fb.width), \(k / fb.width))"
            }
        }
        return r
    }

    private func draw(_ w: BackendBench.Workload) {
        frame += 1
        var rects: [Rect] = []
        _ = fb.withPixels { px in
            rects = w.draw(Painter(base: px.baseAddress!, width: fb.width, height: fb.height, stride: fb.stride), frame)
        }
        // fb_deferred_io: the pages written, as one full-width band of rows.
        var first = Int.max, last = -1
        for r in rects where !r.isEmpty {
            first = min(first, (r.y * fb.stride + r.x * 4) / 4096)
            last = max(last, ((r.maxY - 1) * fb.stride + r.maxX * 4 - 1) / 4096)
        }
        guard last >= 0 else { return }
        let y0 = first * 4096 / fb.stride
        let y1 = min(((last + 1) * 4096 - 1) / fb.stride, fb.height - 1)
        fb.update(Rect(x: 0, y: y0, width: fb.width, height: y1 - y0 + 1))
    }

    // MARK: Key to screen

    private func keyInput(_ input: ReceivedInput) {
        guard case .key(let code, let pressed) = input, code == 30, pressed else { return }
        // One write(2) to /dev/fb0: xen-fbfront sends an UPDATE of the whole screen.
        fb.fill(Rect(x: 600, y: 500, width: 16, height: 16), color: keyColour)
        fb.update(Rect(x: 0, y: 0, width: fb.width, height: fb.height))
    }

    /// p50/p90 of key → screen over `rounds` keys, for each viewer.
    func keyToScreen(rounds: Int) throws -> String {
        var out: [String] = []
        for (index, v) in viewers.enumerated() {
            var samples: [Double] = []
            var lost = 0
            for round in 0 ..< rounds {
                settle()
                keyColour = UInt32(truncatingIfNeeded: 0x102030 &+ round &* 0x0b0705 &+ index &* 0x400000) & 0xffffff
                if keyColour == 0 { keyColour = 1 }
                let t0 = EventLoop.now()
                v.sendKey(0x61, watch: 600, 500, for: keyColour)
                if run(seconds: 3, until: { v.probeSeen != nil }), let t1 = v.probeSeen {
                    samples.append(Double(t1 &- t0) / 1e6)
                } else {
                    lost += 1
                }
            }
            samples.sort()
            guard !samples.isEmpty else { out.append("\(v.profile.rawValue): no key reached the screen"); continue }
            func q(_ p: Double) -> String { BenchCommand.fmt(samples[min(samples.count - 1, Int(Double(samples.count) * p))]) }
            out.append("\(v.profile.rawValue) p50 \(q(0.5)) ms, p90 \(q(0.9)) ms, max \(BenchCommand.fmt(samples.last!)) ms"
                       + (lost > 0 ? ", \(lost) lost" : ""))
        }
        return out.joined(separator: "; ")
    }

    // MARK: perf

    /// Count system calls with `perf stat` (off while `perf record` runs).
    var countSyscalls = access("/usr/bin/perf", X_OK) == 0

    /// Minor and major page faults of the whole device model (/proc/PID/stat).
    func faults() -> UInt64 {
        guard let text = Self.readFile("/proc/\(dm)/stat"), let close = text.lastIndex(of: ")") else { return 0 }
        let f = text[text.index(after: close)...].split(separator: " ")
        // After the name: state is field 0, minflt 7, majflt 9.
        guard f.count > 9 else { return 0 }
        return (UInt64(f[7]) ?? 0) + (UInt64(f[9]) ?? 0)
    }

    private func startSyscallCount() -> (pid_t, String)? {
        let out = dir + "/syscalls-\(EventLoop.now())"
        guard let pid = try? Self.spawn("/usr/bin/perf", ["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o", out, "-p", "\(dm)"],
                                        environment: [], stderr: "/dev/null") else { return nil }
        // perf attaches within a few milliseconds; give it time before the cell starts.
        usleep(200_000)
        return (pid, out)
    }

    private func stopSyscallCount(_ p: (pid_t, String)) -> Int? {
        kill(p.0, SIGINT)
        var status: Int32 = 0
        waitpid(p.0, &status, 0)
        guard let text = Self.readFile(p.1) else { return nil }
        for line in text.split(separator: "\n") where line.contains("raw_syscalls:sys_enter") {
            return Int(line.split(separator: ",").first ?? "")
        }
        return nil
    }

    func startPerf(_ output: String) -> pid_t? {
        try? Self.spawn("/usr/bin/perf", ["record", "-F", "20000", "-g", "-q", "-o", output, "-p", "\(dm)"], environment: [], stderr: output + ".log")
    }

    func stopPerf(_ pid: pid_t?) {
        guard let pid else { return }
        kill(pid, SIGINT)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}
