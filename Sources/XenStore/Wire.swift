#if canImport(Glibc)
import Glibc
#endif
// The xenstore wire protocol (xen/io/xs_wire.h) and the rules on paths and
// permissions that xenstored applies. Shared by the server and the tests.

/// Message types of the xenstore wire protocol (`enum xsd_sockmsg_type`).
public enum XSMessageType: UInt32, Sendable, CaseIterable {
    case control = 0, directory, read, getPerms, watch, unwatch,
         transactionStart, transactionEnd, introduce, release, getDomainPath,
         write, mkdir, rm, setPerms, watchEvent, error, isDomainIntroduced,
         resume, setTarget
    case resetWatches = 21, directoryPart = 22

    public var name: String {
        switch self {
        case .control: "CONTROL"
        case .directory: "DIRECTORY"
        case .read: "READ"
        case .getPerms: "GET_PERMS"
        case .watch: "WATCH"
        case .unwatch: "UNWATCH"
        case .transactionStart: "TRANSACTION_START"
        case .transactionEnd: "TRANSACTION_END"
        case .introduce: "INTRODUCE"
        case .release: "RELEASE"
        case .getDomainPath: "GET_DOMAIN_PATH"
        case .write: "WRITE"
        case .mkdir: "MKDIR"
        case .rm: "RM"
        case .setPerms: "SET_PERMS"
        case .watchEvent: "WATCH_EVENT"
        case .error: "ERROR"
        case .isDomainIntroduced: "IS_DOMAIN_INTRODUCED"
        case .resume: "RESUME"
        case .setTarget: "SET_TARGET"
        case .resetWatches: "RESET_WATCHES"
        case .directoryPart: "DIRECTORY_PART"
        }
    }
}

/// Protocol limits from xs_wire.h.
public enum XSLimits {
    /// Largest payload of one message; a bigger one gets the connection closed.
    public static let payloadMax = 4096
    /// Longest absolute path.
    public static let absPathMax = 3072
    /// Longest path relative to a domain's home (/local/domain/N/...).
    public static let relPathMax = 2048
    /// Size of `struct xsd_sockmsg`.
    public static let headerSize = 16
}

/// The errors of `xsd_errors[]`, in the protocol's spelling ("EINVAL"...).
public enum XSError: Int32, Error, Sendable, CaseIterable {
    case EINVAL = 22, EACCES = 13, EEXIST = 17, EISDIR = 21, ENOENT = 2, ENOMEM = 12,
         ENOSPC = 28, EIO = 5, ENOTEMPTY = 39, ENOSYS = 38, EROFS = 30, EBUSY = 16,
         EAGAIN = 11, EISCONN = 106, E2BIG = 7, EPERM = 1

    public var name: String { "\(self)" }

    /// The errno name for any errno value ("errno 99" for names outside xenstore's table).
    public static func name(ofErrno e: Int32) -> String {
        XSError(rawValue: e)?.name ?? "errno \(e)"
    }
}

/// One entry of a node's permission list: a domain and what it may do.
/// The first entry names the owner and is the default for every domain not
/// listed; the owner (and dom0) may always read and write.
public struct XSPermission: Equatable, Hashable, Sendable, CustomStringConvertible {
    public struct Access: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let none: Access = []
        public static let read = Access(rawValue: 1)
        public static let write = Access(rawValue: 2)
        public static let both: Access = [.read, .write]
        /// Internal: full control (owner or privileged).
        public static let owner = Access(rawValue: 8)
    }

    public var domid: UInt32
    public var access: Access

    public init(domid: UInt32, _ access: Access) {
        self.domid = domid
        self.access = access
    }

    /// The wire form: `n5`, `r0`, `w7`, `b3`.
    public var description: String {
        let letter: Character
        switch access.intersection(.both) {
        case .read: letter = "r"
        case .write: letter = "w"
        case .both: letter = "b"
        default: letter = "n"
        }
        return "\(letter)\(domid)"
    }

    /// Parses the wire form (`r5`...); nil for anything else.
    public init?(wire: String) {
        var s = Substring(wire)
        guard let c = s.popFirst() else { return nil }
        switch c {
        case "n": access = .none
        case "r": access = .read
        case "w": access = .write
        case "b": access = .both
        default: return nil
        }
        guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let id = UInt32(s) else { return nil }
        domid = id
    }
}

/// Path rules of xenstored (is_valid_nodename, canonicalize).
public enum XSPath {
    /// The home of domain `domid`, against which relative paths resolve.
    public static func domainPath(_ domid: UInt32) -> String { "/local/domain/\(domid)" }

    /// is_valid_nodename's character set: [0-9A-Za-z/_@-].
    private static let allowed: [Bool] = (0..<256).map { c in
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
            || c == 0x2d || c == 0x2f || c == 0x5f || c == 0x40
    }

