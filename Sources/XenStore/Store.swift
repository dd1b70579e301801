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

/// Hands out node generations; one per server, shared by its transactions.
final class GenerationCounter {
    private(set) var last: UInt64 = 0
    func next() -> UInt64 { last += 1; return last }
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
    /// Permissions of later changes to the same path merged into this event.
    var morePerms: [[XSPermission]] = []

    var allPerms: [[XSPermission]] {
        [oldPerms, nodePerms, parentPerms].compactMap { $0 } + morePerms
    }
}

extension Array where Element == XSPendingEvent {
    /// A transaction's events, one per path (as xenstored queues them): a
    /// path changed several times fires once, for every watch any change reached.
    func mergedByPath() -> [XSPendingEvent] {
        var result: [XSPendingEvent] = []
        var index: [String: Int] = [:]
        for e in self {
            if let i = index[e.path] {
                result[i].exact = result[i].exact && e.exact
                result[i].morePerms += e.allPerms
            } else {
                index[e.path] = result.count
                result.append(e)
            }
        }
        return result
    }
}

/// The tree as one caller sees it: the live store, or a transaction's
/// snapshot that also records what it read and wrote.
struct XSDatabase {
    var nodes: [String: XSNode]
    let counter: GenerationCounter
    /// Transactions only: generation of each node when first touched (0: absent).
    var accessed: [String: UInt64]? = nil
    var modified: Set<String> = []

    static func fresh(counter: GenerationCounter) -> XSDatabase {
        // As xenstored's setup_structure: "/", "/tool", "/tool/xenstored", all n0.
        let perms = [XSPermission(domid: 0, .none)]
        var db = XSDatabase(nodes: [:], counter: counter)
        db.install("/", XSNode(perms: perms, children: ["tool"]))
        db.install("/tool", XSNode(perms: perms, children: ["xenstored"]))
        db.install("/tool/xenstored", XSNode(perms: perms))
        return db
    }

    /// A snapshot for a transaction.
    func snapshot() -> XSDatabase {
        var s = self
        s.accessed = [:]
        s.modified = []
        return s
    }

    private mutating func touch(_ path: String) {
        if accessed != nil, accessed![path] == nil {
            accessed![path] = nodes[path]?.generation ?? 0
        }
    }

    mutating func get(_ path: String) -> XSNode? {
        touch(path)
        return nodes[path]
    }

    mutating func put(_ path: String, _ node: XSNode?) {
        touch(path)
        modified.insert(path)
        install(path, node)
    }

    /// Stores (or removes) a node with a new generation, keeping the
    /// per-owner counts; records nothing for a transaction.
    mutating func install(_ path: String, _ node: XSNode?) {
        if let owner = nodes[path]?.perms.first?.domid { owned[owner, default: 1] -= 1 }
        if var n = node {
            n.generation = counter.next()
            nodes[path] = n
            if let owner = n.perms.first?.domid { owned[owner, default: 0] += 1 }
        } else {
            nodes.removeValue(forKey: path)
        }
    }

    /// How many nodes each domain owns (quota_nb_entry_per_domain).
    private(set) var owned: [UInt32: Int] = [:]

    var nodeCount: Int { nodes.count }
}

/// The operations of the protocol on a database, for one caller. Errors are
/// the protocol's; watch events go to `events`.
struct XSOperations {
    var caller: XSCaller
    /// quota_max_entry_size: the largest node an unprivileged caller may write.
    var maxEntrySize = 2048
    /// quota_nb_entry_per_domain: how many nodes an unprivileged domain may own.
    var maxEntriesPerDomain = 1000
    /// Domains that may own nodes (nil: any).
    var existingDomains: Set<UInt32>? = nil

    /// get_node: the node if the caller has `need` on it; otherwise ENOENT or
    /// EACCES, chosen so that the caller learns nothing it may not read.
    func getNode(_ db: inout XSDatabase, _ path: String, _ need: XSPermission.Access) throws(XSError) -> XSNode {
        guard XSPath.isValid(path, privileged: caller.privileged) else { throw .EINVAL }
        let err: XSError
        if let n = db.get(path) {
            if caller.access(n.perms).isSuperset(of: need) { return n }
            err = .EACCES
        } else {
            err = .ENOENT
        }
        throw errnoFromParents(&db, path, err, need)
    }

