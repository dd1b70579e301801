#if canImport(Glibc)
import Glibc
#endif
import CDisplayShims
import CSDL2
import CShims
import Console
import Damage
import EventLoop
import Logging
import Support

/// A local window showing the frame, through SDL2 (`-display sdl`, `--sdl`).
///
/// - The window is resizable; the picture is scaled to fit, keeping its
///   aspect ratio (SDL's logical size), and pointer positions are scaled back
///   to framebuffer pixels.
/// - Ctrl-Alt (pressed and released alone) grabs or releases keyboard and
///   pointer; Ctrl-Alt-F toggles full screen; Ctrl-Alt-U restores 1:1 size.
/// - Keys are sent by physical position (SDL scancodes → Linux key codes), so
///   the guest's own layout applies.
/// - Closing the window closes the window only, unless `closeQuits` is set,
///   in which case `onQuit` is called (the device model decides what to do).
///
/// Everything SDL does runs on a thread of its own (`xenvfb-sdl`), which
/// sleeps in `SDL_WaitEvent` on the X connection: the window server can
/// never hold the guest's loop, and a still screen with an open window costs
/// no wake-up at all. The loop only records what changed (a few rects under
/// a lock) and pushes one SDL user event to wake the thread, which then
/// reads those rects from the console under its lock, uploads and presents.
/// Input goes back to the loop through `EventLoop.post`. SDL keeps one event
/// queue per process, so one SDLDisplay per process is supported.
public final class SDLDisplay: Display {
    public struct Options: Sendable {
        public var title: String
        /// Closing the window asks the device model to quit (QEMU's window-close=on).
        public var closeQuits = false
        public var fullScreen = false
        /// SDL video driver to force (`dummy` in tests); nil lets SDL choose.
        public var videoDriver: String?

        public init(title: String, closeQuits: Bool = false, fullScreen: Bool = false, videoDriver: String? = nil) {
            self.title = title
            self.closeQuits = closeQuits
            self.fullScreen = fullScreen
            self.videoDriver = videoDriver
        }
    }

    public let name = "sdl"
    public let options: Options
    /// Called on the loop when the window is closed and `closeQuits` is set.
    public var onQuit: (() -> Void)?

    private let loop: EventLoop
    private let window: Window
    private var closed = false

    /// Whether keyboard and pointer are grabbed.
    public var grabbed: Bool { window.shared.withLock { window.mirror.grabbed } }
    /// Whether the window is full screen.
    public var isFullScreen: Bool { window.shared.withLock { window.mirror.fullScreen } }
    /// Whether the window is open.
    public var isOpen: Bool { window.shared.withLock { window.mirror.open } }
    /// The title as shown (tests).
    public var title: String? { window.shared.withLock { window.mirror.open ? window.mirror.title : nil } }

    public convenience init(loop: EventLoop, console: Console, title: String) throws(DisplayError) {
        try self.init(options: Options(title: title), loop: loop, console: console)
    }

    /// Opens the window at the frame's size (on the SDL thread, waiting for
    /// it to be up). Add it to the console afterwards.
    public init(options: Options, loop: EventLoop, console: Console) throws(DisplayError) {
        self.options = options
        self.loop = loop
        window = Window(options: options, loop: loop, console: console)
        let started = Handoff<String?>()
        do {
            try spawnThread { [window] in window.run(started: started) }
        } catch {
            throw DisplayError("sdl: cannot start the SDL thread: \(error)")
        }
        if let failure = started.take() { throw DisplayError(failure) }
        window.onClosedByUser = { [weak self] in
            guard let self else { return }
            if self.options.closeQuits { self.onQuit?() }
        }
    }

    deinit { close() }

    // MARK: Display

    public func frameDidResize(_ frame: Frame) {
        window.changed(resize: true, rects: [])
    }

    public func frameDidUpdate(_ frame: Frame, rects: [Rect]) {
        window.changed(resize: false, rects: rects)
    }

    /// Closes the window and ends the SDL thread (waiting for it).
    public func close() {
        guard !closed else { return }
        closed = true
        window.finish()
    }

    // MARK: For tests

    /// Waits until the SDL thread has handled every SDL event queued so far,
    /// then runs the loop until what they sent to it arrived.
    public func pump() {
        window.sync { _ in }
        var deadline = EventLoop.now() + 50_000_000
        while EventLoop.now() < deadline {
            if loop.runOnce(timeoutMilliseconds: 5) > 0 { deadline = EventLoop.now() + 20_000_000 }
        }
    }

    /// The window's picture as XRGB words, at the window's output size
    /// (equal to the frame at 1:1).
    public func readBack() -> (width: Int, height: Int, pixels: [UInt32])? {
        window.sync { $0.readBack() } ?? nil
    }

