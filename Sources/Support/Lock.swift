#if canImport(Glibc)
import Glibc
#endif

/// A mutual-exclusion lock (a `pthread_mutex_t` that does not move).
///
/// For state that the guest's loop and a display's own thread both touch;
/// hold it only for bounded work (a copy of a band of rows, a few fields),
/// never across I/O, since the loop may be the one waiting. The
/// corresponding C functions are `pthread_mutex_lock` and `pthread_mutex_unlock`.
public final class Lock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    fileprivate var mutexPointer: UnsafeMutablePointer<pthread_mutex_t> { mutex }

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Runs `body` with the lock held.
    @inline(__always)
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A condition variable used with a `Lock` (a `pthread_cond_t`).
public final class Condition: @unchecked Sendable {
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }

    /// Waits for a signal; `lock` must be held and is held again on return.
    public func wait(_ lock: Lock) { lock.wait(on: cond) }

    public func signal() { pthread_cond_signal(cond) }
    public func broadcast() { pthread_cond_broadcast(cond) }
}

extension Lock {
    fileprivate func wait(on cond: UnsafeMutablePointer<pthread_cond_t>) { pthread_cond_wait(cond, mutexPointer) }
}

/// A value one thread hands another once: `put` wakes every `take`.
public final class Handoff<Value: Sendable>: @unchecked Sendable {
    private let lock = Lock()
    private let ready = Condition()
    private var value: Value?

    public init() {}

    public func put(_ v: Value) {
        lock.withLock { value = v }
        ready.broadcast()
    }

    /// Waits for `put`; returns its value.
    public func take() -> Value {
        lock.lock()
        defer { lock.unlock() }
        while value == nil { ready.wait(lock) }
        return value!
    }
}
