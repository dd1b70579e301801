import EventLoop
import Host
import Logging
import Support
import XenBus
import XenProtocol

/// What the two frontends share: the device directory, the watch on the
/// backend (`otherend`), the state switch and the event channel.
public class FrontendBase {
    public let domain: GuestDomain
    public let type: String
    public let devid: UInt32
    public let path: String
    public private(set) var backendPath = ""
    public private(set) var backendDomid: UInt32 = 0
    public private(set) var state: XenbusState = .initialising
    public private(set) var backendState: XenbusState?
    let log: Logger
    var evtchn: EventChannels?
    var port: UInt32 = 0
    private var watch: XenStoreWatch?
    /// Called after every state change of either end (tests wait on it).
    public var onChange: (() -> Void)?

    init(domain: GuestDomain, type: String, devid: UInt32) {
        self.domain = domain
        self.type = type
        self.devid = devid
        path = "\(domain.path)/device/\(type)/\(devid)"
        log = Log.logger("guest-\(type)", ["domid": "\(domain.domid)", "devid": "\(devid)"])
    }

    var store: XenStoreAccess { domain.store }

    func readBackend(_ key: String) -> String? { (try? store.read("\(backendPath)/\(key)")) ?? nil }

    /// Finds the backend, probes, publishes the connection keys, and follows
    /// the backend's state from then on.
    public func start() throws {
        guard let be = try store.read("\(path)/backend") else { throw XenBusError("\(path)/backend is missing: has the toolstack added the device?") }
        backendPath = be
        backendDomid = try store.read("\(path)/backend-id").flatMap { UInt32(xenstoreDecimal: $0) } ?? 0
        try connectBackend()
        watch = try store.watch(backendPath) { [weak self] _ in self?.backendChanged() }
    }

    func switchState(_ s: XenbusState) {
        guard s != state else { return }
        state = s
        try? store.write("\(path)/state", s.xenstoreValue)
        onChange?()
    }

    /// Allocates an unbound port for the backend and watches it.
    func allocateEventChannel() throws {
        let ev = try domain.host.openEventChannels()
        evtchn = ev
        port = try ev.bindUnbound(remoteDomain: backendDomid)
        try domain.loop.watch(fd: ev.fd) { [weak self] _ in
            guard let self, let ev = self.evtchn else { return }
            if let p = try? ev.pending() { try? ev.unmask(port: p) }
            self.interrupt()
        }
    }

    func releaseEventChannel() {
        if let ev = evtchn {
            domain.loop.unwatch(fd: ev.fd)
            ev.close()
        }
        evtchn = nil
    }

    func notify() { try? evtchn?.notify(port: port) }

    private func backendChanged() {
        let s = XenbusState(xenstore: readBackend("state"))
        backendState = s
        switch s {
        case .initWait:
            if state == .initialised { switchState(.connected) }
        case .connected:
            // A frontend that missed InitWait still connects (Linux's workaround).
            if state == .initialised || state == .connected {
                switchState(.connected)
                backendConnected()
            }
        case .closing:
            switchState(.closed)
        case .closed:
            if state != .closed && state != .initialising { switchState(.closed) }
        default:
            break
        }
        onChange?()
    }

    /// Stops following the backend and drops the event channel, leaving the
    /// xenstore keys as they are: a guest that hung or died.
    public func detach() {
        watch?.cancel()
        watch = nil
        releaseResources()
    }

    /// Takes the frontend down (as on module unload): Closing, then Closed
    /// once the backend follows.
    public func disconnect() {
        switchState(.closing)
    }

    /// Probes again after a disconnect: fresh page and event channel, state 1, then 3.
    public func reconnect() throws {
        releaseResources()
        switchState(.initialising)
        try connectBackend()
    }

    // Overridden by each frontend.
    func connectBackend() throws {}
    func backendConnected() {}
    func interrupt() {}
    func releaseResources() {}
}
