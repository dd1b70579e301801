import Testing
import Glibc
import Damage
import WriteFault
import EventLoop

/// This thread's voluntary context switches (/proc/thread-self/status).
func voluntaryContextSwitches() -> Int {
    let fd = open("/proc/thread-self/status", O_RDONLY)
    guard fd >= 0 else { return -1 }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 8192)
    let n = read(fd, &buffer, buffer.count)
    guard n > 0 else { return -1 }
    let text = String(decoding: buffer[0 ..< n], as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix("voluntary_ctxt_switches:") {
        return Int(line.split(separator: "\t").last.map(String.init) ?? "") ?? -1
    }
    return -1
}

/// Runs the loop until `done()` or `limit` rounds of up to 50 ms.
func pump(_ loop: EventLoop, limit: Int = 200, until done: () -> Bool) {
    var rounds = 0
    while !done() && rounds < limit {
        loop.runOnce(timeoutMilliseconds: 50)
        rounds += 1
    }
}

@Suite struct DamagePipelineTests {
    let geometry = FramebufferGeometry(width: 256, height: 64, lineLength: 1024)! // 16 pages

    func pixelOffset(_ x: Int, _ y: Int) -> Int { y * geometry.lineLength + x * 4 }

    @Test(arguments: trackedModes)
    func firstWriteAfterIdleArmsTheTimerAndIdleLeavesNone(mode: DirtyTrackingMode) throws {
        let loop = try EventLoop()
        let region = Region(bytes: geometry.byteCount)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        var batches: [[Rect]] = []
        let engine = DamagePipeline(loop: loop, tracker: tracker, geometry: geometry, delay: .milliseconds(5)) {
            batches.append($0)
        }
        try engine.start()
        #expect(!engine.isTimerArmed)
        #expect(loop.activeTimers == 0)
        #expect(loop.runOnce(timeoutMilliseconds: 30) == 0)

        region.store(0xff, at: pixelOffset(10, 3))
        pump(loop) { !batches.isEmpty }
        #expect(batches.count == 1)
        #expect(batches.first?.contains { $0.contains(x: 10, y: 3) } == true)
        pump(loop) { !engine.isTimerArmed }
        #expect(loop.activeTimers == 0)
        #expect(batches.count == 1)
        #expect(engine.statistics.notifications == 1)

        // And again after idle.
        region.store(0xfe, at: pixelOffset(200, 60))
        pump(loop) { batches.count == 2 }
        #expect(batches.last?.contains { $0.contains(x: 200, y: 60) } == true)
        pump(loop) { !engine.isTimerArmed }
        #expect(engine.statistics.notifications == 2)
        engine.stop()
    }

