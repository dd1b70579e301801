#if canImport(Glibc)
import Glibc
#endif
import CShims
import CXen
import Support

/// The real hypervisor: libxenforeignmemory for mapping guest frames,
/// libxengnttab for mapping grants and libxenevtchn for event channels.
/// Needs dom0 (or a stub domain) with /dev/xen/privcmd and /dev/xen/evtchn;
/// without them `init` throws `HostError.unavailable` saying which device is
/// missing. /dev/xen/gntdev (module xen-gntdev) is needed only by devices
/// that map grants (vdispl): without it those fail, saying so.
public final class XenHost: Host {
    public let domid: UInt32
    private let fmem: ForeignMemoryHandle
    /// Opened at start (before privileges are dropped), or why not.
    private var gnttab: Result<GrantTableHandle, HostError>

    public init(domid: UInt32 = 0) throws(HostError) {
        self.domid = domid
        fmem = try ForeignMemoryHandle()
        do throws(HostError) {
            gnttab = .success(try GrantTableHandle())
        } catch {
            gnttab = .failure(error)
        }
    }

    public func mapGrants(domid: UInt32, refs: [UInt32], writable: Bool) throws(HostError) -> GuestMapping {
        try gnttab.get().map(domid: domid, refs: refs, writable: writable)
    }

    /// Event-channel handles opened ahead of time (`preopenEventChannels`).
    private var pool: [XenEventChannels] = []
    private var poolOnly = false

    /// Opens `count` event-channel handles now, for devices that connect
    /// later, and from then on hands out only those (each comes back when
    /// its device closes it). A device model that drops privileges
    /// (`-runas`) can no longer open /dev/xen/evtchn: so open them before.
    public func preopenEventChannels(_ count: Int) throws(HostError) {
        for _ in 0..<count { pool.append(try XenEventChannels()) }
        poolOnly = true
    }

    public func openEventChannels() throws(HostError) -> EventChannels {
        if let handle = pool.popLast() { return PooledEventChannels(handle, host: self) }
        if poolOnly {
            throw .eventChannel("every pre-opened event-channel handle is in use (\(XenHost.self) opens no more after start-up)")
        }
        return try XenEventChannels()
    }

    fileprivate func giveBack(_ handle: XenEventChannels) { pool.append(handle) }

    public func mapForeign(domid: UInt32, frames: [UInt64], writable: Bool) throws(HostError) -> GuestMapping {
        try fmem.map(domid: domid, frames: frames, writable: writable)
    }
}

/// Names the device a failed open most likely needed.
private func missingDevice(_ what: String, _ device: String) -> HostError {
    let err = SystemError("\(what)")
    var st = stat()
    if stat(device, &st) != 0 {
        return .unavailable("\(what) failed: \(device) does not exist (not running as dom0 under Xen?) [\(err)]")
    }
    return .unavailable("\(what) failed on \(device): \(err)")
}

/// Owns a `xenforeignmemory_handle`; mappings keep it alive until they are unmapped.
final class ForeignMemoryHandle {
    let handle: OpaquePointer

    init() throws(HostError) {
        guard let h = xenforeignmemory_open(nil, 0) else { throw missingDevice("xenforeignmemory_open", "/dev/xen/privcmd") }
        handle = h
    }

    deinit { xenforeignmemory_close(handle) }

    func map(domid: UInt32, frames: [UInt64], writable: Bool) throws(HostError) -> GuestMapping {
        guard !frames.isEmpty else { throw .invalidArgument("no frames to map") }
        let (bytes, overflow) = frames.count.multipliedReportingOverflow(by: guestPageSize)
        guard !overflow else { throw .invalidArgument("\(frames.count) frames") }
        var pfns = frames.map { xen_pfn_t($0) }
        var errs = [Int32](repeating: 0, count: frames.count)
        let prot = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        let p = pfns.withUnsafeMutableBufferPointer { pf in
            errs.withUnsafeMutableBufferPointer { er in
                xenforeignmemory_map(handle, domid, prot, frames.count, pf.baseAddress, er.baseAddress)
            }
        }
        guard let base = p else {
            throw .mapFailed(domid: domid, frame: frames[0], reason: "\(SystemError("xenforeignmemory_map"))")
        }
        if let i = errs.firstIndex(where: { $0 != 0 }) {
            xenforeignmemory_unmap(handle, base, frames.count)
            throw .mapFailed(domid: domid, frame: frames[i], reason: String(cString: strerror(abs(errs[i]))))
        }
        let pages = frames.count
        return GuestMapping(base: base, byteCount: bytes, writable: writable) { [self] b, _ in
            xenforeignmemory_unmap(handle, b, pages)
        }
    }
}

/// Owns a `xengnttab_handle`; mappings keep it alive until they are unmapped.
final class GrantTableHandle {
    let handle: OpaquePointer

    init() throws(HostError) {
        guard let h = xengnttab_open(nil, 0) else { throw missingDevice("xengnttab_open", "/dev/xen/gntdev") }
        handle = h
    }

    deinit { xengnttab_close(handle) }

