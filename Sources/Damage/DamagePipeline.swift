#if canImport(Glibc)
import Glibc
#endif
import EventLoop
import Support

/// The one path every kind of damage takes to the displays: sources →
/// coalescer → confirm → publish, on an event loop, with no timer and no
/// wake-up while nothing changes.
///
/// **Sources.** A `DirtyTracker` over the framebuffer's memory (the
/// write-fault engine: GuestKit's frontends, the demo, the benchmark); `add`
/// for rectangles someone reports (a frontend's XENFB_TYPE_UPDATE events, a
/// resize); and `pollInterval` for a frontend that reports nothing (the whole
/// frame is damage every interval, and the confirm stage finds what changed).
/// **Coalescer.** At most `maxRects` rectangles per batch (`Coalescer`).
/// **Confirm.** An optional stage that turns candidate rects into what really
/// changed, copying it on the way (the vfb backend's shadow compare into the
/// console's frame); an empty result publishes nothing. **Publish.** `onUpdate`.
///
/// **Scheduling.** With `.trailing` (a write-fault source, which plays the
/// part of Linux's fb_deferred_io) the first damage after idle arms a
/// one-shot timer of `delay`, so a burst of writes is collected once. With
/// `.leading` (damage that the guest already batched, such as UPDATE events)
/// damage that arrives while idle is published at once — once the loop's
/// current handlers have returned (`EventLoop.runAfterHandlers`: no timer, no
/// system call), so every event of one notification is in the batch — and
/// under load at most once per `delay`: the device adds no fixed latency.
/// A tick that finds nothing goes idle: the tracker is armed to notify on the
/// next write and no timer is left running.
///
/// **Arming on a uffd tracker.** userfaultfd's async write-protect resolves
/// faults in the kernel and tells nobody. So after an idle tick the engine
/// arms the tracker, which makes the region read-only with one mprotect; the
/// first write takes a SIGSEGV whose C handler makes the region writable and
/// writes an eventfd, and that write and all after it go through the cheap
/// async path until the next idle tick. Measured cost per idle→busy
/// transition (Benchmarks, `xenvfb-bench`): see README "Performance". A sync
/// uffd for the first fault was rejected: WP_ASYNC is a property of the whole
/// userfaultfd context, a range belongs to one context, and re-registering
/// drops the write-protect bits (every page would read as written).
///
/// **Flood mode.** When much of the frame changes tick after tick, taking a
/// fault on every page costs more than the consumer comparing the whole
/// frame. After `floodAfterTicks` ticks with at least `floodEnter` of the
/// pages dirty, the engine stops re-protecting and reports the whole frame
/// each tick: writes cost nothing. It samples by re-protecting once and, one
/// tick later, looking (`peek`) at how much was written; below `floodExit` it
/// goes back to tracking. Samples start `floodSampleTicks` apart and back off
/// (doubling, up to `floodMaxSampleTicks`) while the damage stays high, so a
/// long flood pays one round of faults per second at most. Consumers confirm
/// rects against their shadow (`ShadowCompare`), so a full-frame report costs
/// them one compare, not a full repaint. The thresholds come from the
/// benchmark's damage sweep (README "Performance"): with uffd a fault round
/// costs as much as a full-frame compare at about a quarter of the pages,
/// with mprotect at under a tenth.
///
/// Runs on the loop's thread; not thread-safe.
public final class DamagePipeline {
    public enum Phase: Equatable, Sendable {
        /// Collecting and re-protecting each tick (or idle).
        case tracking
        /// Reporting the whole frame; `sampleIn` ticks until the next sample.
        case flood(sampleIn: Int)
        /// Re-protected last tick; this tick measures the damage.
        case sampling
    }

    /// Counters for tests, logs and the benchmark.
    public struct Statistics: Sendable, Equatable {
        public var ticks = 0
        public var batches = 0
        public var rects = 0
        public var pixels = 0
        public var notifications = 0
        public var arms = 0
        public var floodEntries = 0
        public var floodTicks = 0
    }

    /// When a tick runs after damage arrives (see the type's doc comment).
    public enum Scheduling: Sendable {
        /// `delay` after the first damage: lets a burst of writes finish.
        case trailing
        /// At once when idle, then at most once per `delay`.
        case leading
    }

    public private(set) var geometry: FramebufferGeometry
    public let tracker: (any DirtyTracker)?
    public let delay: Duration
    public let scheduling: Scheduling
    /// With no other source of damage: the whole frame is damage this often.
    public let pollInterval: Duration?
    /// Share of pages dirty per tick that counts as heavy (default by
    /// technique: 0.25 for uffd, 0.1 for mprotect).
    public var floodEnter: Double
    /// Share of pages written in a sample tick below which flood ends.
    public var floodExit: Double
    public var floodAfterTicks = 2
    public var floodSampleTicks = 8
    public var floodMaxSampleTicks = 64
    /// Set false to never leave tracking (tests, benchmarks of tracking).
    public var floodEnabled = true