    /// Grabs or releases keyboard and pointer (also the Ctrl-Alt hotkey).
    public func setGrab(_ on: Bool) {
        window.sync { $0.setGrab(on) }
    }
}

/// The SDL thread's side: every SDL call happens on that thread.
private final class Window: @unchecked Sendable {
    struct Mirror {
        var open = false
        var grabbed = false
        var fullScreen = false
        var title = ""
    }

    let options: SDLDisplay.Options
    let loop: EventLoop
    weak var console: Console?
    let log = Log.logger("display.sdl")
    /// Set on the loop; run there when the user closed the window.
    var onClosedByUser: (() -> Void)?

    // Shared with the loop's thread, under `shared`.
    let shared = Lock()
    var mirror = Mirror()
    private var pendingRects: [Rect] = []
    private var pendingResize = false
    private var wakePending = false
    private var finishing = false
    private var syncs: [(Window) -> Void] = []
    private let ended = Handoff<Bool>()
    private var wakeType: UInt32 = 0

    // The SDL thread's own.
    private var sdlWindow: OpaquePointer?
    private var renderer: OpaquePointer?
    private var texture: OpaquePointer?
    private var width = 0, height = 0
    private var row: [UInt32] = []
    private var pressed: Set<UInt32> = []
    private var buttons: Set<UInt32> = []
    private var lastPosition: (Int32, Int32)?
    private var ctrlAltAlone = false
    /// The window should go: the event loop ends and `teardown` runs.
    private var quitting = false

    init(options: SDLDisplay.Options, loop: EventLoop, console: Console) {
        self.options = options
        self.loop = loop
        self.console = console
    }

    private static func sdlError() -> String { String(cString: SDL_GetError()) }

    // MARK: From the loop (any thread)

    func changed(resize: Bool, rects: [Rect]) {
        let wake: Bool = shared.withLock {
            guard mirror.open else { return false }
            if resize { pendingResize = true; pendingRects.removeAll() }
            pendingRects.append(contentsOf: rects)
            // Bounded: past 64 rects their union stands for them.
            if pendingRects.count > 64 { pendingRects = [pendingRects.reduce(Rect(x: 0, y: 0, width: 0, height: 0)) { $0.union($1) }] }
            defer { wakePending = true }
            return !wakePending
        }
        if wake { pushWake() }
    }

    /// Runs `body` on the SDL thread and waits for its result.
    func sync<R>(_ body: @escaping (Window) -> R) -> R? {
        let result = Handoff<LoopBound<R?>>()
        let open: Bool = shared.withLock {
            guard mirror.open else { return false }
            syncs.append { w in result.put(LoopBound(body(w))) }
            return true
        }
        guard open else { return nil }
        pushWake(force: true)
        return result.take().value
    }

    /// Asks the thread to close the window and waits until it has.
    func finish() {
        let running: Bool = shared.withLock {
            guard mirror.open else { return false }
            finishing = true
            return true
        }
        if running {
            pushWake(force: true)
            _ = ended.take()
        }
    }

    private func pushWake(force: Bool = false) {
        var e = SDL_Event()
        e.type = wakeType
        _ = SDL_PushEvent(&e)
    }

    // MARK: The SDL thread

    func run(started: Handoff<String?>) {
        _ = cshims_set_thread_name("xenvfb-sdl")
        if let failure = open() {
            started.put(failure)
            return
        }
        started.put(nil)
        var event = SDL_Event()
        while !quitting, SDL_WaitEvent(&event) != 0 {
            handle(event)
        }
        teardown()
        ended.put(true)
    }

