/// The Host seam: everything the hypervisor provides to a device model.
///
/// Backends, the damage engine and displays see only these protocols; `XenHost`
/// (libxenevtchn, libxenforeignmemory, libxengnttab) and `SimHost` (files,
/// Unix sockets and mmap on one Linux machine) are the only places that know
/// which one is real.
public protocol Host: AnyObject {
    /// The domain this process acts as (0 for a device model in dom0).
    var domid: UInt32 { get }

    /// Opens an event-channel handle, like `xenevtchn_open`. A device usually
    /// owns one and watches its `fd` on the event loop.
    func openEventChannels() throws(HostError) -> EventChannels

    /// Maps `frames` of domain `domid` into one contiguous mapping, like
    /// `xenforeignmemory_map`. Fails as a whole if any frame cannot be mapped
    /// (for example a frame the domain does not own).
    func mapForeign(domid: UInt32, frames: [UInt64], writable: Bool) throws(HostError) -> GuestMapping

    /// Maps the pages domain `domid` granted to this domain under `refs`
    /// into one contiguous mapping, like `xengnttab_map_domain_grant_refs`.
    /// Only what the guest granted can be mapped: a reference that is not a
    /// grant to this domain (or, for `writable`, is a read-only grant) fails
    /// the whole call, as does a frame the granting domain does not own.
    func mapGrants(domid: UInt32, refs: [UInt32], writable: Bool) throws(HostError) -> GuestMapping
}

/// An event-channel handle (`xenevtchn_handle`): ports bound through it
/// signal its `fd` when the other end notifies.
///
/// After the fd polls readable, call `pending()` once for the port that
/// fired, `unmask(port)` so it can fire again, then act (the fd is
/// level-triggered: another pending port keeps it readable).
public protocol EventChannels: AnyObject {
    /// Readable when some bound port has a pending notification.
    var fd: Int32 { get }
    /// Binds a local port to `remotePort` of `remoteDomain`; returns the local port.
    func bindInterdomain(remoteDomain: UInt32, remotePort: UInt32) throws(HostError) -> UInt32
    /// Allocates a port that `remoteDomain` may bind to (a frontend's side).
    func bindUnbound(remoteDomain: UInt32) throws(HostError) -> UInt32
    /// Signals the other end of `port`.
    func notify(port: UInt32) throws(HostError)
    /// The next port with a pending notification, or nil if there is none.
    func pending() throws(HostError) -> UInt32?
    /// Re-enables notifications on `port` after `pending()` returned it.
    func unmask(port: UInt32) throws(HostError)
    /// Closes `port`.
    func unbind(port: UInt32) throws(HostError)
    /// Unbinds every port and closes the handle; later calls fail.
    func close()
}

/// What went wrong inside the Host seam, with enough detail to act on.
public enum HostError: Error, CustomStringConvertible, Equatable {
    /// The hypervisor interface cannot be opened (no /dev/xen, not dom0...).
    case unavailable(String)
    /// A frame could not be mapped: not owned by the domain, or out of range.
    case mapFailed(domid: UInt32, frame: UInt64, reason: String)
    /// A grant reference could not be mapped: not granted to this domain,
    /// read-only while write access was asked for, or out of range.
    case grantMapFailed(domid: UInt32, ref: UInt32, reason: String)
    /// An event-channel operation failed.
    case eventChannel(String)
    /// An argument the caller should have checked (empty frame list...).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .unavailable(let why): return "hypervisor interface unavailable: \(why)"
        case .mapFailed(let d, let f, let why): return "cannot map frame \(f) of domain \(d): \(why)"
        case .grantMapFailed(let d, let r, let why): return "cannot map grant reference \(r) of domain \(d): \(why)"
        case .eventChannel(let why): return "event channel: \(why)"
        case .invalidArgument(let why): return "invalid argument: \(why)"
        }
    }
}

/// Size of a guest frame (x86 and Arm 4 KiB pages).
public let guestPageSize = 4096
