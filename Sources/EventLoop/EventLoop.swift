#if canImport(Glibc)
import Glibc
#endif
import Support
import CShims
import Synchronization

/// The one event loop of the process: epoll over every file descriptor, all
/// timers on a single timerfd, signals through signalfd, and an eventfd through
/// which other threads hand work in.
///
/// Handlers run on the loop's thread, one at a time, to completion; they may
/// add and remove file descriptors and timers (including their own) while
/// running. A loop with nothing to do sleeps in `epoll_wait` with no timeout:
/// it never wakes up periodically.
public final class EventLoop: @unchecked Sendable {
    /// What a file descriptor is watched for, and what happened to it.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: EPOLLIN.rawValue)
        public static let writable = Events(rawValue: EPOLLOUT.rawValue)
        /// Reported only: the peer hung up or the fd is in error.
        public static let hangup = Events(rawValue: EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue)
    }

    /// Identifies a timer for `cancelTimer`.
    public struct TimerID: Hashable, Sendable {
        fileprivate let value: UInt64
    }

    private struct Watch {
        var generation: UInt32
        var events: Events
        var handler: (Events) -> Void
    }

    private struct Timer {
        var deadline: UInt64      // CLOCK_MONOTONIC ns
        var interval: UInt64?     // ns, for repeating timers
        var body: () -> Void
    }

    private let epfd: Int32
    private let timerfd: Int32
    private let wakefd: Int32
    private var watches: [Int32: Watch] = [:]
    private var nextGeneration: UInt32 = 1
    private var timers: [UInt64: Timer] = [:]
    private var heap = TimerHeap()
    private var nextTimerID: UInt64 = 1
    private var armedDeadline: UInt64 = 0
    private var running = false
    private var signalFD: Int32 = -1
    /// Work from other threads, under `postedLock` (a pthread mutex, which
    /// ThreadSanitizer understands; it reported the futex-based `Mutex` here
    /// as a race between `post` and `drainPosted`).
    private let postedLock = Lock()
    nonisolated(unsafe) private var posted: [@Sendable () -> Void] = []
    /// Work queued by `runAfterHandlers`, run at the end of this iteration.
    private var afterHandlers: [() -> Void] = []
    private var events = [epoll_event](repeating: epoll_event(), count: 64)

    /// How many times `epoll_wait` returned; tests use it to prove that an
    /// idle loop does not wake up.
    public private(set) var wakeups: UInt64 = 0

    public init() throws(SystemError) {
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epfd >= 0 else { throw SystemError("epoll_create1") }
        timerfd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard timerfd >= 0 else { close(epfd); throw SystemError("timerfd_create") }
        wakefd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard wakefd >= 0 else { close(epfd); close(timerfd); throw SystemError("eventfd") }
        try watch(fd: timerfd) { [unowned self] _ in self.timerFired() }
        try watch(fd: wakefd) { [unowned self] _ in self.drainPosted() }
    }

    deinit {
        if signalFD >= 0 { close(signalFD) }
        close(wakefd)
        close(timerfd)
        close(epfd)
    }

    // MARK: File descriptors

    /// Calls `handler` on the loop whenever `fd` is ready for `events`
    /// (level-triggered). Hang-ups and errors are always reported. Watching an
    /// fd that is already watched replaces its handler.
    public func watch(fd: Int32, events: Events = .readable, handler: @escaping (Events) -> Void) throws(SystemError) {
        let generation = nextGeneration
        nextGeneration &+= 1
        if nextGeneration == 0 { nextGeneration = 1 }
        let existed = watches[fd] != nil
        var ev = epoll_event()
        ev.events = events.rawValue | EPOLLRDHUP.rawValue
        ev.data.u64 = UInt64(generation) << 32 | UInt64(UInt32(bitPattern: fd))
        let rc = epoll_ctl(epfd, existed ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev)
        guard rc == 0 else { throw SystemError("epoll_ctl(\(fd))") }
        watches[fd] = Watch(generation: generation, events: events, handler: handler)
    }

    /// Changes what an already watched fd is watched for (e.g. add `.writable`
    /// while output is queued, drop it when the queue is empty).
    public func setEvents(fd: Int32, _ events: Events) {
        guard var w = watches[fd], w.events != events else { return }
        w.events = events
        var ev = epoll_event()
        ev.events = events.rawValue | EPOLLRDHUP.rawValue
        ev.data.u64 = UInt64(w.generation) << 32 | UInt64(UInt32(bitPattern: fd))
        if epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) == 0 { watches[fd] = w }
    }

    /// Stops watching `fd`. Safe to call from the fd's own handler, and for an
    /// fd that is not watched. The caller still owns (and closes) the fd.
    public func unwatch(fd: Int32) {
        guard watches.removeValue(forKey: fd) != nil else { return }
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
    }

    public func isWatching(fd: Int32) -> Bool { watches[fd] != nil }

    // MARK: Timers

    /// Runs `body` once after `delay` or, with `repeating`, every interval
    /// after that until cancelled. Timers due at the same time fire in the
    /// order they were added.
    @discardableResult
    public func addTimer(after delay: Duration, repeating: Duration? = nil, _ body: @escaping () -> Void) -> TimerID {
        let id = nextTimerID
        nextTimerID += 1
        let deadline = Self.now() &+ delay.nanoseconds
        timers[id] = Timer(deadline: deadline, interval: repeating.map { max($0.nanoseconds, 1) }, body: body)
        heap.push(deadline: deadline, id: id)
        armTimerFD()
        return TimerID(value: id)
    }

    /// Cancels a timer; a timer that already fired or was cancelled is ignored.
    public func cancelTimer(_ id: TimerID) {
        guard timers.removeValue(forKey: id.value) != nil else { return }
        // Its heap entry is dropped lazily; re-arm so a cancelled head does not wake us.
        armTimerFD()
    }

    public var activeTimers: Int { timers.count }

    private func armTimerFD() {
        while let top = heap.peek, timers[top.id]?.deadline != top.deadline {
            heap.pop() // cancelled or rescheduled entry
        }
        let next = heap.peek?.deadline ?? 0
        guard next != armedDeadline else { return }
        armedDeadline = next
        var spec = itimerspec()
        if next != 0 {
            spec.it_value.tv_sec = Int(next / 1_000_000_000)
            spec.it_value.tv_nsec = Int(next % 1_000_000_000)
        }
        // it_value all zero disarms.
        timerfd_settime(timerfd, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }

    private func timerFired() {
        var expirations: UInt64 = 0
        _ = read(timerfd, &expirations, 8)
        armedDeadline = 0
        let now = Self.now()
        // Collect what is due first, so timers added by handlers wait for the next round.
        var due: [UInt64] = []
        while let top = heap.peek, top.deadline <= now {
            heap.pop()
            if timers[top.id]?.deadline == top.deadline { due.append(top.id) }
        }
        for id in due {
            guard var timer = timers[id] else { continue } // cancelled by an earlier one
            if let interval = timer.interval {
                var next = timer.deadline &+ interval
                if next <= now { next = now &+ interval } // do not replay missed ticks
                timer.deadline = next
                timers[id] = timer
                heap.push(deadline: next, id: id)
            } else {
                timers.removeValue(forKey: id)
            }
            timer.body()
        }
        armTimerFD()
    }

    // MARK: Signals

    /// Blocks `signals` in the calling thread; threads created afterwards
    /// inherit the mask. Call it from main before any thread starts, then
    /// `handleSignals`, so that signalfd sees every delivery.
    public static func blockSignals(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Delivers `signals` to `handler` on the loop (through signalfd).
    public func handleSignals(_ signals: [Int32], _ handler: @escaping (Int32) -> Void) throws(SystemError) {
        Self.blockSignals(signals)
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        let fd = signalfd(signalFD, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        guard fd >= 0 else { throw SystemError("signalfd") }
        signalFD = fd
        try watch(fd: fd) { _ in
            var info = signalfd_siginfo()
            while read(fd, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
                handler(Int32(info.ssi_signo))
            }
        }
    }

    // MARK: Work from other threads

    /// Runs `work` on the loop's thread soon. Callable from any thread.
    public func post(_ work: @escaping @Sendable () -> Void) {
        postedLock.withLock { posted.append(work) }
        var one: UInt64 = 1
        _ = write(wakefd, &one, 8)
    }

    /// Runs `work` on the loop's thread soon, from any thread, where `work`
    /// touches state that belongs to the loop's thread only (a display's
    /// bookkeeping after its worker finished): the closure itself is not
    /// Sendable, and it is only ever called on the loop.
    public func postLoopBound(_ work: @escaping () -> Void) {
        let box = LoopBound(work)
        let sendable: @Sendable () -> Void = { box.value() }
        post(sendable)
    }

    private func drainPosted() {
        var value: UInt64 = 0
        _ = read(wakefd, &value, 8)
        let work: [@Sendable () -> Void] = postedLock.withLock {
            defer { posted.removeAll() }
            return posted
        }
        for w in work { w() }
    }

    /// Runs `work` on the loop's thread once the handlers of the current
    /// iteration have returned: every event that is ready now is handled
    /// first, and no system call or wake-up is spent (a timer of zero costs
    /// two `timerfd_settime`, an `epoll_wait` and a `read`). Called outside a
    /// handler, the next `runOnce` runs it without sleeping. Loop thread only.
    public func runAfterHandlers(_ work: @escaping () -> Void) {
        afterHandlers.append(work)
    }

    /// Work is queued for the end of this iteration (tests).
    public var hasWorkAfterHandlers: Bool { !afterHandlers.isEmpty }

    private func runAfterHandlersQueue() {
        while !afterHandlers.isEmpty {
            let work = afterHandlers
            afterHandlers.removeAll(keepingCapacity: true)
            for w in work { w() }
        }
    }

    // MARK: Running

    /// Runs until `stop()` is called (from a handler or through `post`).
    public func run() {
        running = true
        while running {
            runOnce(timeoutMilliseconds: -1)
        }
    }

    /// Ends `run()` once the current handler returns.
    public func stop() { running = false }

    /// Waits up to `timeoutMilliseconds` (-1: forever) for events and handles
    /// them. Returns how many events were handled.
    @discardableResult
    public func runOnce(timeoutMilliseconds: Int32) -> Int {
        // Work queued outside a handler must not wait for an event.
        let timeout = afterHandlers.isEmpty ? timeoutMilliseconds : 0
        let n = events.withUnsafeMutableBufferPointer {
            epoll_wait(epfd, $0.baseAddress, Int32($0.count), timeout)
        }
        wakeups += 1
        for i in 0..<max(Int(n), 0) {
            let event = events[i]
            let data = event.data.u64
            let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: data))
            let generation = UInt32(truncatingIfNeeded: data >> 32)
            // The fd may have been removed (or replaced) by an earlier handler in this batch.
            guard let w = watches[fd], w.generation == generation else { continue }
            w.handler(Events(rawValue: event.events))
        }
        runAfterHandlersQueue()
        return max(Int(n), 0)
    }

    /// Monotonic clock in nanoseconds.
    public static func now() -> UInt64 { MonotonicClock.now() }
}