    private func open() -> String? {
        // libSDL2 is loaded on first use, not linked (CDisplayShims/sdl.c).
        var reason = [CChar](repeating: 0, count: 512)
        guard xenvfb_sdl_load(&reason, reason.count) == 0 else {
            return "sdl: " + reason.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        }
        // The loop handles signals (signalfd); SDL must not install handlers.
        SDL_SetHint(SDL_HINT_NO_SIGNAL_HANDLERS, "1")
        SDL_SetHint(SDL_HINT_QUIT_ON_LAST_WINDOW_CLOSE, "0")
        if let driver = options.videoDriver { SDL_SetHint(SDL_HINT_VIDEODRIVER, driver) }
        guard SDL_InitSubSystem(SDL_INIT_VIDEO) == 0 else {
            return "sdl: cannot initialise SDL video: \(Self.sdlError()) (is DISPLAY set?)"
        }
        wakeType = SDL_RegisterEvents(1)
        let size = console?.size ?? (width: 640, height: 480)
        width = size.width
        height = size.height
        let undefinedPosition: Int32 = 0x1FFF_0000 // SDL_WINDOWPOS_UNDEFINED (a macro)
        var flags = SDL_WINDOW_RESIZABLE.rawValue | SDL_WINDOW_ALLOW_HIGHDPI.rawValue
        if options.fullScreen { flags |= SDL_WINDOW_FULLSCREEN_DESKTOP.rawValue }
        guard let w = SDL_CreateWindow(options.title, undefinedPosition, undefinedPosition, Int32(width), Int32(height), flags) else {
            let message = Self.sdlError()
            SDL_QuitSubSystem(SDL_INIT_VIDEO)
            return "sdl: cannot open a window: \(message)"
        }
        sdlWindow = w
        guard let r = SDL_CreateRenderer(w, -1, 0) ?? SDL_CreateRenderer(w, -1, SDL_RENDERER_SOFTWARE.rawValue) else {
            let message = Self.sdlError()
            SDL_DestroyWindow(w)
            sdlWindow = nil
            SDL_QuitSubSystem(SDL_INIT_VIDEO)
            return "sdl: cannot create a renderer: \(message)"
        }
        renderer = r
        guard makeTexture() else {
            let message = Self.sdlError()
            teardown()
            return "sdl: cannot create a texture: \(message)"
        }
        shared.withLock {
            mirror = Mirror(open: true, grabbed: false, fullScreen: options.fullScreen, title: options.title)
        }
        updateTitle()
        log.info("SDL window open", metadata: ["driver": "\(String(cString: SDL_GetCurrentVideoDriver()))",
                                               "size": "\(width)x\(height)"])
        return nil
    }

    private func makeTexture() -> Bool {
        guard let renderer else { return false }
        if let texture { SDL_DestroyTexture(texture) }
        texture = SDL_CreateTexture(renderer, UInt32(SDL_PIXELFORMAT_XRGB8888.rawValue), Int32(SDL_TEXTUREACCESS_STREAMING.rawValue),
                                    Int32(width), Int32(height))
        SDL_RenderSetLogicalSize(renderer, Int32(width), Int32(height))
        return texture != nil
    }

    private func teardown() {
        releaseInput()
        if let texture { SDL_DestroyTexture(texture); self.texture = nil }
        if let renderer { SDL_DestroyRenderer(renderer); self.renderer = nil }
        if let sdlWindow { SDL_DestroyWindow(sdlWindow); self.sdlWindow = nil; log.info("SDL window closed") }
        SDL_QuitSubSystem(SDL_INIT_VIDEO)
        // Wake-ups still queued (and syncs) find the window closed.
        let waiting: [(Window) -> Void] = shared.withLock {
            mirror.open = false
            defer { syncs.removeAll() }
            return syncs
        }
        for s in waiting { s(self) }
    }

    private func handle(_ event: SDL_Event) {
        let type = SDL_EventType(event.type)
        if event.type == wakeType {
            woken()
            return
        }
        switch type {
        case SDL_QUIT:
            closedByUser()
        case SDL_WINDOWEVENT:
            switch SDL_WindowEventID(UInt32(event.window.event)) {
            case SDL_WINDOWEVENT_CLOSE: closedByUser()
            case SDL_WINDOWEVENT_EXPOSED, SDL_WINDOWEVENT_SIZE_CHANGED, SDL_WINDOWEVENT_RESTORED: present()
            case SDL_WINDOWEVENT_FOCUS_LOST: releaseInput()
            default: break
            }
        case SDL_KEYDOWN, SDL_KEYUP:
            key(event.key, down: type == SDL_KEYDOWN)
        case SDL_MOUSEMOTION:
            move(x: event.motion.x, y: event.motion.y)
        case SDL_MOUSEBUTTONDOWN, SDL_MOUSEBUTTONUP:
            move(x: event.button.x, y: event.button.y)
            let code: UInt32
            switch Int32(event.button.button) {
            case 1: code = LinuxInput.BTN_LEFT
            case 2: code = LinuxInput.BTN_MIDDLE
            case 3: code = LinuxInput.BTN_RIGHT
            default: return
            }
            let down = type == SDL_MOUSEBUTTONDOWN
            if down { buttons.insert(code) } else { buttons.remove(code) }
            send(.key(code: code, pressed: down))
        case SDL_MOUSEWHEEL:
            var dy = event.wheel.y
            if event.wheel.direction == SDL_MOUSEWHEEL_FLIPPED.rawValue { dy = -dy }
            // SDL: positive is away from the user (up); vkbd: negative is up.
            if dy != 0 { send(.wheel(-dy)) }
        default:
            break
        }
    }