    public private(set) var phase = Phase.tracking
    public private(set) var statistics = Statistics()
    /// A tick is scheduled (a timer, or at the end of the loop's iteration).
    public var isTimerArmed: Bool { timer != nil || tickQueued }

    private let loop: EventLoop
    private var coalescer: Coalescer
    private let confirm: (([Rect]) -> [Rect])?
    private let onUpdate: ([Rect]) -> Void
    private var timer: EventLoop.TimerID?
    /// A tick is queued with `runAfterHandlers` (`.leading`, idle).
    private var tickQueued = false
    private var pollTimer: EventLoop.TimerID?
    /// When the last tick ran (`EventLoop.now()`), for `.leading`.
    private var lastTick: UInt64?
    private var busyTicks = 0
    private var started = false
    private var sampleInterval = 8

    /// - Parameters:
    ///   - tracker: watches the framebuffer's memory; the geometry's
    ///     `byteCount` must fit in the tracked region. Nil when damage only
    ///     comes through `add(_:)`.
    ///   - delay: coalescing delay; defaults to one 60 Hz frame.
    ///   - maxRects: the most rectangles per batch.
    ///   - scheduling: `.trailing` (default) or `.leading`.
    ///   - pollInterval: for a source that reports nothing: the whole frame
    ///     is damage this often while started (needs `confirm`).
    ///   - confirm: narrows a batch to what really changed (and copies it);
    ///     nil publishes the coalesced batch as it is.
    ///   - onUpdate: called on the loop with each non-empty batch.
    public init(loop: EventLoop, tracker: (any DirtyTracker)?, geometry: FramebufferGeometry,
                delay: Duration = .nanoseconds(16_666_667), maxRects: Int = 16,
                scheduling: Scheduling = .trailing, pollInterval: Duration? = nil,
                confirm: (([Rect]) -> [Rect])? = nil,
                onUpdate: @escaping ([Rect]) -> Void) {
        if let t = tracker { precondition(geometry.byteCount <= t.byteCount, "framebuffer exceeds tracked region") }
        self.loop = loop
        self.tracker = tracker
        self.geometry = geometry
        self.delay = delay
        self.scheduling = scheduling
        self.pollInterval = pollInterval.flatMap { $0 > .zero ? $0 : nil }
        self.coalescer = Coalescer(geometry: geometry, maxRects: maxRects)
        self.confirm = confirm
        self.onUpdate = onUpdate
        floodEnter = tracker?.mode == .mprotect ? 0.05 : 0.2
        floodExit = floodEnter / 2
    }

    deinit { stop() }

    /// Starts watching: collects (and drops) what was written before, then
    /// arms the tracker. A tracker that cannot notify (`compare`) is polled
    /// every `delay`.
    public func start() throws(SystemError) {
        guard !started else { return }
        started = true
        phase = .tracking
        busyTicks = 0
        if let t = tracker {
            _ = try t.collect()
            if let fd = t.notificationFD {
                try loop.watch(fd: fd) { [weak self] _ in self?.notified() }
            }
        }
        if let interval = pollInterval {
            pollTimer = loop.addTimer(after: interval, repeating: interval) { [weak self] in
                guard let self else { return }
                self.add([self.geometry.bounds])
            }
        }
        goIdle()
    }

    /// Stops the timers and the notification watch; the tracker stays open
    /// (its owner closes it). Pending damage is kept for a later `flush`.
    public func stop() {
        guard started else { return }
        started = false
        if let id = timer { loop.cancelTimer(id) }
        timer = nil
        tickQueued = false
        if let id = pollTimer { loop.cancelTimer(id) }
        pollTimer = nil
        if let fd = tracker?.notificationFD { loop.unwatch(fd: fd) }
    }

    /// Adds damage from another source (rects in framebuffer pixels; clipped).
    public func add(_ rects: [Rect]) {
        for r in rects { coalescer.add(r) }
        if !coalescer.isEmpty { schedule() }
    }

    /// Damage waiting for the next tick, not yet coalesced into a batch (tests).
    public var pendingDamage: [Rect] { coalescer.pending }

    /// A new geometry (a resize): damage pending for the old one is dropped,
    /// since it may lie outside the new frame, and the whole new frame
    /// becomes damage. Only for pipelines without a tracker (a tracker's
    /// region is fixed).
    public func setGeometry(_ new: FramebufferGeometry) {
        precondition(tracker == nil, "a tracked region cannot change geometry")
        geometry = new
        coalescer = Coalescer(geometry: new, maxRects: coalescer.maxRects, mergeSlack: coalescer.mergeSlack)
        add([new.bounds])
    }

