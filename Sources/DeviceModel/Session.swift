#if canImport(Glibc)
import Glibc
#endif
import Control
import Damage
import Devices
import Console
import Displays
import EventLoop
import Host
import Logging
import Support

/// The parts every way of running xenvfb shares, built from the options: the
/// consoles and the displays asked for (VNC, SDL, PNG), the one input queue
/// in front of vkbd, the vfb, vkbd and vdispl backends, and the QMP commands
/// over them (screendump, send-key, input-send-event, the VNC queries and
/// passwords). `xenvfb` (the device model) and `xenvfb demo` both use it.
///
/// **Several screens.** Console 0 is the one libxl knows about: the VNC
/// server of `-vnc`, the SDL window, the PNG directories of `--display png`,
/// `query-vnc` and a plain `screendump` are its. Each further console (a
/// vdispl connector; see `Consoles`) gets, as it appears, a VNC server of
/// its own on the next display numbers (console N at the first free display
/// from D+N, where D is console 0's; same address and options; `unix:PATH`
/// becomes `PATH-N`) and, for each PNG display, the directory `DIR/console-N`.
/// `screendump` reaches it by QEMU's `device` and `head` (`vdispl-0`, head 1
/// for the second connector). Input from every console goes to the one vkbd.
final class Session {
    let options: DeviceModelOptions
    let loop: EventLoop
    /// Every screen; console 0 first.
    let consoles: Consoles
    /// Console 0.
    var console: Console { consoles.primary }
    /// Every input event from VNC, SDL and QMP passes through here (it is
    /// `console.input`) and then into the vkbd device.
    let input: InputQueue
    /// Console 0's VNC server.
    private(set) var vnc: VNCDisplay?
    /// The VNC servers of the other consoles, by console index.
    private(set) var consoleVNC: [Int: VNCDisplay] = [:]
    private var vncKeymap: Keymap?
    /// Console 0's VNC TLS credentials (`tls-creds=`), for every console's server.
    private var vncTLS: VNCTLSCredentials?
    private(set) var sdl: SDLDisplay?
    /// Console 0's PNG displays.
    private(set) var pngs: [PNGDisplay] = []
    /// The other consoles' PNG displays, by console index.
    private(set) var consolePNGs: [Int: [PNGDisplay]] = [:]
    private(set) var backends: Backends?
    /// Counts frame changes for `x-xenvfb-query-frame` and `xenvfb screenshot --wait-still`.
    let frameWatch = FrameWatch()
    /// Encodes and writes captures (PNG displays, QMP screendump) off the loop.
    let captures: CaptureWorker
    var vncProvider: VNCQMPProvider?
    let log: Logger
    /// The pointer as QMP `input-send-event` last placed it, in pixels.
    var qmpPointer: (x: Int32, y: Int32) = (0, 0)

    init(options: DeviceModelOptions, loop: EventLoop, log: Logger) {
        self.options = options
        self.loop = loop
        self.log = log
        let pace = options.inputPaceMilliseconds ?? options.vnc.flatMap(Self.keyDelay(inVNCSpec:))
        input = InputQueue(loop: loop, pace: pace.map { .milliseconds(Int64($0)) })
        captures = CaptureWorker(loop: loop)
        consoles = Consoles(primary: Console(), limit: 1 + 2 * BackendConfig().vdisplMaxConnectors)
        consoles.primary.input = input
        consoles.primary.add(frameWatch)
    }

    /// QEMU's `-vnc ...,key-delay-ms=N`, which paces input like
    /// `--input-pace N` when that is not given.
    static func keyDelay(inVNCSpec spec: String) -> UInt32? {
        // The spec was checked at start-up (validateDisplays); a bad one has no delay.
        (try? VNCOptions(spec: spec))?.keyDelayMilliseconds.map { UInt32($0) }
    }

    /// What the backends are configured with, from the options.
    var backendConfig: BackendConfig {
        var config = BackendConfig()
        if let ms = options.updateIntervalMilliseconds { config.updateDelay = .milliseconds(Int64(ms)) }
        return config
    }

    /// Opens the displays the options ask for. `onWindowClosed` runs when an
    /// SDL window is closed (nil: closing the window closes only the window).
    func openDisplays(onWindowClosed: (() -> Void)? = nil) throws(DisplayError) {
        if let spec = options.vnc {
            // Like QEMU, an unknown -k is an error at start-up, not en-us.
            let keymap: Keymap
            do { keymap = try Keymap(name: options.keymap ?? "en-us") } catch { throw DisplayError("-k: \(error)") }
            let desktop = options.name.map { "QEMU (\($0))" } ?? "QEMU"
            let vncOptions = try VNCOptions(spec: spec)
            let tls = try Self.tlsCredentials(vncOptions.tlsCreds, options.tlsCredentials)
            let vnc = try VNCDisplay(options: vncOptions, loop: loop, console: console, keymap: keymap, desktopName: desktop,
                                     tlsCredentials: tls)
            self.vnc = vnc
            vncTLS = tls
            vncKeymap = keymap
            console.add(vnc)
            vncProvider = VNCQMPProvider(vnc: vnc)
        }
        for spec in options.displays {
            switch spec {
            case .sdl:
                guard sdl == nil else { continue }
                let title = options.name.map { "QEMU (\($0))" } ?? "xenvfb"
                let window = try SDLDisplay(options: .init(title: title, closeQuits: onWindowClosed != nil), loop: loop, console: console)
                window.onQuit = onWindowClosed
                sdl = window
                console.add(window)
            case .png(let text):
                let png = try PNGDisplay(spec: text, loop: loop, worker: captures)
                pngs.append(png)
                console.add(png)
            }
        }
    }