    /// The loop changed the frame, or wants something done here.
    private func woken() {
        let (rects, resize, stop, work): ([Rect], Bool, Bool, [(Window) -> Void]) = shared.withLock {
            defer { pendingRects.removeAll(); pendingResize = false; wakePending = false; syncs.removeAll() }
            return (pendingRects, pendingResize, finishing, syncs)
        }
        if resize, let console, let window = sdlWindow {
            let size = console.size
            width = size.width
            height = size.height
            _ = makeTexture()
            if !isFullScreen { SDL_SetWindowSize(window, Int32(width), Int32(height)) }
            upload(Rect(x: 0, y: 0, width: width, height: height))
        }
        for r in rects { upload(r) }
        if resize || !rects.isEmpty { present() }
        for w in work { w(self) }
        if stop { quitting = true } // ends the event loop; teardown runs after it
    }

    private var isFullScreen: Bool { shared.withLock { mirror.fullScreen } }

    /// Copies `r` from the console (under its lock, a row at a time into the
    /// texture) — the frame may have a new size since the wake-up: clipped.
    private func upload(_ r: Rect) {
        guard let texture, let console else { return }
        console.withFrame { frame in
            let clip = r.intersection(Rect(x: 0, y: 0, width: min(width, frame.width), height: min(height, frame.height)))
            guard !clip.isEmpty else { return }
            var rect = SDL_Rect(x: Int32(clip.x), y: Int32(clip.y), w: Int32(clip.width), h: Int32(clip.height))
            SDL_UpdateTexture(texture, &rect, frame.pixels + clip.y * frame.stride + clip.x * 4, Int32(frame.stride))
        }
    }

    private func present() {
        guard let renderer, let texture else { return }
        SDL_SetRenderDrawColor(renderer, 0, 0, 0, 255)
        SDL_RenderClear(renderer)
        SDL_RenderCopy(renderer, texture, nil, nil)
        SDL_RenderPresent(renderer)
    }

    func readBack() -> (width: Int, height: Int, pixels: [UInt32])? {
        guard let renderer else { return nil }
        present()
        var w: Int32 = 0, h: Int32 = 0
        guard SDL_GetRendererOutputSize(renderer, &w, &h) == 0, w > 0, h > 0 else { return nil }
        // Read the whole output (outside the logical viewport).
        SDL_RenderSetLogicalSize(renderer, 0, 0)
        defer { SDL_RenderSetLogicalSize(renderer, Int32(width), Int32(height)) }
        var pixels = [UInt32](repeating: 0, count: Int(w) * Int(h))
        let rc = pixels.withUnsafeMutableBytes {
            SDL_RenderReadPixels(renderer, nil, UInt32(SDL_PIXELFORMAT_XRGB8888.rawValue), $0.baseAddress, w * 4)
        }
        return rc == 0 ? (Int(w), Int(h), pixels) : nil
    }

    private func move(x: Int32, y: Int32) {
        let px = max(0, min(x, Int32(width - 1)))
        let py = max(0, min(y, Int32(height - 1)))
        if lastPosition == nil || lastPosition! != (px, py) {
            lastPosition = (px, py)
            send(.absolute(x: px, y: py))
        }
    }

    private func key(_ event: SDL_KeyboardEvent, down: Bool) {
        let scancode = UInt32(event.keysym.scancode.rawValue)
        // The modifier state as of this event (not as of now).
        let mods = UInt32(event.keysym.mod)
        let ctrl = mods & UInt32(KMOD_CTRL.rawValue) != 0, alt = mods & UInt32(KMOD_ALT.rawValue) != 0
        if (224...231).contains(scancode) {
            // Ctrl-Alt pressed and released with nothing in between toggles the grab.
            if down {
                if ctrl && alt { ctrlAltAlone = true }
            } else if ctrlAltAlone {
                ctrlAltAlone = false
                setGrab(!shared.withLock { mirror.grabbed })
            }
        } else if down {
            ctrlAltAlone = false
            if ctrl && alt && event.repeat == 0 && hotkey(scancode) { return }
        }
        guard event.repeat == 0, let code = SDLScancode.linuxKeycode(scancode) else { return }
        if down { pressed.insert(code) } else if pressed.remove(code) == nil { return }
        send(.key(code: code, pressed: down))
    }

