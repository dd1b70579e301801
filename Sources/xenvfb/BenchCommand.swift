#if canImport(Glibc)
import Glibc
#endif
import CWriteFault
import Damage
import EventLoop

/// `xenvfb bench [--frames N] [--workload NAME]`: the write-fault engine's
/// benchmark at 1920×1080×32. For each workload it reports the tracking cost
/// per frame with uffd, mprotect, a full compare and the adaptive engine, as
/// ratios to a memcpy of the frame measured in the same run, and the pixels
/// sent against the pixels that really changed. Build with `-c release`.
enum BenchCommand {
    static let width = 1920, height = 1080
    static let geometry = FramebufferGeometry(width: width, height: height, lineLength: width * 4)!

    /// One frame's writes of a workload, into XRGB pixels.
    struct Workload: Sendable {
        let name: String
        let write: @Sendable (UnsafeMutablePointer<UInt32>, Int) -> Void
    }

    static func fill(_ px: UnsafeMutablePointer<UInt32>, _ r: Rect, _ value: UInt32) {
        for y in r.y ..< r.maxY { (px + y * width + r.x).update(repeating: value, count: r.width) }
    }

    static let workloads: [Workload] = [
        Workload(name: "one page") { px, f in fill(px, Rect(x: 512, y: 300, width: 256, height: 1), UInt32(f)) },
        Workload(name: "blinking cursor") { px, f in
            fill(px, Rect(x: 96, y: 800, width: 8, height: 16), f % 2 == 0 ? 0xffffff : 0)
        },
        Workload(name: "cursor + clock") { px, f in
            fill(px, Rect(x: 96, y: 1000, width: 8, height: 16), f % 2 == 0 ? 0xffffff : 0)
            fill(px, Rect(x: 1800, y: 8, width: 80, height: 16), 0x101010 &* UInt32(f % 15 + 1))
        },
        Workload(name: "terminal scroll") { px, f in
            // An 800×600 terminal at (100,100) scrolls one 16-row text line.
            let w = Rect(x: 100, y: 100, width: 800, height: 600)
            for y in w.y ..< w.maxY - 16 { (px + y * width + w.x).update(from: px + (y + 16) * width + w.x, count: w.width) }
            for y in w.maxY - 16 ..< w.maxY {
                for x in stride(from: w.x, to: w.maxX, by: 8) {
                    (px + y * width + x).update(repeating: UInt32(truncatingIfNeeded: (x / 8 &* 31 &+ f &* 17 &+ y) & 1) &* 0xc0c0c0, count: 8)
                }
            }
        },
        Workload(name: "moving window") { px, f in
            // A 400×300 window moving 8 px right per frame over a plain desktop.
            let x0 = 200 + (f % 100) * 8
            fill(px, Rect(x: x0 - 8, y: 300, width: 8, height: 300), 0x204060)
            fill(px, Rect(x: x0, y: 300, width: 400, height: 300), 0xd0d0d0)
            fill(px, Rect(x: x0, y: 300, width: 400, height: 20), 0x3050a0)
        },
        Workload(name: "video 640x360") { px, f in
            for y in 360 ..< 720 { (px + y * width + 640).update(repeating: UInt32(truncatingIfNeeded: f &* 7919 &+ y), count: 640) }
        },
        Workload(name: "full screen") { px, f in
            for y in 0 ..< height { (px + y * width).update(repeating: UInt32(truncatingIfNeeded: f &* 7919 &+ y), count: width) }
        },
    ]