    /// Gives a console after console 0 its displays: a VNC server if
    /// console 0 has one, and a PNG display per console-0 PNG display. A
    /// display that cannot be opened is logged; the console works without it.
    func addDisplays(console: Console, index: Int) {
        if let vnc, let keymap = vncKeymap {
            if let vncOptions = Self.vncOptions(vnc.options, base: vnc.port.map { $0 - 5900 }, console: index) {
                let desktop = (options.name.map { "QEMU (\($0))" } ?? "QEMU") + " console \(index)"
                do throws(DisplayError) {
                    // The same credentials as console 0's server: never a plain one beside a TLS one.
                    let server = try VNCDisplay(options: vncOptions, loop: loop, console: console, keymap: keymap, desktopName: desktop,
                                                tlsCredentials: vncTLS)
                    consoleVNC[index] = server
                    console.add(server)
                    vncProvider?.add(server, id: "console\(index)")
                    log.info("console \(index): VNC server on \(server.info.host):\(server.info.service)")
                } catch {
                    log.warning("console \(index): no VNC server: \(error)")
                }
            }
        }
        for png in pngs {
            var o = png.options
            o.directory = "\(png.options.directory)/console-\(index)"
            do throws(DisplayError) {
                let display = try PNGDisplay(options: o, loop: loop, worker: captures)
                consolePNGs[index, default: []].append(display)
                console.add(display)
                log.info("console \(index): pictures go to \(o.directory)")
            } catch {
                log.warning("console \(index): no PNG display: \(error)")
            }
        }
    }

    /// Console `index`'s VNC options, from console 0's: TCP displays from
    /// `base + index` (the display console 0 got) upwards, as many as
    /// console 0 was allowed to search and at least 100; a Unix socket path
    /// gets `-index`.
    static func vncOptions(_ first: VNCOptions, base: Int?, console index: Int) -> VNCOptions? {
        var o = first
        switch first.address {
        case .none:
            return nil
        case .tcp(let host, let display, let last):
            let start = (base ?? display) + index
            let maxDisplay = 65535 - 5900
            guard start <= maxDisplay else { return nil }
            o.address = .tcp(host: host, display: start, lastDisplay: min(start + max(last - display, 99), maxDisplay))
        case .unix(let path):
            o.address = .unix(path: "\(path)-\(index)")
        }
        return o
    }

    /// What `-vnc ...,tls-creds=ID` names, checked as QEMU checks it.
    static func tlsCredentials(_ id: String?, _ objects: [String: TLSCredentialsObject]) throws(DisplayError) -> VNCTLSCredentials? {
        guard let id else { return nil }
        guard let o = objects[id] else {
            throw DisplayError("-vnc: tls-creds '\(id)' is not defined: add -object tls-creds-x509,id=\(id),dir=DIR,endpoint=server")
        }
        guard o.endpoint == .server else {
            throw DisplayError("-vnc: tls-creds '\(id)' has endpoint=client; the VNC server needs endpoint=server")
        }
        return VNCTLSCredentials(directory: o.directory, verifyPeer: o.verifyPeer, priority: o.priority)
    }

    /// Starts the vfb, vkbd and vdispl backends for `domid`; input from
    /// the queue goes to each vkbd device as it appears, and each console
    /// after the first gets its displays as it appears.
    /// With `--vdispl-only` only the vdispl backend, and no `running` state.
    func startBackends(host: Host, xenstore: XenStoreAccess, domid: UInt32) throws {
        let backends = Backends(loop: loop)
        backends.connectInput = { [input] device in input.target = device }
        self.backends = backends
        consoles.onAdd = { [unowned self] index, console in self.addDisplays(console: console, index: index) }
        try backends.start(host: host, xenstore: xenstore, domid: domid, consoles: consoles, config: backendConfig,
                           kinds: options.vdisplOnly ? .vdispl : .all, markRunning: !options.vdisplOnly)
    }

    /// Takes in every update the guest has announced, now (screendump,
    /// x-xenvfb-query-frame).
    func refresh() {
        backends?.refreshNow()
    }

    /// Closes every display of every console.
    func closeDisplays() {
        for c in consoles.all { c.closeAll() }
        captures.drain()
        captures.stop()
        vnc = nil
        sdl = nil
        consoleVNC.removeAll()
        consolePNGs.removeAll()
    }
}

/// Counts frame changes (a "display" that shows nothing), so a client can
/// tell whether the screen has changed since it last looked.
final class FrameWatch: Display {
    let name = "frame-watch"
    private(set) var changes: Int64 = 0
    private(set) var lastChange = EventLoop.now()

    func frameDidResize(_ frame: Frame) { changed() }
    func frameDidUpdate(_ frame: Frame, rects: [Rect]) { changed() }
    func close() {}

    private func changed() {
        changes += 1
        lastChange = EventLoop.now()
    }
}
