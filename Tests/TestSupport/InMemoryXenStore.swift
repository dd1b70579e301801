import EventLoop
import Host

// The tests' stand-in for xenstore (not part of any shipped target).

/// A xenstore tree in this process, for unit tests: no permissions, no
/// domains, transactions apply directly. Watch events are delivered through
/// `loop.post`, as a real connection delivers them through its fd.
public final class InMemoryXenStore: XenStoreAccess {
    private var nodes: [String: String] = ["/": ""]
    private var watches: [Int: (path: String, handler: (String) -> Void)] = [:]
    private var nextWatch = 0
    private let loop: EventLoop
    /// Every write, in order, as "path=value" (removals as "rm path"); tests read it.
    public private(set) var journal: [String] = []
    /// Makes the next `count` reads of `path` fail (EIO-like), as a
    /// xenstored in trouble would: tests of what a transient error costs.
    public func failReads(of path: String, count: Int) { failingReads[path] = count }
    private var failingReads: [String: Int] = [:]
    /// Reads that failed on purpose so far.
    public private(set) var failedReads = 0

    public init(loop: EventLoop) { self.loop = loop }

    private static func parent(_ p: String) -> String {
        guard let i = p.lastIndex(of: "/"), i != p.startIndex else { return "/" }
        return String(p[..<i])
    }

    private static func isUnder(_ p: String, _ ancestor: String) -> Bool {
        p == ancestor || ancestor == "/" || p.hasPrefix(ancestor + "/")
    }

    private func check(_ path: String) throws {
        guard path.hasPrefix("/"), path == "/" || !path.hasSuffix("/"), !path.contains("//") else { throw XenStoreAccessError.invalid(path) }
    }

    private func fire(_ path: String) {
        for (id, w) in watches where Self.isUnder(path, w.path) || Self.isUnder(w.path, path) {
            let changed = path
            let token = UnsafeSendable { [weak self] in
                guard let self, let w = self.watches[id] else { return }
                w.handler(changed)
            }
            loop.post { token.value() }
        }
    }

    public func read(_ path: String) throws -> String? {
        try check(path)
        if let n = failingReads[path], n > 0 {
            failingReads[path] = n - 1
            failedReads += 1
            throw XenStoreAccessError.io(path)
        }
        return nodes[path]
    }

    public func write(_ path: String, _ value: String) throws {
        try check(path)
        var p = Self.parent(path)
        while nodes[p] == nil { nodes[p] = ""; p = Self.parent(p) }
        nodes[path] = value
        journal.append("\(path)=\(value)")
        fire(path)
    }

    public func mkdir(_ path: String) throws {
        if nodes[path] == nil { try write(path, "") }
    }

    public func remove(_ path: String) throws {
        try check(path)
        guard nodes[path] != nil else { return }
        for k in nodes.keys where Self.isUnder(k, path) && k != "/" { nodes[k] = nil }
        journal.append("rm \(path)")
        fire(path)
    }

    public func directory(_ path: String) throws -> [String] {
        try check(path)
        let prefix = path == "/" ? "/" : path + "/"
        return nodes.keys.filter { $0.hasPrefix(prefix) && $0 != path && !$0.dropFirst(prefix.count).contains("/") }
            .map { String($0.dropFirst(prefix.count)) }.sorted()
    }

    public func setPermissions(_ path: String, _ permissions: [String]) throws {
        try check(path)
        guard nodes[path] != nil else { throw XenStoreAccessError.noEntry(path) }
        fire(path)
    }

    public func watch(_ path: String, _ handler: @escaping (String) -> Void) throws -> XenStoreWatch {
        let id = nextWatch
        nextWatch += 1
        watches[id] = (path, handler)
        let token = UnsafeSendable { [weak self] in self?.watches[id]?.handler(path) }
        loop.post { token.value() }
        return XenStoreWatch { [weak self] in self?.watches[id] = nil }
    }

    public func transaction(_ body: (XenStoreAccess) throws -> Void) throws {
        try body(self)
    }
}

/// Carries a closure for the loop's own thread through `post`'s Sendable
/// signature (the store and its loop share one thread).
struct UnsafeSendable: @unchecked Sendable {
    let value: () -> Void
    init(_ value: @escaping () -> Void) { self.value = value }
}