    static func main(_ args: [String]) -> Int32 {
        var frames = 60
        var only: String?
        var i = 0
        while i < args.count {
            switch args[i] {
            case "--frames" where i + 1 < args.count: frames = max(5, Int(args[i + 1]) ?? 60); i += 1
            case "--workload" where i + 1 < args.count: only = args[i + 1]; i += 1
            default:
                print("usage: xenvfb bench [--frames N] [--workload NAME]")
                return 2
            }
            i += 1
        }
        #if DEBUG
        print("note: debug build; build with -c release for meaningful numbers")
        #endif
        let bench = Bench(frames: frames)
        print("xenvfb bench: \(width)x\(height)x32, \(bench.pageCount) pages, \(frames) frames per cell, medians")
        print("memcpy of the frame: \(fmt(bench.memcpyMicros)) µs (the unit of the ×-columns below)")
        print("")
        print("tracking cost per frame (writer faults + collect + coalesce), µs and × memcpy:")
        print(pad("workload", 16) + pad("exact px", 10) + pad("uffd", 15) + pad("mprotect", 15)
              + pad("compare", 15) + pad("engine(auto)", 15))
        var rectRows: [String] = []
        for w in workloads where only == nil || w.name == only {
            let r = bench.run(w)
            let m = bench.memcpyMicros
            print(pad(w.name, 16) + pad("\(r.exactPixels)", 10)
                  + pad("\(fmt(r.uffd)) \(ratio(r.uffd, m))", 15)
                  + pad("\(fmt(r.mprotect)) \(ratio(r.mprotect, m))", 15)
                  + pad("\(fmt(r.compare)) \(ratio(r.compare, m))", 15)
                  + pad("\(fmt(r.engine)) \(ratio(r.engine, m))", 15))
            rectRows.append(pad(w.name, 16) + pad("\(r.exactPixels)", 10) + pad("\(r.rects)", 7)
                            + pad("\(r.sentPixels) \(ratio(Double(r.sentPixels), Double(r.exactPixels)))", 20)
                            + pad("\(r.bboxPixels) \(ratio(Double(r.bboxPixels), Double(r.exactPixels)))", 20)
                            + pad("\(r.confirmedPixels) \(ratio(Double(r.confirmedPixels), Double(r.exactPixels)))", 20))
        }
        print("")
        print("pixels per frame: exact damage vs sent (coalesced rects), one bounding box (2006 design), after ShadowCompare:")
        print(pad("workload", 16) + pad("exact px", 10) + pad("rects", 7) + pad("sent", 20) + pad("bounding box", 20) + pad("confirmed", 20))
        rectRows.forEach { print($0) }
        print("")
        bench.sweep()
        print("")
        bench.transitions()
        print("")
        bench.idle()
        return 0
    }

    static func fmt(_ v: Double) -> String {
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
    static func ratio(_ v: Double, _ unit: Double) -> String {
        guard unit > 0 else { return "" }
        let r = v / unit
        return r < 0.1 ? "(1/\(Int((unit / max(v, 0.001)).rounded())))" : "(\(fmt(r))×)"
    }
    static func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
}

/// The measuring machinery: one frame buffer, a shadow for the consumer, and
/// trackers created per measurement.
final class Bench {
    let frames: Int
    let byteCount = BenchCommand.geometry.byteCount
    let base: UnsafeMutableRawPointer
    let pixels: UnsafeMutablePointer<UInt32>
    let other: UnsafeMutableRawPointer
    var pageCount: Int { byteCount / Int(wf_page_size()) }
    private(set) var memcpyMicros = 0.0

    init(frames: Int) {
        self.frames = frames
        base = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(base != MAP_FAILED)
        pixels = base.bindMemory(to: UInt32.self, capacity: byteCount / 4)
        other = .allocate(byteCount: byteCount, alignment: 4096)
        memset(base, 0x20, byteCount)
        memset(other, 0x20, byteCount)
        var samples: [Double] = []
        for _ in 0 ..< max(frames, 30) {
            let t = now()
            memcpy(other, base, byteCount)
            samples.append(now() - t)
        }
        memcpyMicros = median(samples)
    }

    func now() -> Double { Double(EventLoop.now()) / 1000 }
    func median(_ v: [Double]) -> Double { let s = v.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }

    struct Result {
        var exactPixels = 0, rects = 0, sentPixels = 0, bboxPixels = 0, confirmedPixels = 0
        var uffd = 0.0, mprotect = 0.0, compare = 0.0, engine = 0.0
    }

    func run(_ w: BenchCommand.Workload) -> Result {
        var r = Result()
        // Exact damage, the baseline cost of the writes, and a warm start.
        memset(base, 0x20, byteCount)
        for f in 0 ..< 4 { w.write(pixels, f) }
        var plain: [Double] = []
        var exact: [Int] = []
        for f in 4 ..< 4 + frames {
            memcpy(other, base, byteCount)
            let t = now()
            w.write(pixels, f)
            plain.append(now() - t)
            exact.append(changedPixels())
        }
        let plainCost = median(plain)
        r.exactPixels = exact.sorted()[exact.count / 2]

        r.uffd = measure(w, mode: .uffd, flood: false, plainCost: plainCost, rectStats: &r)
        var ignore = Result()
        r.mprotect = measure(w, mode: .mprotect, flood: false, plainCost: plainCost, rectStats: &ignore)
        r.compare = measure(w, mode: .compare, flood: false, plainCost: plainCost, rectStats: &ignore)
        r.engine = measure(w, mode: .auto, flood: true, plainCost: plainCost, rectStats: &ignore)
        return r
    }

