#if canImport(Glibc)
import Glibc
#endif
import Support

/// A simulated guest's grant table (version 1, xen/grant_table.h): an array
/// of `struct grant_entry_v1 { u16 flags; u16 domid; u32 frame; }` in the
/// file `dom<N>.grants` of the machine directory, which the guest writes and
/// `SimHost.mapGrants` reads, as Xen reads a guest's shared grant table.
///
/// This is the guest side's `gnttab_grant_foreign_access` and
/// `gnttab_end_foreign_access` (GuestKit's frontends use it). Because the
/// mapping side checks every entry against the table, a frontend can let a
/// backend map only frames of its own memory that it granted to that
/// backend's domain; `setEntry` writes any entry at all, for tests of what a
/// hostile guest's table does to a backend.
///
/// Not simulated: Xen's in-use flags (`GTF_reading`/`GTF_writing`), which
/// stop a guest from revoking a mapped grant. Here a revoked grant stays
/// mapped until the backend unmaps it, which is what Xen's refusal amounts
/// to as well.
public final class SimGrantTable {
    /// Entries in the table: 32 grant frames of 512, Linux's default for a PV guest.
    public static let entryCount = 16384
    public static let entrySize = 8
    /// References 0 to 7 are reserved (`GNTTAB_NR_RESERVED_ENTRIES`: console, xenstore).
    public static let firstFreeReference: UInt32 = 8
    /// `GTF_permit_access`, the `GTF_type_mask` and `GTF_readonly`.
    public static let permitAccess: UInt16 = 1, typeMask: UInt16 = 3, readonly: UInt16 = 1 << 2

    public let domid: UInt32
    private let table: GuestMapping
    private var used: [Bool]

    init(path: String, domid: UInt32) throws(HostError) {
        self.domid = domid
        let bytes = Self.entryCount * Self.entrySize
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .unavailable("open \(path): \(SystemError("open"))") }
        defer { Glibc.close(fd) }
        guard ftruncate(fd, off_t(bytes)) == 0 else { throw .unavailable("ftruncate \(path): \(SystemError("ftruncate"))") }
        guard let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw .unavailable("mmap \(path): \(SystemError("mmap"))")
        }
        table = GuestMapping(base: p, byteCount: bytes, writable: true) { b, n in munmap(b, n) }
        used = [Bool](repeating: false, count: Self.entryCount)
        for i in 0..<Int(Self.firstFreeReference) { used[i] = true }
    }

    /// Grants domain `to` access to `frame` of this domain's memory; returns
    /// the reference to hand it (`gnttab_grant_foreign_access`). The frame is
    /// not checked here: Xen checks it when the grant is mapped, and so does
    /// `SimHost.mapGrants`.
    public func grantAccess(frame: UInt64, to domid: UInt32, readonly: Bool) throws(HostError) -> UInt32 {
        guard let ref = used.firstIndex(of: false) else {
            throw .invalidArgument("domain \(self.domid): every grant reference is in use (\(Self.entryCount))")
        }
        guard frame <= UInt64(UInt32.max), domid <= UInt32(UInt16.max) else {
            throw .invalidArgument("grant of frame \(frame) to domain \(domid) does not fit a grant_entry_v1")
        }
        used[ref] = true
        setEntry(UInt32(ref), flags: Self.permitAccess | (readonly ? Self.readonly : 0), domid: UInt16(domid), frame: UInt32(frame))
        return UInt32(ref)
    }

    /// Revokes a grant and frees its reference (`gnttab_end_foreign_access`).
    public func endAccess(_ ref: UInt32) {
        guard Int(ref) < Self.entryCount, ref >= Self.firstFreeReference else { return }
        setEntry(ref, flags: 0, domid: 0, frame: 0)
        used[Int(ref)] = false
    }

    /// References handed out and not yet revoked.
    public var grantsInUse: Int { used.filter { $0 }.count - Int(Self.firstFreeReference) }

    /// Writes entry `ref` as given (frame last, flags after a write barrier,
    /// in the order grant_table.h asks of a guest).
    public func setEntry(_ ref: UInt32, flags: UInt16, domid: UInt16, frame: UInt32) {
        let at = Int(ref) * Self.entrySize
        table.store(UInt16(0), at: at)
        table.store(domid, at: at + 2)
        table.store(frame, at: at + 4)
        Barrier.write()
        table.store(flags, at: at)
    }

    /// One entry as a mapping side reads it.
    struct Entry {
        var flags: UInt16
        var domid: UInt16
        var frame: UInt32
    }

    /// Reads a domain's whole table once (one copy: what is checked is what is mapped).
    static func readEntries(path: String, domid: UInt32) throws(HostError) -> [Entry] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .grantMapFailed(domid: domid, ref: 0, reason: "the domain has no grant table (\(SystemError("open \(path)")))") }
        defer { Glibc.close(fd) }
        let bytes = entryCount * entrySize
        var raw = [UInt8](repeating: 0, count: bytes)
        let n = raw.withUnsafeMutableBytes { pread(fd, $0.baseAddress, bytes, 0) }
        guard n >= 0 else { throw .grantMapFailed(domid: domid, ref: 0, reason: "\(SystemError("pread \(path)"))") }
        return raw.withUnsafeBytes { buffer in
            let r = ByteReader(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            return (0..<(n / entrySize)).map { i in
                Entry(flags: r.load(UInt16.self, at: i * entrySize) ?? 0, domid: r.load(UInt16.self, at: i * entrySize + 2) ?? 0,
                      frame: r.load(UInt32.self, at: i * entrySize + 4) ?? 0)
            }
        }
    }
}
