// The embedded xenstored's tree and the operations on it, with the
// permission rules of Xen's C xenstored (xenstored_core.c): perm_for_conn,
// get_node/errno_from_parents, construct_node, do_rm, do_set_perms.

/// A node of the tree.
struct XSNode {
    var value: [UInt8] = []
    var perms: [XSPermission]
    /// Child names in creation order, as DIRECTORY lists them.
    var children: [String] = []
    /// Changes whenever the node (value, permissions or children) changes.
    var generation: UInt64 = 0
}

/// Who is asking: a connection's domain and, after SET_TARGET, the domain it
/// may act for.
struct XSCaller {
    var domid: UInt32
    var target: UInt32? = nil
    var privileged: Bool { domid == 0 }

    /// perm_for_conn: owners and privileged callers get everything; else the
    /// first entry naming the caller (or its target), else the default entry.
    func access(_ perms: [XSPermission]) -> XSPermission.Access {
        guard let owner = perms.first else { return privileged ? [.both, .owner] : [] }
        if privileged || owner.domid == domid || (target != nil && owner.domid == target) {
            return [.read, .write, .owner]
        }
        for p in perms.dropFirst() where p.domid == domid || (target != nil && p.domid == target) {
            return p.access.intersection(.both)
        }
        return owner.access.intersection(.both)
    }
}

/// A watch event waiting to be delivered: the path that changed and what
/// decides who may see it (the permissions at the time of the change).
struct XSPendingEvent {
    var path: String
    /// Only watches on exactly this path (a descendant removed by RM).
    var exact: Bool
    var nodePerms: [XSPermission]?
    var parentPerms: [XSPermission]?
    var oldPerms: [XSPermission]? = nil
    /// Permissions of the last later change to the same path merged into
    /// this event (a transaction's), besides the first change's.
    var morePerms: [[XSPermission]] = []

    var allPerms: [[XSPermission]] {
        [oldPerms, nodePerms, parentPerms].compactMap { $0 } + morePerms
    }
}

extension XSPendingEvent {
    /// Folds a later change of the same path into this event: the watch
    /// fires once, for a watcher that may read the node as it was first
    /// or as it is last (as xenstored's finalize_transaction checks the
    /// old and the final permissions). Bounded however often the path changes.
    mutating func merge(_ later: XSPendingEvent) {
        exact = exact && later.exact
        morePerms = [later.oldPerms, later.nodePerms, later.parentPerms].compactMap { $0 }
    }
}

/// Where an operation's watch events go: fired after the request, or, for
/// a transaction, kept until commit with one event per path (as xenstored
/// queues them), so that a transaction's events are bounded by the nodes it
/// touched, not by how many requests it made.
struct XSEventQueue {
    private(set) var events: [XSPendingEvent] = []
    /// Set for a transaction: where each path's event is.
    private var index: [String: Int]?

    init(mergingByPath: Bool = false) {
        index = mergingByPath ? [:] : nil
    }

    mutating func append(_ e: XSPendingEvent) {
        if index != nil {
            if let i = index![e.path] {
                events[i].merge(e)
                return
            }
            index![e.path] = events.count
        }
        events.append(e)
    }

    var isEmpty: Bool { events.isEmpty }
}

/// The bytes a node costs in xenstored's accounting: its path (the tdb key)
/// and its record (header, permissions, value, child names), as
/// write_node_raw lays it out.
func xsNodeBytes(_ path: String, _ node: XSNode) -> Int {
    let children = node.children.reduce(0) { $0 + $1.utf8.count + 1 }
    return path.utf8.count + 24 + 8 * node.perms.count + node.value.count + children
}

/// The live tree: every node, who owns how many, and how many bytes each
/// domain's nodes take. One per server; transactions read through it.
final class XSStore {
    private(set) var nodes: [String: XSNode] = [:]
    /// How many nodes each domain owns (quota_nb_entry_per_domain).
    private(set) var owned: [UInt32: Int] = [:]
    /// Bytes of the nodes each domain owns (xsNodeBytes; quota "memory").
    private(set) var ownedBytes: [UInt32: Int] = [:]
    /// Transaction state each domain holds, in bytes (its part of "memory").
    var transactionBytes: [UInt32: Int] = [:]
    private var lastGeneration: UInt64 = 0

