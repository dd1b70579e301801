#if canImport(Glibc)
import Glibc
#endif
import CShims
import Support

/// A simulated hypervisor on one Linux machine, shared by every process that
/// names the same directory (the way domains share one Xen):
///
/// - `dom<N>.mem` is domain N's memory; guest frame n is at offset n×4096.
///   Only frames inside the file (the domain's memory size) can be mapped,
///   like Xen's foreign map refuses frames a domain does not own.
/// - `dom<N>.grants` is domain N's grant table (`SimGrantTable`): the
///   entries it wrote to let another domain map its frames. A grant map
///   reads it, like Xen, and maps only what it allows.
/// - `evtchn/d<N>-<port>` is a Unix datagram socket per event-channel port;
///   `evtchn/d<N>-<port>.info` says whom it is bound to. A notification is
///   one datagram to the other end's socket.
///
/// The directory lives in /dev/shm when it exists, so memory is tmpfs-backed.
/// Xenstore is not simulated here: it is the project's own xenstored.
public final class SimHost: Host {
    public let directory: String
    public let domid: UInt32

    /// Joins the simulated machine at `directory` as domain `domid`.
    public init(directory: String, domid: UInt32 = 0) {
        self.directory = directory
        self.domid = domid
    }

    /// Creates a fresh, empty simulated machine directory (mkdtemp).
    public static func makeDirectory(prefix: String = "xenvfb-sim") throws(HostError) -> String {
        var base = "/tmp"
        var st = stat()
        if stat("/dev/shm", &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, access("/dev/shm", W_OK) == 0 { base = "/dev/shm" }
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw .unavailable("mkdtemp in \(base): \(SystemError("mkdtemp"))") }
        let dir = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard mkdir(dir + "/evtchn", 0o700) == 0 else { throw .unavailable("mkdir \(dir)/evtchn: \(SystemError("mkdir"))") }
        return dir
    }

