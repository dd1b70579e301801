import EventLoop
import Host
import Logging
import XenBus

/// What vfb and vkbd both set up when their frontend connects (QEMU's
/// `common_bind` in hw/display/xenfb.c): the frontend's shared page, mapped
/// writable from its `page-ref`, and an interdomain event channel bound to
/// its `event-channel` port and watched on the loop. `close` undoes both
/// (`common_unbind`).
final class FrontendChannel {
    let page: GuestMapping
    private let channels: EventChannels
    private let localPort: UInt32
    private let loop: EventLoop
    private let log: Logger
    private var warnedNotify = false
    private var warnedPending = false
    private var closed = false

    /// Reads `page-ref` and `event-channel`, maps the page, binds the port
    /// and calls `onNotify` on the loop each time the frontend notifies.
    init(_ device: XenBusDevice, onNotify: @escaping () -> Void) throws {
        guard let refText = try device.readFrontend("page-ref"), let pageRef = UInt64(xenstoreDecimal: refText) else {
            throw XenBusError("frontend key page-ref is missing or not decimal")
        }
        guard let portText = try device.readFrontend("event-channel"), let remotePort = UInt32(xenstoreDecimal: portText) else {
            throw XenBusError("frontend key event-channel is missing or not decimal")
        }
        loop = device.loop
        log = device.log
        page = try device.host.mapForeign(domid: device.domid, frames: [pageRef], writable: true)
        do {
            channels = try device.host.openEventChannels()
        } catch {
            page.unmap()
            throw error
        }
        do {
            localPort = try channels.bindInterdomain(remoteDomain: device.domid, remotePort: remotePort)
        } catch {
            channels.close()
            page.unmap()
            throw error
        }
        do {
            try loop.watch(fd: channels.fd) { [weak self] _ in
                guard let self else { return }
                self.acknowledge()
                onNotify()
            }
        } catch {
            channels.close()
            page.unmap()
            throw error
        }
    }

    deinit { close() }

    /// One `pending()` per wake-up: the fd is level-triggered, and a blocking
    /// xenevtchn fd must never be read when nothing is pending.
    private func acknowledge() {
        do throws(HostError) {
            if let port = try channels.pending() { try channels.unmask(port: port) }
        } catch {
            if !warnedPending { warnedPending = true; log.warning("event channel: \(error)") }
        }
    }

    /// Signals the frontend.
    func notify() {
        do throws(HostError) {
            try channels.notify(port: localPort)
        } catch {
            if !warnedNotify { warnedNotify = true; log.warning("cannot notify the frontend: \(error)") }
        }
    }

    /// Unbinds the port, closes the handle and unmaps the page. Idempotent.
    func close() {
        guard !closed else { return }
        closed = true
        loop.unwatch(fd: channels.fd)
        // A port that cannot be unbound goes with the handle anyway.
        do throws(HostError) { try channels.unbind(port: localPort) } catch { log.debug("unbind: \(error)") }
        channels.close()
        page.unmap()
    }
}