    init() {
        // As xenstored's setup_structure: "/", "/tool", "/tool/xenstored", all n0.
        let perms = [XSPermission(domid: 0, .none)]
        install("/", XSNode(perms: perms, children: ["tool"]))
        install("/tool", XSNode(perms: perms, children: ["xenstored"]))
        install("/tool/xenstored", XSNode(perms: perms))
    }

    func nextGeneration() -> UInt64 {
        lastGeneration += 1
        return lastGeneration
    }

    /// The node's generation; 0 for an absent node.
    func generation(of path: String) -> UInt64 { nodes[path]?.generation ?? 0 }

    /// What a domain's nodes and transactions take (quota "memory").
    func memory(of domid: UInt32) -> Int {
        ownedBytes[domid, default: 0] + transactionBytes[domid, default: 0]
    }

    /// Stores (or removes) a node with a new generation, keeping the
    /// per-owner counts.
    func install(_ path: String, _ node: XSNode?) {
        if let old = nodes[path], let owner = old.perms.first?.domid {
            owned[owner, default: 1] -= 1
            ownedBytes[owner, default: 0] -= xsNodeBytes(path, old)
        }
        if var n = node {
            n.generation = nextGeneration()
            nodes[path] = n
            if let owner = n.perms.first?.domid {
                owned[owner, default: 0] += 1
                ownedBytes[owner, default: 0] += xsNodeBytes(path, n)
            }
        } else {
            nodes.removeValue(forKey: path)
        }
    }

}

/// What a transaction has touched, as xenstored's access_node keeps it: each
/// node is copied from the live tree when the transaction first reads or
/// writes it (later changes by others are not seen, and conflict at commit),
/// with the generation it had then. Bounded: an unprivileged domain's
/// transaction may touch `maxNodes` nodes (quota_trans_nodes) and all its
/// transactions together `maxBytes` of state (quota "memory").
struct XSTransactionState {
    struct Entry {
        /// The node as the transaction sees it (nil: absent).
        var node: XSNode?
        /// Its generation in the live tree when first touched (0: absent).
        var generation: UInt64
        var modified = false
        /// What this entry is charged (XSStore.transactionBytes).
        var bytes: Int
    }

    /// The domain charged for this transaction; nil: privileged, unlimited.
    let domid: UInt32?
    let maxNodes: Int
    let maxBytes: Int
    private(set) var entries: [String: Entry] = [:]
    /// Paths in the order first touched (commit applies them in that order).
    private(set) var order: [String] = []
    /// Change of each domain's node count if this commits (changed_domains).
    private(set) var ownedDelta: [UInt32: Int] = [:]
    /// Set when a quota stopped an access: the commit then fails (ENOMEM, as
    /// xenstored's trans->fail).
    private(set) var failed = false
    /// What all entries are charged.
    private(set) var bytes = 0

    init(domid: UInt32?, maxNodes: Int, maxBytes: Int) {
        self.domid = domid
        self.maxNodes = maxNodes
        self.maxBytes = maxBytes
    }

    /// The entry for `path`, copying it from the live tree on first access.
    /// ENOSPC past `maxNodes`, EIO past `maxBytes` (xenstored 4.17's answers).
    mutating func access(_ path: String, _ store: XSStore) throws(XSError) -> Entry {
        if let e = entries[path] { return e }
        let node = store.nodes[path]
        let cost = Self.cost(path, node)
        if let domid {
            if entries.count >= maxNodes { failed = true; throw .ENOSPC }
            if store.memory(of: domid) + cost > maxBytes { failed = true; throw .EIO }
            store.transactionBytes[domid, default: 0] += cost
        }
        bytes += cost
        let e = Entry(node: node, generation: node?.generation ?? 0, bytes: cost)
        entries[path] = e
        order.append(path)
        return e
    }