    /// Resolves `path` as a request from `domid` would: relative paths go
    /// under /local/domain/<domid>; "@..." and absolute paths stay as they are.
    public static func canonicalize(_ path: String, domid: UInt32) -> String {
        if path.hasPrefix("/") || path.hasPrefix("@") { return path }
        return domainPath(domid) + "/" + path
    }

    /// Whether an absolute path is acceptable: starts with `/`, no `//`, no
    /// trailing `/`, allowed characters only, within the length limits
    /// (for unprivileged callers the part below /local/domain/N/ counts
    /// against the relative limit).
    public static func isValid(_ path: String, privileged: Bool = true) -> Bool {
        var path = path
        // One pass over the bytes: a guest sends these by the hundred thousand.
        return path.withUTF8 { u in
            guard u.first == 0x2f else { return false }
            if u.count > 1 && u[u.count - 1] == 0x2f { return false }
            if u.count > XSLimits.absPathMax { return false }
            let ok = allowed.withUnsafeBufferPointer { allowed in
                var previous: UInt8 = 0
                var i = 0
                while i < u.count {
                    let c = u[i]
                    if !allowed[Int(c)] || (c == 0x2f && previous == 0x2f) { return false }
                    previous = c
                    i += 1
                }
                return true
            }
            if !ok { return false }
            if !privileged {
                // The part below /local/domain/<digits>/ counts against the relative limit.
                var rel = u.count
                let prefix = domainPrefix
                if u.count > prefix.count, prefix.indices.allSatisfy({ u[$0] == prefix[$0] }) {
                    var i = prefix.count
                    while i < u.count && u[i] >= 0x30 && u[i] <= 0x39 { i += 1 }
                    if i > prefix.count && i < u.count && u[i] == 0x2f { rel = u.count - i - 1 }
                }
                if rel > XSLimits.relPathMax { return false }
            }
            return true
        }
    }

    private static let domainPrefix = Array("/local/domain/".utf8)

    /// The parent of an absolute path ("/" for top-level nodes).
    public static func parent(_ path: String) -> String {
        var path = path
        return path.withUTF8 { u in
            guard let i = lastSlash(u), i != 0 else { return "/" }
            return String(decoding: UnsafeBufferPointer(rebasing: u[0..<i]), as: UTF8.self)
        }
    }

    /// The last component of an absolute path other than "/".
    public static func basename(_ path: String) -> String {
        var path = path
        return path.withUTF8 { u in
            guard let i = lastSlash(u) else { return String(decoding: u, as: UTF8.self) }
            return String(decoding: UnsafeBufferPointer(rebasing: u[(i + 1)...]), as: UTF8.self)
        }
    }

    private static func lastSlash(_ u: UnsafeBufferPointer<UInt8>) -> Int? {
        var i = u.count
        while i > 0 {
            i -= 1
            if u[i] == 0x2f { return i }
        }
        return nil
    }

    /// `child` is `parent` or below it ("/" contains everything).
    public static func isChild(_ child: String, of parent: String) -> Bool {
        if parent == "/" { return true }
        guard child.hasPrefix(parent) else { return false }
        let u = child.utf8
        let n = parent.utf8.count
        return u.count == n || u[u.index(u.startIndex, offsetBy: n)] == 0x2f
    }

    public static func join(_ parent: String, _ child: String) -> String {
        parent == "/" ? "/" + child : parent + "/" + child
    }
}

/// One message: header fields and payload (the server's wire codec).
struct XSMessage {
    var type: UInt32
    var reqID: UInt32
    var txID: UInt32
    var payload: [UInt8]

    /// Header (native endian, as struct xsd_sockmsg) followed by the payload.
    func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(XSLimits.headerSize + payload.count)
        for v in [type, reqID, txID, UInt32(payload.count)] {
            withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
        }
        out.append(contentsOf: payload)
        return out
    }
}

extension Array where Element == UInt8 {
    /// Splits a payload at NULs: the NUL-terminated byte strings (bytes after
    /// the last NUL are not included), as xenstored's get_strings does.
    func xsStrings() -> [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var start = 0
        while let i = xsIndexOfNUL(from: start) {
            result.append(self[start..<i])
            start = i + 1
        }
        return result
    }

    /// The index of the first NUL at or after `from` (memchr: payloads are
    /// up to 4 KiB and come by the hundred thousand).
    func xsIndexOfNUL(from: Int = 0) -> Int? {
        guard from < count else { return nil }
        return withUnsafeBufferPointer { buf -> Int? in
            guard let base = buf.baseAddress, let hit = memchr(base + from, 0, buf.count - from) else { return nil }
            return base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
        }
    }
}