    /// Median per-frame cost of writes + engine tick, minus the plain writes.
    func measure(_ w: BenchCommand.Workload, mode: DirtyTrackingMode, flood: Bool, plainCost: Double,
                 rectStats: inout Result) -> Double {
        guard let tracker = try? makeDirtyTracker(base: base, byteCount: byteCount, mode: mode) else {
            print("  (\(mode.rawValue) unavailable)")
            return .nan
        }
        defer { tracker.close() }
        let loop = try! EventLoop()
        var last: [Rect] = []
        let engine = DamageEngine(loop: loop, tracker: tracker, geometry: BenchCommand.geometry) { last = $0 }
        engine.floodEnabled = flood
        try! engine.start()
        // The consumer's shadow (the displays' Frame) starts in step.
        memcpy(other, base, byteCount)
        let live = PixelBuffer(pixels: base, width: BenchCommand.width, height: BenchCommand.height, stride: BenchCommand.width * 4)
        let shadow = PixelBuffer(pixels: other, width: BenchCommand.width, height: BenchCommand.height, stride: BenchCommand.width * 4)
        var costs: [Double] = []
        var rects: [Int] = [], sent: [Int] = [], bbox: [Int] = [], confirmed: [Int] = []
        for f in 100 ..< 100 + frames + 4 {
            last = []
            let t = now()
            w.write(pixels, f)
            engine.flush()
            let cost = now() - t - plainCost
            if f >= 104 { costs.append(cost) } // skip warm-up and flood entry
            rects.append(last.count)
            sent.append(last.reduce(0) { $0 + $1.area })
            bbox.append(last.reduce(Rect(x: 0, y: 0, width: 0, height: 0)) { $0.union($1) }.area)
            confirmed.append(ShadowCompare.confirm(last, live: live, shadow: shadow).reduce(0) { $0 + $1.area })
        }
        engine.stop()
        func med(_ v: [Int]) -> Int { let s = v.dropFirst(4).sorted(); return s[s.count / 2] }
        rectStats.rects = med(rects)
        rectStats.sentPixels = med(sent)
        rectStats.bboxPixels = med(bbox)
        rectStats.confirmedPixels = med(confirmed)
        return max(0, median(costs))
    }

    func changedPixels() -> Int {
        var n = 0
        let a = base.assumingMemoryBound(to: UInt64.self), b = other.assumingMemoryBound(to: UInt64.self)
        for i in 0 ..< byteCount / 8 where a[i] != b[i] {
            n += (UInt32(truncatingIfNeeded: a[i]) != UInt32(truncatingIfNeeded: b[i]) ? 1 : 0)
                + (a[i] >> 32 != b[i] >> 32 ? 1 : 0)
        }
        return n
    }