    /// Records a change (nil: removal) of a node already accessed.
    mutating func change(_ path: String, _ node: XSNode?, _ store: XSStore) throws(XSError) {
        guard var e = entries[path] else { preconditionFailure("change of \(path) before access") }
        let cost = Self.cost(path, node)
        if let domid, cost > e.bytes {
            if store.memory(of: domid) + cost - e.bytes > maxBytes { failed = true; throw .EIO }
        }
        if let domid { store.transactionBytes[domid, default: 0] += cost - e.bytes }
        bytes += cost - e.bytes
        e.bytes = cost
        let oldOwner = e.node?.perms.first?.domid, newOwner = node?.perms.first?.domid
        if oldOwner != newOwner {
            if let o = oldOwner { ownedDelta[o, default: 0] -= 1 }
            if let o = newOwner { ownedDelta[o, default: 0] += 1 }
        }
        e.node = node.map { var n = $0; n.generation = store.nextGeneration(); return n }
        e.modified = true
        entries[path] = e
    }

    /// What an entry is charged: as xenstored charges the copy it keeps of
    /// a node (its tdb record and key); an absent node, its path.
    private static func cost(_ path: String, _ node: XSNode?) -> Int {
        node.map { xsNodeBytes(path, $0) } ?? path.utf8.count
    }

    /// Gives back what this transaction was charged (at its end).
    func release(_ store: XSStore) {
        if let domid { store.transactionBytes[domid, default: 0] -= bytes }
    }
}

/// The tree as one caller sees it: the live store, or a transaction's view
/// of it.
struct XSDatabase {
    let store: XSStore
    var transaction: XSTransactionState?

    init(store: XSStore, transaction: XSTransactionState? = nil) {
        self.store = store
        self.transaction = transaction
    }

    mutating func get(_ path: String) throws(XSError) -> XSNode? {
        guard transaction != nil else { return store.nodes[path] }
        return try transaction!.access(path, store).node
    }

    mutating func put(_ path: String, _ node: XSNode?) throws(XSError) {
        guard transaction != nil else { store.install(path, node); return }
        _ = try transaction!.access(path, store)
        try transaction!.change(path, node, store)
    }

    /// How many nodes `domid` owns in the live tree. In a transaction too:
    /// as xenstored, the nodes a transaction adds count at commit.
    func owned(_ domid: UInt32) -> Int { store.owned[domid, default: 0] }

    /// The memory `domid` takes: its nodes and its transactions.
    func memory(_ domid: UInt32) -> Int { store.memory(of: domid) }
}

/// The operations of the protocol on a database, for one caller. Errors are
/// the protocol's; watch events go to `events`.
struct XSOperations {
    var caller: XSCaller
    /// quota_max_entry_size: the largest node an unprivileged caller may write.
    var maxEntrySize = 2048
    /// quota_nb_entry_per_domain: how many nodes an unprivileged domain may own.
    var maxEntriesPerDomain = 1000
    /// quota "memory": bytes (xsNodeBytes) an unprivileged domain's nodes
    /// and transactions may take.
    var maxMemoryPerDomain = 2_621_440
    /// Domains that may own nodes (nil: any).
    var existingDomains: Set<UInt32>? = nil

    /// get_node: the node if the caller has `need` on it; otherwise ENOENT or
    /// EACCES, chosen so that the caller learns nothing it may not read.
    func getNode(_ db: inout XSDatabase, _ path: String, _ need: XSPermission.Access) throws(XSError) -> XSNode {
        guard XSPath.isValid(path, privileged: caller.privileged) else { throw .EINVAL }
        let err: XSError
        if let n = try db.get(path) {
            if caller.access(n.perms).isSuperset(of: need) { return n }
            err = .EACCES
        } else {
            err = .ENOENT
        }
        throw try errnoFromParents(&db, path, err, need)
    }

