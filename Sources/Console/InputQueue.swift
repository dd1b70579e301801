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
/// Waiting events stay here, in order, on a loop timer; none is dropped
/// unless `limit` is reached. Behind this queue the vkbd device keeps what
/// does not fit in the guest's 51-slot ring until the guest makes room.
public final class InputQueue: InputSink {
    private enum Item {
        case event(InputEvent)
        case pause(Duration)
    }

    public let loop: EventLoop
    /// Where events go (the vkbd device); nil while there is none, and then
    /// events are dropped as they come due.
    public weak var target: InputSink?
    /// Least time between two events handed on; nil or zero for none.
    public var pace: Duration? {
        didSet { if pace == .zero { pace = nil } }
    }
    /// Most events waiting here; more are dropped with a warning.
    public var limit = 1 << 16

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

    /// Holds every later event for `duration`.
    public func pause(_ duration: Duration) {
        guard duration > .zero else { return }
        items.append(.pause(duration))
        drain()
    }

    private func wait(_ duration: Duration) {
        timer = loop.addTimer(after: duration) { [weak self] in
            guard let self else { return }
            self.timer = nil
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
                        wait(.nanoseconds(Int64(interval - (now &- last))))
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