    /// Cost per frame of a band covering a growing share of the frame:
    /// tracking (uffd, flood off) against the adaptive engine, both plus the
    /// consumer's ShadowCompare of what was reported; shows where flood pays.
    func sweep() {
        print("damage sweep: a band of N% of the frame rewritten every frame; µs per frame incl. the consumer's ShadowCompare")
        print(BenchCommand.pad("damage", 8) + BenchCommand.pad("uffd tracking", 18) + BenchCommand.pad("mprotect tracking", 20)
              + BenchCommand.pad("engine(auto)", 16) + "engine phase")
        let live = PixelBuffer(pixels: base, width: BenchCommand.width, height: BenchCommand.height, stride: BenchCommand.width * 4)
        let shadow = PixelBuffer(pixels: other, width: BenchCommand.width, height: BenchCommand.height, stride: BenchCommand.width * 4)
        for percent in [10, 25, 40, 50, 60, 75, 90, 100] {
            let rows = BenchCommand.height * percent / 100
            let w = BenchCommand.Workload(name: "\(percent)%") { px, f in
                for y in 0 ..< rows { (px + y * BenchCommand.width).update(repeating: UInt32(truncatingIfNeeded: f &* 7919 &+ y), count: BenchCommand.width) }
            }
            var cells: [String] = []
            var phase = ""
            for (mode, flood) in [(DirtyTrackingMode.uffd, false), (.mprotect, false), (.auto, true)] {
                guard let tracker = try? makeDirtyTracker(base: base, byteCount: byteCount, mode: mode) else { cells.append("n/a"); continue }
                let loop = try! EventLoop()
                var last: [Rect] = []
                let engine = DamageEngine(loop: loop, tracker: tracker, geometry: BenchCommand.geometry) { last = $0 }
                engine.floodEnabled = flood
                try! engine.start()
                memcpy(other, base, byteCount)
                var costs: [Double] = []
                for f in 0 ..< frames + 4 {
                    let t = now()
                    w.write(pixels, f)
                    engine.flush()
                    _ = ShadowCompare.confirm(last, live: live, shadow: shadow)
                    if f >= 4 { costs.append(now() - t) }
                }
                if flood { phase = "\(engine.phase == .tracking ? "tracking" : "flood"), \(engine.statistics.floodTicks)/\(engine.statistics.ticks) ticks in flood" }
                engine.stop()
                tracker.close()
                let c = median(costs)
                cells.append("\(BenchCommand.fmt(c)) \(BenchCommand.ratio(c, memcpyMicros))")
            }
            print(BenchCommand.pad("\(percent)%", 8) + BenchCommand.pad(cells[0], 18) + BenchCommand.pad(cells[1], 20)
                  + BenchCommand.pad(cells[2], 16) + phase)
        }
    }

    /// Idle→busy transition: arming after an idle tick and the first write.
    func transitions() {
        print("idle→busy transition (arm after an idle tick + the first write's notification), µs:")
        for mode in [DirtyTrackingMode.uffd, .mprotect] {
            guard let tracker = try? makeDirtyTracker(base: base, byteCount: byteCount, mode: mode) else { continue }
            var arms: [Double] = [], firsts: [Double] = []
            for i in 0 ..< frames {
                _ = try? tracker.collect()
                let t0 = now()
                _ = try? tracker.arm()
                let t1 = now()
                pixels[(i % 2000) * 1024] = UInt32(i)
                let t2 = now()
                tracker.drainNotification()
                arms.append(t1 - t0)
                firsts.append(t2 - t1)
            }
            tracker.close()
            print("  \(mode.rawValue): arm \(BenchCommand.fmt(median(arms))), first write \(BenchCommand.fmt(median(firsts)))")
        }
    }

    /// Context switches of an idle engine over 3 seconds.
    func idle() {
        guard let tracker = try? makeDirtyTracker(base: base, byteCount: byteCount, mode: .auto) else { return }
        defer { tracker.close() }
        let loop = try! EventLoop()
        let engine = DamageEngine(loop: loop, tracker: tracker, geometry: BenchCommand.geometry) { _ in }
        try! engine.start()
        let before = contextSwitches()
        let wakeups = loop.wakeups
        loop.addTimer(after: .seconds(3)) { loop.stop() }
        loop.run()
        let after = contextSwitches()
        engine.stop()
        // The stop timer itself is one wake-up and one voluntary switch.
        print("static screen, 3 s idle engine (\(tracker.mode.rawValue)): \(loop.wakeups - wakeups - 1) wake-ups, "
              + "\(after.0 - before.0 - 1) voluntary / \(after.1 - before.1) involuntary context switches (excluding the timer ending the test)")
    }

    func contextSwitches() -> (Int, Int) {
        let fd = open("/proc/thread-self/status", O_RDONLY)
        guard fd >= 0 else { return (0, 0) }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = read(fd, &buf, buf.count)
        let text = String(decoding: buf[0 ..< max(0, n)], as: UTF8.self)
        var v = 0, nv = 0
        for line in text.split(separator: "\n") {
            let value = Int(line.split(separator: "\t").last.map(String.init) ?? "") ?? 0
            if line.hasPrefix("voluntary_ctxt_switches:") { v = value }
            if line.hasPrefix("nonvoluntary_ctxt_switches:") { nv = value }
        }
        return (v, nv)
    }
}
