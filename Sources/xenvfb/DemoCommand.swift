#if canImport(Glibc)
import Glibc
#endif
import Control
import Devices
import Displays
import EventLoop
import GuestKit
import Host
import Logging
import Support
import XenStore

/// `xenvfb demo`: a simulated Xen host in one process — the embedded
/// xenstored on its own thread, SimHost for memory and event channels, the
/// built-in demo guest (domain 1) drawing through GuestKit's frontends, and
/// xenvfb's own vfb/vkbd backends showing it on the displays asked for.
enum DemoCommand {
    static let guestDomid: UInt32 = 1

    static func main(_ args: [String]) -> Int32 {
        let log = Log.logger("demo")
        let options: DeviceModelOptions
        do {
            options = try DeviceModelOptions.parse(args, mode: .demo)
        } catch {
            log.error("\(error) (see xenvfb --help and xenvfb(1))")
            return 1
        }
        if let error = validateDisplays(options) {
            log.error("\(error) (see xenvfb(1))")
            return 1
        }
        for w in options.warnings { log.warning("\(w)") }
        do {
            try run(options, log: log)
            return 0
        } catch {
            log.error("\(error)")
            return 1
        }
    }

    static func run(_ options: DeviceModelOptions, log: Logger) throws {
        // Block the signals before any thread starts, so signalfd sees them all.
        EventLoop.blockSignals([SIGINT, SIGTERM, SIGHUP])
        let loop = try EventLoop()
        let dir = try SimHost.makeDirectory(prefix: "xenvfb-demo")
        defer { SimHost.removeDirectory(dir) }

        let hub = DisplayHub()
        var pngs: [PNGDisplay] = []
        var notes: [String] = []
        for spec in options.displays {
            switch spec {
            case .png(let text):
                let png = try PNGDisplay(spec: text, loop: loop)
                pngs.append(png)
                hub.add(png)
                notes.append("pictures of the guest's screen go to \(png.options.directory) (newest: \(png.latestPath))")
            case .sdl:
                let sdl = try SDLDisplay(options: .init(title: "xenvfb demo", closeQuits: true), loop: loop, hub: hub)
                sdl.onQuit = { loop.stop() }
                hub.add(sdl)
                notes.append("SDL window open: type or click in it (Ctrl-Alt grabs and releases)")
            }
        }
        if let vncSpec = options.vnc {
            let vnc = try VNCDisplay(spec: vncSpec, loop: loop, hub: hub, keymap: options.keymap ?? "en-us", desktopName: "xenvfb demo")
            hub.add(vnc)
            notes.append("VNC server on \(vnc.info.host):\(vnc.info.service)" + (vnc.port.map { " (display :\($0 - 5900))" } ?? ""))
        }
        if notes.isEmpty { log.warning("no display asked for: the guest runs unseen (try --display png:dir=out/demo)") }

        // xenstored on its own thread: libxenstore's calls block for the reply.
        let server = try XenstoreServer()
        let dom0Socket = dir + "/xenstored", guestSocket = dir + "/xenstored-dom\(guestDomid)"
        try server.listen(path: dom0Socket)
        try server.addDomainSocket(domid: guestDomid, path: guestSocket)
        server.introduceDomain(guestDomid)
        try server.startOnThread()
        defer { server.stop() }

        let dom0Store = try XenStoreConnection(socketPath: dom0Socket, loop: loop)
        let guestStore = try XenStoreConnection(socketPath: guestSocket, loop: loop)
        try dom0Store.write("/local/domain/\(guestDomid)/name", "demo-guest")
        try Toolstack.addFramebuffer(store: dom0Store, domid: guestDomid)

        let backends = Backends(loop: loop)
        try backends.start(host: SimHost(directory: dir, domid: 0), xenstore: dom0Store, domid: guestDomid,
                           hub: hub, config: BackendConfig())
        let guest = try GuestDomain(host: SimHost(directory: dir, domid: guestDomid), store: guestStore, loop: loop)
        let demo = DemoGuest(domain: guest)
        try demo.start()

        try loop.handleSignals([SIGINT, SIGTERM, SIGHUP]) { signal in
            log.info("signal \(signal): stopping")
            loop.stop()
        }
        if let seconds = options.seconds {
            loop.addTimer(after: .seconds(Int64(seconds))) {
                log.info("\(seconds) s are up: stopping")
                loop.stop()
            }
        }
        for note in notes { log.info("\(note)") }
        log.info("demo running: simulated machine in \(dir), guest domain \(guestDomid)")
        loop.run()

        demo.stop()
        var closed = false
        backends.shutdown { closed = true }
        _ = closed
        hub.closeAll()
        for png in pngs where png.framesWritten > 0 {
            log.info("wrote \(png.framesWritten) pictures to \(png.options.directory); the last is \(png.latestPath)")
        }
        withExtendedLifetime((dom0Store, guestStore, guest, demo)) {}
    }
}
