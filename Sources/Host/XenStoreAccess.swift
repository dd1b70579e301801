import EventLoop

/// The xenstore operations the backends and GuestKit need, as one protocol:
/// `XenStoreConnection` provides it over the XenStore module's libxenstore
/// client; the tests' `InMemoryXenStore` (Tests/TestSupport) is a
/// single-process stand-in for unit tests of the state machines.
///
/// Paths are absolute. Watch handlers run on the event loop, never inside the
/// call that caused them.
public protocol XenStoreAccess: AnyObject {
    /// The value at `path`, or nil if the node does not exist.
    func read(_ path: String) throws -> String?
    /// Writes `value`, creating missing parents.
    func write(_ path: String, _ value: String) throws
    func mkdir(_ path: String) throws
    /// Removes `path` and everything below it; a missing node is not an error.
    func remove(_ path: String) throws
    /// The children's names; empty if the node does not exist.
    func directory(_ path: String) throws -> [String]
    /// Sets permissions as xenstore spells them: `["n0", "r5"]` (first = owner).
    func setPermissions(_ path: String, _ permissions: [String]) throws
    /// Calls `handler` with the changed path whenever `path` or anything below
    /// it changes, and once right after registration. Keep the token alive;
    /// `cancel()` (or dropping it) removes the watch.
    func watch(_ path: String, _ handler: @escaping (String) -> Void) throws -> XenStoreWatch
    /// Runs `body` inside a transaction and commits it, retrying on EAGAIN.
    func transaction(_ body: (XenStoreAccess) throws -> Void) throws
}

/// A registered watch; `cancel()` is idempotent and also runs on deinit.
public final class XenStoreWatch {
    private var onCancel: (() -> Void)?
    public init(onCancel: @escaping () -> Void) { self.onCancel = onCancel }
    deinit { cancel() }
    public func cancel() {
        let c = onCancel
        onCancel = nil
        c?()
    }
}

/// Errors of a xenstore access that are not the server's, named as xenstored's.
public enum XenStoreAccessError: Error, Equatable {
    case noEntry(String)
    case invalid(String)
    /// A read that failed for another reason than a missing node.
    case io(String)
}