    /// Removes a machine directory made by `makeDirectory` and what is in it.
    public static func removeDirectory(_ dir: String) {
        for sub in [dir + "/evtchn", dir] {
            if let d = opendir(sub) {
                while let e = readdir(d) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                    if name == "." || name == ".." || name == "evtchn" { continue }
                    unlink(sub + "/" + name)
                }
                closedir(d)
            }
        }
        rmdir(dir + "/evtchn")
        rmdir(dir)
    }

    func memoryPath(_ domid: UInt32) -> String { "\(directory)/dom\(domid).mem" }

    /// Creates this domain's memory (`bytes`, a multiple of 4096) and maps it
    /// read-write: the guest side's view of its own RAM.
    public func createMemory(bytes: Int) throws(HostError) -> SimGuestMemory {
        guard bytes > 0, bytes % guestPageSize == 0 else { throw .invalidArgument("memory size \(bytes) is not a positive multiple of 4096") }
        let path = memoryPath(domid)
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .unavailable("open \(path): \(SystemError("open"))") }
        defer { Glibc.close(fd) }
        guard ftruncate(fd, off_t(bytes)) == 0 else { throw .unavailable("ftruncate \(path): \(SystemError("ftruncate"))") }
        guard let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw .unavailable("mmap \(path): \(SystemError("mmap"))")
        }
        let mapping = GuestMapping(base: p, byteCount: bytes, writable: true) { b, n in munmap(b, n) }
        return SimGuestMemory(domid: domid, mapping: mapping)
    }

    public func openEventChannels() throws(HostError) -> EventChannels {
        try SimEventChannels(directory: directory + "/evtchn", domid: domid)
    }

    public func mapForeign(domid: UInt32, frames: [UInt64], writable: Bool) throws(HostError) -> GuestMapping {
        guard !frames.isEmpty else { throw .invalidArgument("no frames to map") }
        return try mapFrames(domid: domid, frames: frames, writable: writable) { frame, owned in
            .mapFailed(domid: domid, frame: frame, reason: "frame not owned by the domain (it has \(owned) frames)")
        }
    }

    /// Reads domain `domid`'s grant table (`SimGrantTable`) and maps the
    /// frames behind `refs`, as Xen's grant map does: each entry must be in
    /// the table, permit access, name this domain, allow writing when
    /// `writable`, and name a frame inside the granting domain's memory.
    public func mapGrants(domid: UInt32, refs: [UInt32], writable: Bool) throws(HostError) -> GuestMapping {
        guard !refs.isEmpty else { throw .invalidArgument("no grant references to map") }
        let table = try SimGrantTable.readEntries(path: grantTablePath(domid), domid: domid)
        var frames: [UInt64] = []
        frames.reserveCapacity(refs.count)
        var frameRef: [UInt64: UInt32] = [:]
        for ref in refs {
            guard Int(ref) < table.count else {
                throw .grantMapFailed(domid: domid, ref: ref, reason: "beyond the grant table (\(table.count) entries)")
            }
            let e = table[Int(ref)]
            guard e.flags & SimGrantTable.typeMask == SimGrantTable.permitAccess else {
                throw .grantMapFailed(domid: domid, ref: ref, reason: "not a grant (flags \(e.flags))")
            }
            guard UInt32(e.domid) == self.domid else {
                throw .grantMapFailed(domid: domid, ref: ref, reason: "granted to domain \(e.domid), not \(self.domid)")
            }
            guard !writable || e.flags & SimGrantTable.readonly == 0 else {
                throw .grantMapFailed(domid: domid, ref: ref, reason: "read-only grant mapped for writing")
            }
            frames.append(UInt64(e.frame))
            frameRef[UInt64(e.frame)] = ref
        }
        return try mapFrames(domid: domid, frames: frames, writable: writable) { frame, owned in
            .grantMapFailed(domid: domid, ref: frameRef[frame] ?? 0,
                            reason: "grants frame \(frame), which the domain does not own (it has \(owned) frames)")
        }
    }

    /// Maps `frames` of `domid`'s memory file into one reserved range;
    /// `notOwned` names the error for a frame outside the file.
    private func mapFrames(domid: UInt32, frames: [UInt64], writable: Bool,
                           notOwned: (UInt64, UInt64) -> HostError) throws(HostError) -> GuestMapping {
        let (bytes, overflow) = frames.count.multipliedReportingOverflow(by: guestPageSize)
        guard !overflow else { throw .invalidArgument("\(frames.count) frames") }
        let path = memoryPath(domid)
        let fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else { throw .mapFailed(domid: domid, frame: frames[0], reason: "no such domain (\(SystemError("open \(path)")))") }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .mapFailed(domid: domid, frame: frames[0], reason: "\(SystemError("fstat"))") }
        let owned = UInt64(st.st_size) / UInt64(guestPageSize)
        if let bad = frames.first(where: { $0 >= owned }) { throw notOwned(bad, owned) }
        // Reserve the address range, then place each frame in it, as a foreign map does.
        let prot = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        guard let base = mmap(nil, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), base != MAP_FAILED else {
            throw .mapFailed(domid: domid, frame: frames[0], reason: "\(SystemError("mmap"))")
        }
        for (i, frame) in frames.enumerated() {
            let at = base + i * guestPageSize
            let p = mmap(at, guestPageSize, prot, MAP_SHARED | MAP_FIXED, fd, off_t(frame) * off_t(guestPageSize))
            if p == MAP_FAILED || p != at {
                let err = SystemError("mmap")
                munmap(base, bytes)
                throw .mapFailed(domid: domid, frame: frame, reason: "\(err)")
            }
        }
        return GuestMapping(base: base, byteCount: bytes, writable: writable) { b, n in munmap(b, n) }
    }

    func grantTablePath(_ domid: UInt32) -> String { "\(directory)/dom\(domid).grants" }

    /// Creates this domain's grant table (empty: nothing granted), mapped
    /// read-write: the guest side's `gnttab`.
    public func createGrantTable() throws(HostError) -> SimGrantTable {
        try SimGrantTable(path: grantTablePath(domid), domid: domid)
    }
}

/// A simulated guest's own RAM, mapped read-write, with a simple page
/// allocator (frames handed out upwards from frame 1; frame 0 stays unused,
/// as real guests rarely give it away).
public final class SimGuestMemory {
    public let domid: UInt32
    public let mapping: GuestMapping
    public var frameCount: Int { mapping.byteCount / guestPageSize }
    private var nextFrame = 1

    init(domid: UInt32, mapping: GuestMapping) {
        self.domid = domid
        self.mapping = mapping
    }

    /// Allocates `count` consecutive zeroed frames; returns the first frame number.
    public func allocate(frames count: Int) throws(HostError) -> UInt64 {
        guard count > 0, count <= frameCount - nextFrame else {
            throw .invalidArgument("domain \(domid) out of memory: \(count) frames wanted, \(frameCount - nextFrame) free")
        }
        let first = nextFrame
        nextFrame += count
        _ = mapping.withMutableBytes(at: first * guestPageSize, count: count * guestPageSize) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
        return UInt64(first)
    }

    /// Byte offset of `frame` in `mapping`.
    public func offset(ofFrame frame: UInt64) -> Int { Int(frame) * guestPageSize }
}