    /// `xengnttab_map_domain_grant_refs`: all of `refs` from one domain,
    /// contiguous; the kernel fails the whole mapping if Xen refuses one.
    func map(domid: UInt32, refs: [UInt32], writable: Bool) throws(HostError) -> GuestMapping {
        guard !refs.isEmpty else { throw .invalidArgument("no grant references to map") }
        guard refs.count <= Int(UInt32.max / UInt32(guestPageSize)) else { throw .invalidArgument("\(refs.count) grant references") }
        var list = refs
        let prot = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        let p = list.withUnsafeMutableBufferPointer { r in
            xengnttab_map_domain_grant_refs(handle, UInt32(refs.count), domid, r.baseAddress, prot)
        }
        guard let base = p else {
            throw .grantMapFailed(domid: domid, ref: refs[0], reason: "\(SystemError("xengnttab_map_domain_grant_refs of \(refs.count) references"))")
        }
        let count = UInt32(refs.count)
        return GuestMapping(base: base, byteCount: refs.count * guestPageSize, writable: writable) { [self] b, _ in
            xengnttab_unmap(handle, b, count)
        }
    }
}

/// Owns a `xenevtchn_handle`.
final class XenEventChannels: EventChannels {
    private var handle: OpaquePointer?

    init() throws(HostError) {
        guard let h = xenevtchn_open(nil, 0) else { throw missingDevice("xenevtchn_open", "/dev/xen/evtchn") }
        handle = h
        // libxenevtchn opens /dev/xen/evtchn blocking; xenevtchn_pending reads
        // it. Non-blocking, a pending() with nothing pending returns nil
        // instead of stalling the event loop.
        guard cshims_set_nonblocking(xenevtchn_fd(h)) == 0 else {
            let err = SystemError("fcntl(O_NONBLOCK) on the event-channel fd")
            xenevtchn_close(h)
            handle = nil
            throw .eventChannel("\(err)")
        }
    }

    deinit { close() }

    private func h() throws(HostError) -> OpaquePointer {
        guard let h = handle else { throw .eventChannel("handle closed") }
        return h
    }

    var fd: Int32 { handle.map { xenevtchn_fd($0) } ?? -1 }

    func bindInterdomain(remoteDomain: UInt32, remotePort: UInt32) throws(HostError) -> UInt32 {
        let rc = xenevtchn_bind_interdomain(try h(), remoteDomain, remotePort)
        guard rc >= 0 else { throw .eventChannel("bind to port \(remotePort) of domain \(remoteDomain): \(SystemError("xenevtchn_bind_interdomain"))") }
        return UInt32(rc)
    }

    func bindUnbound(remoteDomain: UInt32) throws(HostError) -> UInt32 {
        let rc = xenevtchn_bind_unbound_port(try h(), remoteDomain)
        guard rc >= 0 else { throw .eventChannel("\(SystemError("xenevtchn_bind_unbound_port"))") }
        return UInt32(rc)
    }

    func notify(port: UInt32) throws(HostError) {
        guard xenevtchn_notify(try h(), port) == 0 else { throw .eventChannel("notify port \(port): \(SystemError("xenevtchn_notify"))") }
    }

    func pending() throws(HostError) -> UInt32? {
        let rc = xenevtchn_pending(try h())
        if rc < 0 {
            if errno == EAGAIN { return nil }
            throw .eventChannel("\(SystemError("xenevtchn_pending"))")
        }
        return UInt32(rc)
    }

    func unmask(port: UInt32) throws(HostError) {
        guard xenevtchn_unmask(try h(), port) == 0 else { throw .eventChannel("unmask port \(port): \(SystemError("xenevtchn_unmask"))") }
    }

    func unbind(port: UInt32) throws(HostError) {
        guard xenevtchn_unbind(try h(), port) == 0 else { throw .eventChannel("unbind port \(port): \(SystemError("xenevtchn_unbind"))") }
    }

    func close() {
        if let h = handle { xenevtchn_close(h) }
        handle = nil
    }
}

/// A pre-opened handle lent to one user: closing it unbinds its ports and
/// gives the handle back to the host instead of closing it.
private final class PooledEventChannels: EventChannels {
    private var handle: XenEventChannels?
    private weak var host: XenHost?
    private var bound: Set<UInt32> = []

    init(_ handle: XenEventChannels, host: XenHost) {
        self.handle = handle
        self.host = host
    }

    deinit { close() }

    private func h() throws(HostError) -> XenEventChannels {
        guard let handle else { throw .eventChannel("handle closed") }
        return handle
    }

    var fd: Int32 { handle?.fd ?? -1 }

    func bindInterdomain(remoteDomain: UInt32, remotePort: UInt32) throws(HostError) -> UInt32 {
        let port = try h().bindInterdomain(remoteDomain: remoteDomain, remotePort: remotePort)
        bound.insert(port)
        return port
    }

    func bindUnbound(remoteDomain: UInt32) throws(HostError) -> UInt32 {
        let port = try h().bindUnbound(remoteDomain: remoteDomain)
        bound.insert(port)
        return port
    }

    func notify(port: UInt32) throws(HostError) { try h().notify(port: port) }
    func pending() throws(HostError) -> UInt32? { try h().pending() }
    func unmask(port: UInt32) throws(HostError) { try h().unmask(port: port) }

    func unbind(port: UInt32) throws(HostError) {
        try h().unbind(port: port)
        bound.remove(port)
    }

    func close() {
        guard let handle else { return }
        self.handle = nil
        for port in bound { try? handle.unbind(port: port) }
        bound.removeAll()
        // Notifications still queued for the old ports are drained, so the
        // next user does not see them.
        while (try? handle.pending()) != nil {}
        if let host { host.giveBack(handle) } else { handle.close() }
    }
}
