import EventLoop
import Logging
import Support

/// What runs when the device model is told to stop (SIGHUP from `xl
/// destroy`, SIGTERM, SIGINT, QMP `quit`): each part registers a hook, and
/// the hooks run one after another in reverse order of registration, so what
/// was set up last is torn down first (devices before the xenstore
/// connection they write to).
///
/// A hook may finish later on the loop (a backend waiting to write its
/// Closing and Closed states); it calls `done` when it has. The whole chain
/// is bounded by a deadline after which it completes anyway.
public final class ShutdownChain {
    public typealias Hook = (_ done: @escaping () -> Void) -> Void

    private var hooks: [(name: String, hook: Hook)] = []
    private var started = false
    private let log: Logger

    public init(logger: Logger = Log.logger("shutdown")) {
        self.log = logger
    }

    /// Adds a hook named for the log.
    public func add(_ name: String, _ hook: @escaping Hook) {
        hooks.append((name, hook))
    }

    public var isRunning: Bool { started }

    /// Runs every hook, then `completion` (once). A second call is ignored.
    public func run(on loop: EventLoop, deadline: Duration = .seconds(5), completion: @escaping () -> Void) {
        guard !started else { return }
        started = true
        var remaining = Array(hooks.reversed())
        var finished = false
        var timer: EventLoop.TimerID?
        func finish() {
            guard !finished else { return }
            finished = true
            if let timer { loop.cancelTimer(timer) }
            completion()
        }
        func next() {
            guard !finished else { return }
            guard !remaining.isEmpty else { return finish() }
            let (name, hook) = remaining.removeFirst()
            var called = false
            log.debug("shutting down \(name)")
            hook {
                guard !called else { return }
                called = true
                // Continue outside the hook's own call stack.
                loop.addTimer(after: .zero) { next() }
            }
        }
        timer = loop.addTimer(after: deadline) { [log] in
            log.warning("shutdown did not finish in time; exiting anyway", metadata: ["pending": "\(remaining.count + 1)"])
            finish()
        }
        next()
    }
}