extension Duration {
    /// Whole nanoseconds, saturating; negative durations count as zero.
    public var nanoseconds: UInt64 {
        let (s, atto) = components
        if s < 0 || (s == 0 && atto < 0) { return 0 }
        let (ns, overflow) = UInt64(s).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        return ns &+ UInt64(atto / 1_000_000_000)
    }
}

/// A binary min-heap of (deadline, id); ties go to the smaller id, i.e. the
/// timer added first.
struct TimerHeap {
    struct Entry { var deadline: UInt64; var id: UInt64 }
    private var items: [Entry] = []

    var peek: Entry? { items.first }
    var count: Int { items.count }

    private static func less(_ a: Entry, _ b: Entry) -> Bool {
        a.deadline != b.deadline ? a.deadline < b.deadline : a.id < b.id
    }

    mutating func push(deadline: UInt64, id: UInt64) {
        items.append(Entry(deadline: deadline, id: id))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.less(items[i], items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    @discardableResult
    mutating func pop() -> Entry? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && Self.less(items[l], items[m]) { m = l }
                if r < items.count && Self.less(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}

/// A value that belongs to the loop's thread, carried through another
/// thread untouched (see `EventLoop.postLoopBound`).
public struct LoopBound<Value>: @unchecked Sendable {
    public let value: Value
    public init(_ value: Value) { self.value = value }
}
