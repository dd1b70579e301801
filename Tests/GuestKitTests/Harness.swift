#if canImport(Glibc)
import Glibc
#endif
import Damage
import Devices
import Console
import Displays
import EventLoop
import GuestKit
import Host
import TestSupport
import Testing
import XenBus
import XenProtocol

/// One simulated machine in this process: a loop, an in-memory xenstore, a
/// SimHost directory, the device model's backends (dom0) and a guest domain.
final class Machine {
    let loop: EventLoop
    let store: InMemoryXenStore
    let dir: String
    let console = Console()
    let backends: Backends
    let guest: GuestDomain
    let domid: UInt32
    var config = BackendConfig()
    /// Backends see event channels that fail the test when read with nothing pending.
    var strictEventChannels = true

    init(domid: UInt32 = 1, config: BackendConfig = BackendConfig()) throws {
        loop = try EventLoop()
        store = InMemoryXenStore(loop: loop)
        dir = try SimHost.makeDirectory(prefix: "xenvfb-gktest")
        self.domid = domid
        self.config = config
        backends = Backends(loop: loop)
        guest = try GuestDomain(host: SimHost(directory: dir, domid: domid), store: store, loop: loop)
    }

    deinit { SimHost.removeDirectory(dir) }

    func startBackends() throws {
        let sim = SimHost(directory: dir, domid: 0)
        try backends.start(host: strictEventChannels ? StrictHost(sim) : sim, xenstore: store, domid: domid, console: console, config: config)
    }

    /// Toolstack + backends + both frontends, run until both ends are Connected.
    func connectAll(requestRaw: Bool = false, featureUpdate: Bool = true,
                    editPage: ((GuestMapping, Int) -> Void)? = nil) throws -> (FramebufferFrontend, KeyboardFrontend) {
        try Toolstack.addFramebuffer(store: store, domid: domid)
        try startBackends()
        let fb = FramebufferFrontend(domain: guest)
        fb.hostile.editPage = editPage
        fb.offerFeatureUpdate = featureUpdate
        let kbd = KeyboardFrontend(domain: guest)
        kbd.requestRaw = requestRaw
        // Let the backends reach InitWait first, as the frontend drivers load after the devices exist.
        run { self.backendState("vfb") == .initWait && self.backendState("vkbd") == .initWait }
        try fb.start()
        try kbd.start()
        run { fb.state == .connected && kbd.state == .connected && self.backendState("vfb") == .connected
            && self.backendState("vkbd") == .connected && (self.console.input as? VkbdDevice)?.ready == true }
        return (fb, kbd)
    }

    func backendState(_ type: String, devid: UInt32 = 0) -> XenbusState? {
        XenbusState(xenstore: (try? store.read("/local/domain/0/backend/\(type)/\(domid)/\(devid)/state")) ?? nil)
    }

    var vfbDevice: VfbDevice? { backends.vfb?.devices[0]?.handler as? VfbDevice }
    var vkbdDevice: VkbdDevice? { backends.vkbd?.devices[0]?.handler as? VkbdDevice }

    /// Runs the loop until `condition` holds or `seconds` pass; returns whether it held.
    @discardableResult
    func run(seconds: Double = 10, until condition: () -> Bool) -> Bool {
        let deadline = EventLoop.now() + UInt64(seconds * 1e9)
        while !condition() {
            if EventLoop.now() > deadline { return false }
            loop.runOnce(timeoutMilliseconds: 10)
        }
        return true
    }

    /// Runs the loop until the vfb backend has done its first (full-screen)
    /// copy after connecting, so later updates are the test's own.
    func settle() {
        #expect(run { (vfbDevice?.statistics?.ticks ?? 0) >= 1 })
    }

    /// Runs the loop for `ms` milliseconds regardless.
    func idle(ms: Int) {
        let deadline = EventLoop.now() + UInt64(ms) * 1_000_000
        while EventLoop.now() < deadline { loop.runOnce(timeoutMilliseconds: 5) }
    }
}

/// A display that records what it was told.
final class RecordingDisplay: Display {
    let name = "record"
    var resizes = 0
    var updates: [[Rect]] = []
    func frameDidResize(_ frame: Frame) { resizes += 1 }
    func frameDidUpdate(_ frame: Frame, rects: [Rect]) { updates.append(rects) }
    func close() {}
}

/// Whether the console's frame equals the guest's framebuffer, pixel by pixel (RGB).
func frameMatchesGuest(_ frame: Frame, _ fb: FramebufferFrontend) -> Bool {
    guard frame.width == fb.width, frame.height == fb.height else { return false }
    for y in 0..<fb.height {
        for x in 0..<fb.width where (frame.pixel(x: x, y: y) & 0xffffff) != ((fb.pixel(x: x, y: y) ?? 0) & 0xffffff) {
            return false
        }
    }
    return true
}

/// A Host whose event channels behave like a blocking xenevtchn fd: calling
/// `pending()` when the fd is not readable would hang under real Xen, so
/// here it is recorded as a test failure.
final class StrictHost: Host {
    let inner: SimHost
    init(_ inner: SimHost) { self.inner = inner }
    var domid: UInt32 { inner.domid }
    func openEventChannels() throws(HostError) -> EventChannels { StrictEventChannels(try inner.openEventChannels()) }
    func mapForeign(domid: UInt32, frames: [UInt64], writable: Bool) throws(HostError) -> GuestMapping {
        try inner.mapForeign(domid: domid, frames: frames, writable: writable)
    }
    func mapGrants(domid: UInt32, refs: [UInt32], writable: Bool) throws(HostError) -> GuestMapping {
        try inner.mapGrants(domid: domid, refs: refs, writable: writable)
    }
}

final class StrictEventChannels: EventChannels {
    let inner: EventChannels
    init(_ inner: EventChannels) { self.inner = inner }
    var fd: Int32 { inner.fd }
    func bindInterdomain(remoteDomain: UInt32, remotePort: UInt32) throws(HostError) -> UInt32 {
        try inner.bindInterdomain(remoteDomain: remoteDomain, remotePort: remotePort)
    }
    func bindUnbound(remoteDomain: UInt32) throws(HostError) -> UInt32 { try inner.bindUnbound(remoteDomain: remoteDomain) }
    func notify(port: UInt32) throws(HostError) { try inner.notify(port: port) }
    func pending() throws(HostError) -> UInt32? {
        var p = pollfd(fd: inner.fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 0) != 1 { Issue.record("pending() with nothing pending: a blocking xenevtchn fd would hang here") }
        return try inner.pending()
    }
    func unmask(port: UInt32) throws(HostError) { try inner.unmask(port: port) }
    func unbind(port: UInt32) throws(HostError) { try inner.unbind(port: port) }
    func close() { inner.close() }
}