    /// errno_from_parents: the error stands only if the nearest existing
    /// ancestor grants some of `need`; otherwise EACCES.
    func errnoFromParents(_ db: inout XSDatabase, _ path: String, _ err: XSError, _ need: XSPermission.Access) throws(XSError) -> XSError {
        var name = path
        var node: XSNode?
        repeat {
            name = XSPath.parent(name)
            node = try db.get(name)
        } while node == nil && name != "/"
        guard let n = node else { return .EACCES }
        return caller.access(n.perms).intersection(need).isEmpty ? .EACCES : err
    }

    private func checkSize(_ node: XSNode) throws(XSError) {
        guard !caller.privileged else { return }
        // write_node_raw: header + perms + data + children against quota_max_entry_size.
        let children = node.children.reduce(0) { $0 + $1.utf8.count + 1 }
        if 24 + 8 * node.perms.count + node.value.count + children >= maxEntrySize { throw .ENOSPC }
    }

    /// Stores a change, held to quota "memory" for an unprivileged caller
    /// outside a transaction (a transaction is held to it as it accesses
    /// nodes): past it, EIO, as xenstored 4.17 answers.
    private func put(_ db: inout XSDatabase, _ path: String, _ node: XSNode?, old: XSNode?) throws(XSError) {
        if !caller.privileged, db.transaction == nil {
            let grows = (node.map { xsNodeBytes(path, $0) } ?? 0) - (old.map { xsNodeBytes(path, $0) } ?? 0)
            if grows > 0 && db.memory(caller.domid) + grows > maxMemoryPerDomain { throw .EIO }
        }
        try db.put(path, node)
    }

    /// construct_node + create_node: creates `path` and any missing parents.
    /// New nodes inherit their parent's permissions; an unprivileged caller
    /// becomes their owner. As in xenstored, every node is built and checked
    /// (node quota, size, memory) before any is stored: a refused request
    /// leaves nothing behind.
    private func create(_ db: inout XSDatabase, _ path: String, value: [UInt8]) throws(XSError) -> XSNode {
        var missing: [String] = [path]
        var parentName = XSPath.parent(path)
        var parent: XSNode
        while true {
            if let p = try db.get(parentName) { parent = p; break }
            missing.append(parentName)
            parentName = XSPath.parent(parentName)
        }
        missing.reverse()   // outermost first
        // xenstored 4.17: the domain may own at most the quota once all are made.
        if !caller.privileged && db.owned(caller.domid) + missing.count > maxEntriesPerDomain { throw .ENOSPC }
        var changes: [(path: String, node: XSNode, old: XSNode?)] = []
        var top = parent
        top.children.append(XSPath.basename(missing[0]))
        try checkSize(top)
        changes.append((parentName, top, parent))
        var perms = parent.perms
        for (i, name) in missing.enumerated() {
            var node = XSNode(perms: perms)
            if !caller.privileged, !node.perms.isEmpty { node.perms[0].domid = caller.domid }
            if i + 1 < missing.count {
                node.children = [XSPath.basename(missing[i + 1])]
            } else {
                node.value = value
            }
            try checkSize(node)
            changes.append((name, node, nil))
            perms = node.perms
        }
        if !caller.privileged, db.transaction == nil {
            let grows = changes.reduce(0) { $0 + xsNodeBytes($1.path, $1.node) - ($1.old.map { xsNodeBytes(parentName, $0) } ?? 0) }
            if db.memory(caller.domid) + grows > maxMemoryPerDomain { throw .EIO }
        }
        for c in changes { try db.put(c.path, c.node) }
        return changes[changes.count - 1].node
    }

    private func parentPerms(_ db: inout XSDatabase, _ path: String) throws(XSError) -> [XSPermission]? {
        try db.get(XSPath.parent(path))?.perms
    }

    func read(_ db: inout XSDatabase, _ path: String) throws(XSError) -> [UInt8] {
        try getNode(&db, path, .read).value
    }

