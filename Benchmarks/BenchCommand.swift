#if canImport(Glibc)
import Glibc
#endif
import CWriteFault
import Damage
import WriteFault
import EventLoop
import Support

/// `xenvfb-bench [--frames N] [--workload NAME]`: the write-fault engine's
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
        if args.first == "backend" { return BackendBench.main(Array(args.dropFirst())) }
        var frames = 60
        var only: String?
        do throws(UsageError) {
            for option in try SubcommandArguments.parse(args, valued: ["--frames", "--workload"]) {
                if option.name == "--frames" { frames = max(5, Int(option.value ?? "") ?? 60) } else { only = option.value }
            }
        } catch {
            print("\(error)\nusage: xenvfb-bench [--frames N] [--workload NAME]\n       " + BackendBench.usage.dropFirst(7))
            return 2
        }
        #if DEBUG
        print("note: debug build; build with -c release for meaningful numbers")
        #endif
        let bench = Bench(frames: frames)
        print("xenvfb-bench: \(width)x\(height)x32, \(bench.pageCount) pages, \(frames) frames per cell, thread CPU time")
        print("memcpy of the frame: \(fmt(bench.memcpyMicros)) µs (the unit of the ×-columns below)")
        print("")
        print("tracking cost per frame (writer faults + collect + coalesce; engine: + adaptive flood), mean µs and × memcpy:")
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
        bench.breakdown()
        bench.consumer()
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

    /// This thread's CPU time in µs: other processes on the machine do not
    /// count, while our faults, signal handlers and syscalls do.
    func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) * 1e6 + Double(ts.tv_nsec) / 1e3
    }
    func median(_ v: [Double]) -> Double { let s = v.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }

    struct Result {
        var exactPixels = 0, rects = 0, sentPixels = 0, bboxPixels = 0, confirmedPixels = 0
        var uffd = 0.0, mprotect = 0.0, compare = 0.0, engine = 0.0
    }

    /// The frame as a workload leaves it after a few frames (so every
    /// measurement starts from the same picture).
    func reset(_ w: BenchCommand.Workload) {
        memset(base, 0x20, byteCount)
        for f in 0 ..< 4 { w.write(pixels, f) }
        memcpy(other, base, byteCount)
    }

    var live: PixelBuffer { PixelBuffer(pixels: base, width: BenchCommand.width, height: BenchCommand.height, stride: BenchCommand.width * 4) }
    var shadow: PixelBuffer { PixelBuffer(pixels: other, width: BenchCommand.width, height: BenchCommand.height, stride: BenchCommand.width * 4) }

    func run(_ w: BenchCommand.Workload) -> Result {
        var r = Result()
        // Exact damage and the cost of the writes alone.
        reset(w)
        var plain: [Double] = []
        var exact: [Int] = []
        for f in 4 ..< 4 + frames {
            memcpy(other, base, byteCount)
            let t = now()
            w.write(pixels, f)
            plain.append(now() - t)
            exact.append(changedPixels())
        }
        let plainCost = mean(plain)
        r.exactPixels = exact.sorted()[exact.count / 2]

        r.uffd = measure(w, mode: .uffd, plainCost: plainCost, stats: &r)
        var ignore = Result()
        r.mprotect = measure(w, mode: .mprotect, plainCost: plainCost, stats: &ignore)
        r.compare = measure(w, mode: .compare, plainCost: plainCost, stats: &ignore)
        r.engine = measure(w, mode: .auto, engine: true, plainCost: plainCost, stats: &ignore)
        return r
    }

    func mean(_ v: [Double]) -> Double { v.isEmpty ? 0 : v.reduce(0, +) / Double(v.count) }

    /// Mean per-frame cost of writes + tracking, minus the writes alone.
    /// Without `engine`: the tracker's collect and the coalescer only. With
    /// it: a DamagePipeline tick (adaptive flood included).
    func measure(_ w: BenchCommand.Workload, mode: DirtyTrackingMode, engine useEngine: Bool = false,
                 plainCost: Double, stats: inout Result) -> Double {
        reset(w)
        guard let tracker = try? makeDirtyTracker(base: base, byteCount: byteCount, mode: mode) else {
            print("  (\(mode.rawValue) unavailable)")
            return .nan
        }
        defer { tracker.close() }
        let loop = try! EventLoop()
        var last: [Rect] = []
        let engine = DamagePipeline(loop: loop, tracker: tracker, geometry: BenchCommand.geometry) { last = $0 }
        var coalescer = Coalescer(geometry: BenchCommand.geometry)
        if useEngine { try! engine.start() }
        var costs: [Double] = []
        var rects: [Int] = [], sent: [Int] = [], bbox: [Int] = [], confirmed: [Int] = []
        for f in 4 ..< 4 + frames {
            last = []
            let t = now()
            w.write(pixels, f)
            if useEngine {
                engine.flush()
            } else {
                coalescer.add(runs: (try? tracker.collect()) ?? [], pageSize: tracker.pageSize)
                last = coalescer.take()
            }
            costs.append(now() - t - plainCost)
            rects.append(last.count)
            sent.append(last.reduce(0) { $0 + $1.area })
            bbox.append(last.reduce(Rect(x: 0, y: 0, width: 0, height: 0)) { $0.union($1) }.area)
            confirmed.append(ShadowCompare.confirm(last, live: live, shadow: shadow).reduce(0) { $0 + $1.area })
        }
        engine.stop()
        func med(_ v: [Int]) -> Int { let s = v.dropFirst(2).sorted(); return s[s.count / 2] }
        stats.rects = med(rects)
        stats.sentPixels = med(sent)
        stats.bboxPixels = med(bbox)
        stats.confirmedPixels = med(confirmed)
        return max(0, mean(costs.dropFirst(2).map { $0 }))
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

    /// Cost per frame of a band covering a growing share of the frame,
    /// consumer's ShadowCompare included: tracking every tick (uffd,
    /// mprotect), flood forced on, and the adaptive engine; shows where
    /// flood starts to pay and where the engine switches.
    func sweep() {
        print("damage sweep: a band of N% of the frame rewritten every frame; mean µs per frame, consumer's ShadowCompare included")
        print(BenchCommand.pad("damage", 8) + BenchCommand.pad("uffd tracking", 17) + BenchCommand.pad("mprotect tracking", 19)
              + BenchCommand.pad("flood (forced)", 16) + BenchCommand.pad("engine uffd", 16) + BenchCommand.pad("engine mprotect", 18))
        for percent in [5, 10, 15, 20, 25, 30, 40, 50, 75, 100] {
            let rows = BenchCommand.height * percent / 100
            let w = BenchCommand.Workload(name: "\(percent)%") { px, f in
                for y in 0 ..< rows { (px + y * BenchCommand.width).update(repeating: UInt32(truncatingIfNeeded: f &* 7919 &+ y), count: BenchCommand.width) }
            }
            var cells: [String] = []
            for (mode, flood) in [(DirtyTrackingMode.uffd, 0), (.mprotect, 0), (.uffd, 1), (.uffd, 2), (.mprotect, 2)] {
                reset(w)
                guard let tracker = try? makeDirtyTracker(base: base, byteCount: byteCount, mode: mode) else { cells.append("n/a"); continue }
                let loop = try! EventLoop()
                var last: [Rect] = []
                let engine = DamagePipeline(loop: loop, tracker: tracker, geometry: BenchCommand.geometry) { last = $0 }
                engine.floodEnabled = flood > 0
                if flood == 1 { engine.floodEnter = 0; engine.floodExit = 0 }
                try! engine.start()
                var costs: [Double] = []
                for f in 4 ..< 4 + frames {
                    let t = now()
                    w.write(pixels, f)
                    engine.flush()
                    _ = ShadowCompare.confirm(last, live: live, shadow: shadow)
                    costs.append(now() - t)
                }
                var cell = ""
                let c = mean(costs.dropFirst(2).map { $0 })
                cell = "\(BenchCommand.fmt(c)) \(BenchCommand.ratio(c, memcpyMicros))"
                if flood == 2 { cell += engine.statistics.floodEntries > 0 ? " F" : " T" }
                engine.stop()
                tracker.close()
                cells.append(cell)
            }
            print(BenchCommand.pad("\(percent)%", 8) + BenchCommand.pad(cells[0], 17) + BenchCommand.pad(cells[1], 19)
                  + BenchCommand.pad(cells[2], 16) + BenchCommand.pad(cells[3], 16) + BenchCommand.pad(cells[4], 18))
        }
        print("(F: the engine went to flood mode; T: it kept tracking)")
    }

    /// Where one dirty page's cost goes (uffd and mprotect).
    /// The monotonic clock in µs (vDSO: cheap enough to time single steps;
    /// medians keep preemption out).
    func wall() -> Double { Double(EventLoop.now()) / 1000 }

    func breakdown() {
        print("one dirty page, cost breakdown (µs, medians of the monotonic clock):")
        for mode in [DirtyTrackingMode.uffd, .mprotect, .compare] {
            guard let tracker = try? makeDirtyTracker(base: base, byteCount: byteCount, mode: mode) else { continue }
            var coalescer = Coalescer(geometry: BenchCommand.geometry)
            var writes: [Double] = [], collects: [Double] = [], coalesces: [Double] = [], empties: [Double] = []
            for i in 0 ..< frames * 4 {
                let t0 = wall()
                pixels[300 * 1920 + 512] = UInt32(i)
                let t1 = wall()
                let runs = (try? tracker.collect()) ?? []
                let t2 = wall()
                coalescer.add(runs: runs, pageSize: tracker.pageSize)
                let rects = coalescer.take()
                let t3 = wall()
                _ = try? tracker.collect()
                let t4 = wall()
                precondition(rects.count == 1)
                writes.append(t1 - t0); collects.append(t2 - t1); coalesces.append(t3 - t2); empties.append(t4 - t3)
            }
            tracker.close()
            print("  \(mode.rawValue): first write \(BenchCommand.fmt(median(writes))), collect \(BenchCommand.fmt(median(collects))), "
                  + "coalesce \(BenchCommand.fmt(median(coalesces))), collect with nothing written \(BenchCommand.fmt(median(empties)))")
        }
    }

    /// The consumer's side: ShadowCompare of the whole frame.
    func consumer() {
        memcpy(other, base, byteCount)
        var same: [Double] = [], changed: [Double] = []
        for i in 0 ..< frames {
            var t = now()
            _ = ShadowCompare.confirm([live.bounds], live: live, shadow: shadow)
            same.append(now() - t)
            for y in 0 ..< BenchCommand.height { (pixels + y * BenchCommand.width).update(repeating: UInt32(i), count: BenchCommand.width) }
            t = now()
            _ = ShadowCompare.confirm([live.bounds], live: live, shadow: shadow)
            changed.append(now() - t)
        }
        print("consumer: ShadowCompare.confirm of the whole frame: unchanged \(BenchCommand.fmt(median(same))) µs "
              + "\(BenchCommand.ratio(median(same), memcpyMicros)), all changed \(BenchCommand.fmt(median(changed))) µs "
              + "\(BenchCommand.ratio(median(changed), memcpyMicros))")
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
        let engine = DamagePipeline(loop: loop, tracker: tracker, geometry: BenchCommand.geometry) { _ in }
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
