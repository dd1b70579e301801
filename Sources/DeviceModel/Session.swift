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
/// display console and the displays asked for (VNC, SDL, PNG), the one input
/// queue in front of vkbd, the vfb and vkbd backends, and the QMP commands
/// over them (screendump, send-key, input-send-event, the VNC queries and
/// passwords). `xenvfb` (the device model) and `xenvfb demo` both use it.
final class Session {
    let options: DeviceModelOptions
    let loop: EventLoop
    let console = Console()
    /// Every input event from VNC, SDL and QMP passes through here (it is
    /// `console.input`) and then into the vkbd device.
    let input: InputQueue
    private(set) var vnc: VNCDisplay?
    private(set) var sdl: SDLDisplay?
    private(set) var pngs: [PNGDisplay] = []
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
        console.input = input
        console.add(frameWatch)
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
            let vnc = try VNCDisplay(options: vncOptions, loop: loop, console: console, keymap: keymap, desktopName: desktop,
                                     tlsCredentials: try Self.tlsCredentials(vncOptions.tlsCreds, options.tlsCredentials))
            self.vnc = vnc
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

    /// Starts the vfb and vkbd backends for `domid`; input from the queue
    /// goes to each vkbd device as it appears.
    func startBackends(host: Host, xenstore: XenStoreAccess, domid: UInt32) throws {
        let backends = Backends(loop: loop)
        backends.connectInput = { [input] device in input.target = device }
        self.backends = backends
        try backends.start(host: host, xenstore: xenstore, domid: domid, console: console, config: backendConfig)
    }

    /// Takes in every update the guest has announced, now (screendump,
    /// x-xenvfb-query-frame).
    func refresh() {
        for device in backends?.vfbDevices ?? [] { device.refreshNow() }
    }

    /// Closes every display.
    func closeDisplays() {
        console.closeAll()
        captures.drain()
        captures.stop()
        vnc = nil
        sdl = nil
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