    func write(_ db: inout XSDatabase, _ path: String, _ value: [UInt8], _ events: inout XSEventQueue) throws(XSError) {
        let node: XSNode
        do {
            let old = try getNode(&db, path, .write)
            var n = old
            n.value = value
            try checkSize(n)
            try put(&db, path, n, old: old)
            node = n
        } catch .ENOENT {
            node = try create(&db, path, value: value)
        }
        events.append(XSPendingEvent(path: path, exact: false, nodePerms: node.perms, parentPerms: try parentPerms(&db, path)))
    }

    func mkdir(_ db: inout XSDatabase, _ path: String, _ events: inout XSEventQueue) throws(XSError) {
        do {
            _ = try getNode(&db, path, .write)
        } catch .ENOENT {
            let node = try create(&db, path, value: [])
            events.append(XSPendingEvent(path: path, exact: false, nodePerms: node.perms, parentPerms: try parentPerms(&db, path)))
        }
    }

    func rm(_ db: inout XSDatabase, _ path: String, _ events: inout XSEventQueue) throws(XSError) {
        let node: XSNode
        do {
            node = try getNode(&db, path, .write)
        } catch .ENOENT {
            // Already gone: fine if the parent exists.
            if try db.get(XSPath.parent(path)) != nil { return }
            throw .ENOENT
        }
        if path == "/" { throw .EINVAL }
        guard var parent = try db.get(XSPath.parent(path)) else { throw .EINVAL }
        events.append(XSPendingEvent(path: path, exact: false, nodePerms: node.perms, parentPerms: parent.perms))
        try deleteTree(&db, path, node, parentPerms: parent.perms, top: true, &events)
        if let i = parent.children.firstIndex(of: XSPath.basename(path)) {
            parent.children.remove(at: i)
        }
        try db.put(XSPath.parent(path), parent)
    }

    /// Deletes every subtree whose top node `domid` owns (a released domain).
    func removeOwned(by domid: UInt32, _ db: inout XSDatabase, _ events: inout XSEventQueue) {
        var doomed: [String] = []
        func walk(_ path: String) {
            guard let node = db.store.nodes[path] else { return }
            if path != "/" && node.perms.first?.domid == domid {
                doomed.append(path)
                return
            }
            for c in node.children { walk(XSPath.join(path, c)) }
        }
        walk("/")
        for path in doomed {
            try? rm(&db, path, &events)
        }
    }

    /// delete_node: children first; each removed descendant fires the
    /// watches on exactly its path (the top one fired already).
    private func deleteTree(_ db: inout XSDatabase, _ path: String, _ node: XSNode, parentPerms: [XSPermission], top: Bool, _ events: inout XSEventQueue) throws(XSError) {
        for child in node.children {
            let childPath = XSPath.join(path, child)
            if let c = try db.get(childPath) {
                try deleteTree(&db, childPath, c, parentPerms: node.perms, top: false, &events)
            }
        }
        if !top {
            events.append(XSPendingEvent(path: path, exact: true, nodePerms: node.perms, parentPerms: parentPerms))
        }
        try db.put(path, nil)
    }

    func directory(_ db: inout XSDatabase, _ path: String) throws(XSError) -> XSNode {
        try getNode(&db, path, .read)
    }

    func getPerms(_ db: inout XSDatabase, _ path: String) throws(XSError) -> [XSPermission] {
        try getNode(&db, path, .read).perms
    }

    func setPerms(_ db: inout XSDatabase, _ path: String, _ perms: [XSPermission], _ events: inout XSEventQueue) throws(XSError) {
        // A node's owner must be a domain that exists (XS_PERM_IGNORE on p[0]).
        if let existing = existingDomains, !existing.contains(perms[0].domid) { throw .ENOENT }
        var node = try getNode(&db, path, [.write, .owner])
        // Unprivileged domains may not change the owner.
        if !caller.privileged, perms[0].domid != node.perms.first?.domid { throw .EPERM }
        let oldNode = node
        node.perms = perms
        try checkSize(node)
        try put(&db, path, node, old: oldNode)
        events.append(XSPendingEvent(path: path, exact: false, nodePerms: perms, parentPerms: try parentPerms(&db, path), oldPerms: oldNode.perms))
    }
}