    /// errno_from_parents: the error stands only if the nearest existing
    /// ancestor grants some of `need`; otherwise EACCES.
    func errnoFromParents(_ db: inout XSDatabase, _ path: String, _ err: XSError, _ need: XSPermission.Access) -> XSError {
        var name = path
        var node: XSNode?
        repeat {
            name = XSPath.parent(name)
            node = db.get(name)
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

    /// construct_node + create_node: creates `path` and any missing parents.
    /// New nodes inherit their parent's permissions; an unprivileged caller
    /// becomes their owner.
    private func create(_ db: inout XSDatabase, _ path: String, value: [UInt8]) throws(XSError) -> XSNode {
        var missing: [String] = [path]
        var parentName = XSPath.parent(path)
        var parent: XSNode
        while true {
            if let p = db.get(parentName) { parent = p; break }
            missing.append(parentName)
            parentName = XSPath.parent(parentName)
        }
        var created = XSNode(perms: [])
        for name in missing.reversed() {
            if !caller.privileged && db.owned[caller.domid, default: 0] >= maxEntriesPerDomain { throw .ENOSPC }
            parent.children.append(XSPath.basename(name))
            try checkSize(parent)
            db.put(parentName, parent)
            var node = XSNode(perms: parent.perms)
            if !caller.privileged, !node.perms.isEmpty { node.perms[0].domid = caller.domid }
            if name == path { node.value = value }
            try checkSize(node)
            db.put(name, node)
            created = node
            parent = node
            parentName = name
        }
        return created
    }

    private func parentPerms(_ db: inout XSDatabase, _ path: String) -> [XSPermission]? {
        db.get(XSPath.parent(path))?.perms
    }

    func read(_ db: inout XSDatabase, _ path: String) throws(XSError) -> [UInt8] {
        try getNode(&db, path, .read).value
    }

    func write(_ db: inout XSDatabase, _ path: String, _ value: [UInt8], _ events: inout [XSPendingEvent]) throws(XSError) {
        let node: XSNode
        do {
            var n = try getNode(&db, path, .write)
            n.value = value
            try checkSize(n)
            db.put(path, n)
            node = n
        } catch .ENOENT {
            node = try create(&db, path, value: value)
        }
        events.append(XSPendingEvent(path: path, exact: false, nodePerms: node.perms, parentPerms: parentPerms(&db, path)))
    }

    func mkdir(_ db: inout XSDatabase, _ path: String, _ events: inout [XSPendingEvent]) throws(XSError) {
        do {
            _ = try getNode(&db, path, .write)
        } catch .ENOENT {
            let node = try create(&db, path, value: [])
            events.append(XSPendingEvent(path: path, exact: false, nodePerms: node.perms, parentPerms: parentPerms(&db, path)))
        }
    }

    func rm(_ db: inout XSDatabase, _ path: String, _ events: inout [XSPendingEvent]) throws(XSError) {
        let node: XSNode
        do {
            node = try getNode(&db, path, .write)
        } catch .ENOENT {
            // Already gone: fine if the parent exists.
            if db.get(XSPath.parent(path)) != nil { return }
            throw .ENOENT
        }
        if path == "/" { throw .EINVAL }
        guard var parent = db.get(XSPath.parent(path)) else { throw .EINVAL }
        events.append(XSPendingEvent(path: path, exact: false, nodePerms: node.perms, parentPerms: parent.perms))
        deleteTree(&db, path, node, parentPerms: parent.perms, top: true, &events)
        if let i = parent.children.firstIndex(of: XSPath.basename(path)) {
            parent.children.remove(at: i)
        }
        db.put(XSPath.parent(path), parent)
    }

    /// Deletes every subtree whose top node `domid` owns (a released domain).
    func removeOwned(by domid: UInt32, _ db: inout XSDatabase, _ events: inout [XSPendingEvent]) {
        var doomed: [String] = []
        func walk(_ path: String) {
            guard let node = db.nodes[path] else { return }
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
    private func deleteTree(_ db: inout XSDatabase, _ path: String, _ node: XSNode, parentPerms: [XSPermission], top: Bool, _ events: inout [XSPendingEvent]) {
        for child in node.children {
            let childPath = XSPath.join(path, child)
            if let c = db.get(childPath) {
                deleteTree(&db, childPath, c, parentPerms: node.perms, top: false, &events)
            }
        }
        if !top {
            events.append(XSPendingEvent(path: path, exact: true, nodePerms: node.perms, parentPerms: parentPerms))
        }
        db.put(path, nil)
    }

    func directory(_ db: inout XSDatabase, _ path: String) throws(XSError) -> XSNode {
        try getNode(&db, path, .read)
    }

    func getPerms(_ db: inout XSDatabase, _ path: String) throws(XSError) -> [XSPermission] {
        try getNode(&db, path, .read).perms
    }

    func setPerms(_ db: inout XSDatabase, _ path: String, _ perms: [XSPermission], _ events: inout [XSPendingEvent]) throws(XSError) {
        // A node's owner must be a domain that exists (XS_PERM_IGNORE on p[0]).
        if let existing = existingDomains, !existing.contains(perms[0].domid) { throw .ENOENT }
        var node = try getNode(&db, path, [.write, .owner])
        // Unprivileged domains may not change the owner.
        if !caller.privileged, perms[0].domid != node.perms.first?.domid { throw .EPERM }
        let old = node.perms
        node.perms = perms
        try checkSize(node)
        db.put(path, node)
        events.append(XSPendingEvent(path: path, exact: false, nodePerms: perms, parentPerms: parentPerms(&db, path), oldPerms: old))
    }
}
