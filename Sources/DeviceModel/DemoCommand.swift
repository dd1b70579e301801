#if canImport(Glibc)
import Glibc
#endif
import Control
import Damage
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
/// With `--vdispl` the guest also has a vdispl device whose one connector
/// (console 1) shows an animation drawn with page flips.
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
        let trackingMode = DirtyTrackingMode(rawValue: options.dirtyTracking ?? "auto")
        guard let trackingMode else {
            log.error("--dirty-tracking: unknown mode '\(options.dirtyTracking ?? "")' (auto, uffd, mprotect or compare)")
            return 1
        }
        for w in options.warnings { log.warning("\(w)") }
        do {
            try run(options, trackingMode: trackingMode, log: log)
            return 0
        } catch {
            log.error("\(error)")
            return 1
        }
    }

    static func run(_ options: DeviceModelOptions, trackingMode: DirtyTrackingMode, log: Logger) throws {
        // Block the signals before any thread starts, so signalfd sees them all.
        EventLoop.blockSignals([SIGINT, SIGTERM, SIGHUP])
        let loop = try EventLoop()
        let dir = try SimHost.makeDirectory(prefix: "xenvfb-demo")
        defer { SimHost.removeDirectory(dir) }

        // The displays, the input queue and (below) the backends and QMP
        // commands are built as in device-model mode.
        let session = Session(options: options, loop: loop, log: log)
        try session.openDisplays(onWindowClosed: { loop.stop() })
        var notes: [String] = []
        for png in session.pngs {
            notes.append("pictures of the guest's screen go to \(png.options.directory) (newest: \(png.latestPath))")
        }
        if session.sdl != nil { notes.append("SDL window open: type or click in it (Ctrl-Alt grabs and releases)") }
        if let vnc = session.vnc {
            notes.append("VNC server on \(vnc.info.host):\(vnc.info.service)" + (vnc.port.map { " (display :\($0 - 5900))" } ?? ""))
        }
        var qmp: QMPServer?
        if !options.qmp.isEmpty {
            let server = QMPServer(loop: loop, logger: Log.logger("qmp"))
            server.guestName = "demo-guest"
            server.onQuit = { loop.stop() }
            for endpoint in options.qmp { try server.listen(endpoint) }
            session.registerCommands(server)
            qmp = server
            notes.append("QMP on \(options.qmp.map(\.id).joined(separator: ", "))")
        }
        defer { qmp?.close() }
        if notes.isEmpty { log.warning("no display asked for: the guest runs unseen (try --display png:dir=out/demo)") }
        // VNC and QMP peers come and go: a write to one that left must fail with EPIPE, not kill the demo.
        signal(SIGPIPE, SIG_IGN)

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
        if options.demoVdispl {
            try Toolstack.addDisplay(store: dom0Store, domid: guestDomid, connectors: [("demo", 800, 600)])
        }

        try session.startBackends(host: SimHost(directory: dir, domid: 0), xenstore: dom0Store, domid: guestDomid)
        let guest = try GuestDomain(host: SimHost(directory: dir, domid: guestDomid), store: guestStore, loop: loop,
                                    memoryBytes: options.demoVdispl ? 32 << 20 : 16 << 20)
        let demo = DemoGuest(domain: guest)
        demo.trackingMode = trackingMode
        try demo.start()
        var displayDemo: DisplayDemo?
        if options.demoVdispl {
            let d = DisplayDemo(domain: guest)
            try d.start()
            displayDemo = d
            // The connector's console and its displays exist once the backend saw the device.
            _ = loop.runOnce(timeoutMilliseconds: 0)
            for (index, vnc) in session.consoleVNC.sorted(by: { $0.key < $1.key }) {
                notes.append("vdispl connector on console \(index): VNC server on \(vnc.info.host):\(vnc.info.service)")
            }
            for (index, pngs) in session.consolePNGs.sorted(by: { $0.key < $1.key }) {
                for png in pngs { notes.append("vdispl connector on console \(index): pictures go to \(png.options.directory)") }
            }
        }

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
        displayDemo?.stop()
        var closed = false
        session.backends?.shutdown { closed = true }
        _ = closed
        let pngs = session.pngs
        session.closeDisplays()
        for png in pngs where png.framesWritten > 0 {
            log.info("wrote \(png.framesWritten) pictures to \(png.options.directory); the last is \(png.latestPath)")
        }
        withExtendedLifetime((dom0Store, guestStore, guest, demo, displayDemo)) {}
    }
}
