import EventLoop
import Logging
import Support

/// The one queue every input event passes through on its way to the guest:
/// VNC, SDL and QMP (`send-key`, `input-send-event`) all send to the console's
/// `input`, which is this queue, so events from every source reach vkbd in
/// the order they were made.
///
/// It hands events on at once, unless something makes them wait:
/// - a pause (QMP `send-key`'s hold time) holds every later event, from any
///   source, until it has passed;
/// - with `pace` set, at most one event goes on per interval (QEMU's
///   `key-delay-ms` idea, for guests or scripts that lose fast bursts).
///
/// Waiting events stay here, in order, on a loop timer. Everything a party
/// can make wait is bounded: at most `limit` items (events and pauses
/// together; past it a single event is dropped with one warning, and a
/// batch is refused whole) and at most `maxPendingPause` of pause time in
/// the queue (a QMP client cannot freeze input for hours with hold times).
/// Behind this queue the vkbd device keeps what does not fit in the guest's
/// 51-slot ring until the guest makes room.
public final class InputQueue: InputSink {
    /// One queued item: an event, or a pause that holds every later one.
    public enum Item: Equatable, Sendable {
        case event(InputEvent)
        case pause(Duration)
    }

    /// Why a batch was refused (nothing of it was queued).
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        case full(limit: Int)
        case pauseTooLong(limit: Duration)

        public var description: String {
            switch self {
            case .full(let limit): return "the input queue is full (\(limit) events and pauses waiting)"
            case .pauseTooLong(let limit): return "the input queue would hold more than \(limit) of pauses"
            }
        }
    }

    public let loop: EventLoop
    /// Where events go (the vkbd device); nil while there is none, and then
    /// events are dropped as they come due.
    public weak var target: InputSink?
    /// Least time between two events handed on; nil or zero for none.
    public var pace: Duration? {
        didSet { if pace == .zero { pace = nil } }
    }
    /// Most items (events and pauses) waiting here.
    public var limit = 1 << 16
    /// Most pause time waiting here at once.
    public var maxPendingPause: Duration = .seconds(60)
    /// Pause time queued or running.
    public private(set) var pendingPause: Duration = .zero

    private var items: [Item] = []
    private var head = 0
    private var timer: EventLoop.TimerID?
    private var warnedFull = false
    private var lastDelivered: UInt64?
    private let log = Log.logger("input")
    /// Events handed on to the target so far (tests, logs).
    public private(set) var delivered = 0

    public init(loop: EventLoop, pace: Duration? = nil) {
        self.loop = loop
        self.pace = pace == .zero ? nil : pace
    }

    deinit {
        if let timer { loop.cancelTimer(timer) }
    }

    /// Events and pauses not yet handed on.
    public var waiting: Int { items.count - head }

    public func send(_ event: InputEvent) {
        guard waiting < limit else {
            if !warnedFull {
                warnedFull = true
                log.warning("input queue full (\(limit) events); dropping input until it drains")
            }
            return
        }
        warnedFull = false
        items.append(.event(event))
        drain()
    }

    /// Holds every later event for `duration`, if the queue has room for it
    /// (see `submit` for a batch that must go whole or not at all).
    public func pause(_ duration: Duration) {
        try? submit([.pause(duration)])
    }

    /// Queues every item of `batch` in order, or nothing: refused when the
    /// items would pass `limit` or the pauses `maxPendingPause`. QMP
    /// `send-key` submits its presses, releases and hold times this way.
    public func submit(_ batch: [Item]) throws(Refusal) {
        let pauses = batch.reduce(Duration.zero) { total, item in
            if case .pause(let d) = item, d > .zero { return total + d }
            return total
        }
        guard waiting + batch.count <= limit else { throw .full(limit: limit) }
        guard pendingPause + pauses <= maxPendingPause else { throw .pauseTooLong(limit: maxPendingPause) }
        for item in batch {
            if case .pause(let d) = item, d <= .zero { continue }
            items.append(item)
        }
        pendingPause += pauses
        drain()
    }

    /// Holds the queue for `duration` (a pause, counted in `pendingPause`
    /// until it ends), or for pacing.
    private func wait(_ duration: Duration, pause: Bool = true) {
        timer = loop.addTimer(after: duration) { [weak self] in
            guard let self else { return }
            self.timer = nil
            if pause { self.pendingPause -= duration }
            self.drain()
        }
    }

    private func drain() {
        guard timer == nil else { return }
        while head < items.count {
            switch items[head] {
            case .event(let event):
                if let pace, let last = lastDelivered {
                    let interval = UInt64(pace.components.seconds) * 1_000_000_000 + UInt64(pace.components.attoseconds / 1_000_000_000)
                    let now = EventLoop.now()
                    if now &- last < interval {
                        wait(.nanoseconds(Int64(interval - (now &- last))), pause: false)
                        compact()
                        return
                    }
                }
                head += 1
                delivered += 1
                if pace != nil { lastDelivered = EventLoop.now() }
                target?.send(event)
            case .pause(let duration):
                head += 1
                wait(duration)
                compact()
                return
            }
        }
        items.removeAll(keepingCapacity: items.count <= 4096)
        head = 0
    }

    private func compact() {
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}