    /// Ctrl-Alt-<key> commands; true if the key was one (it is not sent to the guest).
    private func hotkey(_ scancode: UInt32) -> Bool {
        guard let window = sdlWindow else { return false }
        switch scancode {
        case UInt32(SDL_SCANCODE_F.rawValue):
            let full: Bool = shared.withLock { mirror.fullScreen.toggle(); return mirror.fullScreen }
            SDL_SetWindowFullscreen(window, full ? SDL_WINDOW_FULLSCREEN_DESKTOP.rawValue : 0)
            log.info(full ? "full screen" : "windowed")
            return true
        case UInt32(SDL_SCANCODE_U.rawValue):
            if isFullScreen { shared.withLock { mirror.fullScreen = false }; SDL_SetWindowFullscreen(window, 0) }
            SDL_SetWindowSize(window, Int32(width), Int32(height))
            return true
        case UInt32(SDL_SCANCODE_G.rawValue):
            setGrab(!shared.withLock { mirror.grabbed })
            return true
        default:
            return false
        }
    }

    func setGrab(_ on: Bool) {
        guard let window = sdlWindow, on != shared.withLock({ mirror.grabbed }) else { return }
        shared.withLock { mirror.grabbed = on }
        SDL_SetWindowGrab(window, on ? SDL_TRUE : SDL_FALSE)
        SDL_SetWindowKeyboardGrab(window, on ? SDL_TRUE : SDL_FALSE)
        if !on { releaseInput() }
        updateTitle()
    }

    private func updateTitle() {
        guard let window = sdlWindow else { return }
        let hint = shared.withLock { mirror.grabbed } ? " - Press Ctrl-Alt to exit grab" : ""
        SDL_SetWindowTitle(window, options.title + hint)
        let shown = String(cString: SDL_GetWindowTitle(window))
        shared.withLock { mirror.title = shown }
    }

    /// Releases every key and button the guest believes held.
    private func releaseInput() {
        for code in pressed.sorted() { send(.key(code: code, pressed: false)) }
        for code in buttons.sorted() { send(.key(code: code, pressed: false)) }
        pressed.removeAll()
        buttons.removeAll()
    }

    private func closedByUser() {
        if options.closeQuits {
            log.info("SDL window closed: quitting as asked")
        } else {
            log.info("SDL window closed; the device model keeps running")
        }
        loop.postLoopBound { [weak self] in self?.onClosedByUser?() }
        quitting = true
    }

    private func send(_ event: InputEvent) {
        loop.postLoopBound { [weak self] in self?.console?.input?.send(event) }
    }
}

/// SDL scancodes are USB HID usage IDs; this maps them to Linux key codes
/// (as the kernel's hid-input table does).
public enum SDLScancode {
    public static func linuxKeycode(_ scancode: UInt32) -> UInt32? {
        if scancode < UInt32(table.count), table[Int(scancode)] != 0 { return UInt32(table[Int(scancode)]) }
        switch scancode {
        case 0xe0: return 29   // left Ctrl
        case 0xe1: return 42   // left Shift
        case 0xe2: return 56   // left Alt
        case 0xe3: return 125  // left Meta
        case 0xe4: return 97   // right Ctrl
        case 0xe5: return 54   // right Shift
        case 0xe6: return 100  // right Alt (AltGr)
        case 0xe7: return 126  // right Meta
        default: return nil
        }
    }

    /// HID usages 0x00…0x81.
    static let table: [UInt16] = [
        0, 0, 0, 0, 30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38,           // 0x00 a..l
        50, 49, 24, 25, 16, 19, 31, 20, 22, 47, 17, 45, 21, 44, 2, 3,         // 0x10 m..z 1 2
        4, 5, 6, 7, 8, 9, 10, 11, 28, 1, 14, 15, 57, 12, 13, 26,              // 0x20 3..0 ret esc bs tab space - = [
        27, 43, 43, 39, 40, 41, 51, 52, 53, 58, 59, 60, 61, 62, 63, 64,       // 0x30 ] \ #  ; ' ` , . / caps F1..F6
        65, 66, 67, 68, 87, 88, 99, 70, 119, 110, 102, 104, 111, 107, 109, 106, // 0x40 F7..F12 print scroll pause ins home pgup del end pgdn right
        105, 108, 103, 69, 98, 55, 74, 78, 96, 79, 80, 81, 75, 76, 77, 71,    // 0x50 left down up numlock kp/ kp* kp- kp+ kpenter kp1..kp7
        72, 73, 82, 83, 86, 127, 116, 117, 183, 184, 185, 186, 187, 188, 189, 190, // 0x60 kp8 kp9 kp0 kp. 102nd menu power kp= F13..F20
        191, 192, 193, 194, 134, 138, 130, 132, 128, 129, 131, 137, 133, 135, 136, 113, // 0x70 F21..F24 open help props front stop again undo cut copy paste find mute
        115, 114,                                                              // 0x80 volume up, down
    ]
}
