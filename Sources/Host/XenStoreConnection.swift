import EventLoop
import XenStore

/// `XenStoreAccess` over the XenStore module's libxenstore client: the
/// connection the backends use under Xen and on SimHost alike (on SimHost,
/// a domain socket of the embedded xenstored makes it act as a guest).
public final class XenStoreConnection: XenStoreAccess {
    public let client: XenStore
    private var nextToken = 0
    private let tokenPrefix: String

    public init(_ client: XenStore) {
        self.client = client
        tokenPrefix = "xenvfb-\(UInt(bitPattern: ObjectIdentifier(client).hashValue))-"
    }

    /// Opens a connection at `socketPath` (nil: where libxenstore looks) with watches on `loop`.
    public convenience init(socketPath: String? = nil, loop: EventLoop) throws {
        self.init(try XenStore(socketPath: socketPath, loop: loop))
    }

    public func read(_ path: String) throws -> String? { try client.readIfPresent(path) }
    public func write(_ path: String, _ value: String) throws { try client.write(path, value) }
    public func mkdir(_ path: String) throws { try client.mkdir(path) }
    public func remove(_ path: String) throws { try client.rm(path) }

    public func directory(_ path: String) throws -> [String] {
        do { return try client.directory(path) } catch { if error.isNotFound { return [] }; throw error }
    }

    public func setPermissions(_ path: String, _ permissions: [String]) throws {
        let perms = try permissions.map { text throws -> XSPermission in
            guard let p = XSPermission(wire: text) else { throw XenStoreAccessError.invalid(text) }
            return p
        }
        try client.setPermissions(path, perms)
    }

    public func watch(_ path: String, _ handler: @escaping (String) -> Void) throws -> XenStoreWatch {
        nextToken += 1
        let token = tokenPrefix + String(nextToken)
        try client.watch(path, token: token) { changed, _ in handler(changed) }
        return XenStoreWatch { [weak self] in try? self?.client.unwatch(path, token: token) }
    }

    public func transaction(_ body: (XenStoreAccess) throws -> Void) throws {
        for _ in 0..<100 {
            let tx = try client.transactionStart()
            do {
                try body(TransactionView(client: client, tx: tx))
            } catch {
                try? client.transactionEnd(tx, abort: true)
                if let e = error as? XenStoreError, e.isConflict { continue }
                throw error
            }
            do {
                try client.transactionEnd(tx)
                return
            } catch {
                if error.isConflict { continue }
                throw error
            }
        }
        throw XenStoreError.tooManyRetries(attempts: 100)
    }
}

/// The operations of one open transaction.
private final class TransactionView: XenStoreAccess {
    let client: XenStore
    let tx: XenStore.Transaction
    init(client: XenStore, tx: XenStore.Transaction) { self.client = client; self.tx = tx }

    func read(_ path: String) throws -> String? { try client.readIfPresent(path, in: tx) }
    func write(_ path: String, _ value: String) throws { try client.write(path, value, in: tx) }
    func mkdir(_ path: String) throws { try client.mkdir(path, in: tx) }
    func remove(_ path: String) throws { try client.rm(path, in: tx) }
    func directory(_ path: String) throws -> [String] {
        do { return try client.directory(path, in: tx) } catch { if error.isNotFound { return [] }; throw error }
    }
    func setPermissions(_ path: String, _ permissions: [String]) throws {
        let perms = try permissions.map { text throws -> XSPermission in
            guard let p = XSPermission(wire: text) else { throw XenStoreAccessError.invalid(text) }
            return p
        }
        try client.setPermissions(path, perms, in: tx)
    }
    func watch(_ path: String, _ handler: @escaping (String) -> Void) throws -> XenStoreWatch {
        throw XenStoreAccessError.invalid("watch inside a transaction")
    }
    func transaction(_ body: (XenStoreAccess) throws -> Void) throws { try body(self) }
}