    /// Collects and delivers now instead of waiting for the timer (before a
    /// resize or a screendump). A pending tick stays pending and delivers
    /// whatever comes after. Returns what was delivered.
    @discardableResult
    public func flush() -> [Rect] {
        tick()
    }

    // MARK: Internals

    private func notified() {
        tracker?.drainNotification()
        statistics.notifications += 1
        schedule()
    }

    private func schedule() {
        guard started, timer == nil, !tickQueued else { return }
        var wait = delay
        if scheduling == .leading {
            // Idle (no tick for `delay`): at once; under load: `delay` after the last tick.
            let d = UInt64(delay.components.seconds) &* 1_000_000_000 &+ UInt64(delay.components.attoseconds / 1_000_000_000)
            let since = lastTick.map { EventLoop.now() &- $0 } ?? .max
            if since >= d {
                tickQueued = true
                loop.runAfterHandlers { [weak self] in
                    guard let self, self.tickQueued else { return }
                    self.tickQueued = false
                    self.tick()
                }
                return
            }
            wait = .nanoseconds(Int64(d - since))
        }
        timer = loop.addTimer(after: wait) { [weak self] in
            guard let self else { return }
            self.timer = nil
            self.tick()
        }
    }

    /// Arms the tracker for the next write; polls when it cannot notify.
    private func goIdle() {
        busyTicks = 0
        guard let t = tracker else { return }
        guard t.notificationFD != nil else { schedule(); return }
        statistics.arms += 1
        let quiet = (try? t.arm()) ?? false
        if !quiet { schedule() }
    }

    @discardableResult
    private func tick() -> [Rect] {
        statistics.ticks += 1
        lastTick = EventLoop.now()
        var activity = !coalescer.isEmpty
        var fullFrame = false
        if let t = tracker {
            switch phase {
            case .tracking:
                let runs = (try? t.collect()) ?? fullRegion(t)
                activity = activity || !runs.isEmpty
                coalescer.add(runs: runs, pageSize: t.pageSize)
                noteLoad(runs.pageCount, of: t)
            case .flood(let n):
                statistics.floodTicks += 1
                fullFrame = true
                activity = true
                if n <= 1 {
                    _ = try? t.collect() // re-protect everything; the full frame covers it
                    phase = .sampling
                } else {
                    phase = .flood(sampleIn: n - 1)
                }
            case .sampling:
                statistics.floodTicks += 1
                let written = ((try? t.peek()) ?? fullRegion(t)).pageCount
                if Double(written) >= floodExit * Double(framePages(t)) {
                    fullFrame = true
                    activity = true
                    sampleInterval = min(sampleInterval * 2, max(floodMaxSampleTicks, 1))
                    phase = .flood(sampleIn: sampleInterval)
                } else {
                    phase = .tracking
                    busyTicks = 0
                    let runs = (try? t.collect()) ?? fullRegion(t)
                    activity = activity || !runs.isEmpty
                    coalescer.add(runs: runs, pageSize: t.pageSize)
                }
            }
        }
        var rects = coalescer.take()
        if fullFrame { rects = [geometry.bounds] }
        if let confirm, !rects.isEmpty { rects = confirm(rects) }
        if !rects.isEmpty {
            statistics.batches += 1
            statistics.rects += rects.count
            statistics.pixels += rects.reduce(0) { $0 + $1.area }
            onUpdate(rects)
        }
        guard started else { return rects }
        // A tracker is looked at again next tick (writes go on after a
        // collect); damage that others report schedules its own tick when it
        // arrives, so without a tracker an empty coalescer means idle: no
        // follow-up tick that would only find nothing.
        if tracker != nil ? activity : !coalescer.isEmpty { schedule() } else { goIdle() }
        return rects
    }

    private func noteLoad(_ pages: Int, of t: any DirtyTracker) {
        guard floodEnabled, t.mode != .compare else { return }
        if Double(pages) >= floodEnter * Double(framePages(t)) {
            busyTicks += 1
            if busyTicks >= floodAfterTicks {
                sampleInterval = max(floodSampleTicks, 1)
                phase = .flood(sampleIn: sampleInterval)
                statistics.floodEntries += 1
            }
        } else {
            busyTicks = 0
        }
    }

    /// Pages the framebuffer spans (the tracked region may be larger).
    private func framePages(_ t: any DirtyTracker) -> Int {
        min(t.pageCount, (geometry.byteCount + t.pageSize - 1) / t.pageSize)
    }

    /// What to report when a collect fails: everything (never lose damage).
    private func fullRegion(_ t: any DirtyTracker) -> [PageRun] {
        [PageRun(first: 0, count: t.pageCount)]
    }
}