    @Test func idleEngineDoesNotWakeUp() throws {
        let loop = try EventLoop()
        let region = Region(bytes: geometry.byteCount)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: .auto)
        defer { tracker.close() }
        let engine = DamagePipeline(loop: loop, tracker: tracker, geometry: geometry) { _ in }
        try engine.start()
        let before = voluntaryContextSwitches()
        let wakeupsBefore = loop.wakeups
        var handled = 0
        let end = EventLoop.now() + 1_000_000_000
        while EventLoop.now() < end {
            handled += loop.runOnce(timeoutMilliseconds: Int32((end - min(end, EventLoop.now())) / 1_000_000) + 1)
        }
        let switches = voluntaryContextSwitches() - before
        #expect(before >= 0)
        #expect(handled == 0)
        // One epoll_wait that times out at the end; a 60 Hz poll would be ~60.
        #expect(loop.wakeups - wakeupsBefore <= 2)
        #expect(switches <= 3, "\(switches) voluntary context switches in 1 s of idle")
        engine.stop()
    }

    /// Property: a consumer that copies only the reported rectangles keeps an
    /// exact copy while another thread writes at random, in bursts.
    @Test(arguments: allModes)
    func reportedRectanglesCoverEveryWrite(mode: DirtyTrackingMode) throws {
        let loop = try EventLoop()
        let region = Region(bytes: geometry.byteCount)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        let mirror = Mirror(of: region)
        let geometry = self.geometry
        let engine = DamagePipeline(loop: loop, tracker: tracker, geometry: geometry, delay: .milliseconds(2), maxRects: 4) {
            #expect($0.count <= 4)
            mirror.apply($0, from: region, geometry: geometry)
        }
        try engine.start()
        let done = AtomicFlag()
        let address = Int(bitPattern: region.base)
        let writer = Unchecked(value: ())
        try spawnTestThread {
            _ = writer
            var rng = SeededRandom(seed: 77)
            let base = UnsafeMutableRawPointer(bitPattern: address)!
            for _ in 0 ..< 60 {
                for _ in 0 ..< Int.random(in: 1 ... 40, using: &rng) {
                    let x = Int.random(in: 0 ..< 256, using: &rng), y = Int.random(in: 0 ..< 64, using: &rng)
                    base.storeBytes(of: UInt32(truncatingIfNeeded: rng.next()), toByteOffset: y * 1024 + x * 4, as: UInt32.self)
                }
                usleep(UInt32.random(in: 0 ... 4000, using: &rng))
            }
            done.set()
        }
        pump(loop, limit: 400) { done.isSet }
        pump(loop) { !engine.isTimerArmed && mode != .compare }
        engine.flush()
        #expect(mirror.firstDifference(from: region) == nil)
        #expect(engine.statistics.batches > 1)
        engine.stop()
    }

    /// Whole-frame damage every tick switches to flood mode (no faults, full
    /// frame reported); when the writes stop it returns to tracking and idle.
    @Test(arguments: trackedModes)
    func heavyDamageSwitchesToFloodAndBack(mode: DirtyTrackingMode) throws {
        let loop = try EventLoop()
        let region = Region(bytes: geometry.byteCount)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        let mirror = Mirror(of: region)
        let geometry = self.geometry
        var batches: [[Rect]] = []
        let engine = DamagePipeline(loop: loop, tracker: tracker, geometry: geometry, delay: .milliseconds(3)) {
            mirror.apply($0, from: region, geometry: geometry)
            batches.append($0)
        }
        engine.floodSampleTicks = 3
        try engine.start()
        var frames = 0
        var timer: EventLoop.TimerID?
        timer = loop.addTimer(after: .milliseconds(1), repeating: .milliseconds(3)) {
            frames += 1
            memset(region.base, Int32(frames & 0xff), region.byteCount)
            if frames == 40 { loop.cancelTimer(timer!) }
        }
        pump(loop, limit: 400) { frames >= 40 }
        pump(loop) { !engine.isTimerArmed }
        #expect(engine.statistics.floodEntries >= 1)
        #expect(engine.statistics.floodTicks >= 3)
        #expect(engine.phase == .tracking)
        #expect(loop.activeTimers == 0)
        #expect(mirror.firstDifference(from: region) == nil)
        // Sparse writes afterwards are tracked precisely again.
        let count = batches.count
        region.store(1, at: pixelOffset(5, 5))
        pump(loop) { batches.count > count }
        #expect(batches.count == count + 1)
        let area = batches.last?.reduce(0) { $0 + $1.area } ?? 0
        #expect(area > 0 && area <= tracker.pageSize / 4, "a one-pixel write reported as \(batches.last ?? [])") // one page
        engine.stop()
    }

    @Test func leadingDamageIsPublishedInTheSameLoopRoundAndLeavesNoTimer() throws {
        let loop = try EventLoop()
        var batches: [[Rect]] = []
        let engine = DamagePipeline(loop: loop, tracker: nil, geometry: geometry, delay: .milliseconds(200),
                                    scheduling: .leading) { batches.append($0) }
        try engine.start()
        var p: [Int32] = [0, 0]
        #expect(pipe(&p) == 0)
        defer { p.forEach { close($0) } }
        // Damage reported from a handler (as the vfb backend's ring reader does).
        try loop.watch(fd: p[0]) { _ in
            var byte: UInt8 = 0
            _ = read(p[0], &byte, 1)
            engine.add([Rect(x: 1, y: 1, width: 4, height: 4)])
            engine.add([Rect(x: 3, y: 3, width: 4, height: 4)])
        }
        var one: UInt8 = 1
        _ = write(p[1], &one, 1)
        let wakeups = loop.wakeups
        loop.runOnce(timeoutMilliseconds: 1000)
        #expect(batches == [[Rect(x: 1, y: 1, width: 6, height: 6)]], "both rects of one notification in one batch, at once")
        #expect(loop.wakeups - wakeups == 1)
        #expect(!engine.isTimerArmed, "no follow-up tick that would only find nothing")
        #expect(loop.activeTimers == 0)
        // Under load (within `delay` of the last tick) damage waits for the delay.
        _ = write(p[1], &one, 1)
        loop.runOnce(timeoutMilliseconds: 1000)
        #expect(batches.count == 1)
        #expect(engine.isTimerArmed && loop.activeTimers == 1)
        pump(loop) { batches.count == 2 }
        #expect(batches.count == 2)
        engine.stop()
    }

    @Test func rectanglesFromAnotherSourceAreBatched() throws {
        let loop = try EventLoop()
        var batches: [[Rect]] = []
        let engine = DamagePipeline(loop: loop, tracker: nil, geometry: geometry, delay: .milliseconds(2)) {
            batches.append($0)
        }
        try engine.start()
        #expect(!engine.isTimerArmed)
        engine.add([Rect(x: 0, y: 0, width: 8, height: 8), Rect(x: 4, y: 4, width: 8, height: 8), Rect(x: 500, y: 0, width: 5, height: 5)])
        #expect(engine.isTimerArmed)
        pump(loop) { !batches.isEmpty }
        #expect(batches == [[Rect(x: 0, y: 0, width: 12, height: 12)]])
        pump(loop) { !engine.isTimerArmed }
        #expect(loop.activeTimers == 0)
        engine.stop()
    }
}

/// Starts a detached helper thread (the test waits on a flag it sets).
func spawnTestThread(_ body: @escaping @Sendable () -> Void) throws {
    final class Box: @unchecked Sendable { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var t = pthread_t()
    let arg = Unmanaged.passRetained(Box(body)).toOpaque()
    let rc = pthread_create(&t, nil, { p in
        Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().body()
        return nil
    }, arg)
    #expect(rc == 0)
    pthread_detach(t)
}
