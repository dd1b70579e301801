#if canImport(Glibc)
import Glibc
#endif
import CDisplayShims
import CSDL2
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
/// SDL has no file descriptor to wait on, so events are pumped from a loop
/// timer while the window exists: at 60 Hz for a second after any activity,
/// then at 20 Hz. This is the one periodic wake-up of the process, and only
/// with a window open. SDL keeps one event queue per process, so one
/// SDLDisplay per process is supported.
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
    /// Called when the window is closed and `closeQuits` is set.
    public var onQuit: (() -> Void)?

    private let loop: EventLoop
    private weak var console: Console?
    private var log: Logger
    private var window: OpaquePointer?
    private var renderer: OpaquePointer?
    private var texture: OpaquePointer?
    private var frame: Frame
    private var pumpTimer: EventLoop.TimerID?
    private var presentTimer: EventLoop.TimerID?
    private var lastActivity: UInt64 = 0
    private var pressed: Set<UInt32> = []
    private var buttons: Set<UInt32> = []
    private var lastPosition: (Int32, Int32)?
    private var ctrlAltAlone = false
    private var sdlStarted = false

    /// Whether keyboard and pointer are grabbed.
    public private(set) var grabbed = false
    /// Whether the window is full screen.
    public private(set) var isFullScreen = false
    /// Whether the window is open.
    public var isOpen: Bool { window != nil }
    /// The pump interval in use, for tests and documentation (ms).
    public private(set) var pumpIntervalMilliseconds = 0

    public static let fastPumpMilliseconds = 16   // ≤ 60 Hz
    public static let idlePumpMilliseconds = 50   // 20 Hz

    public convenience init(loop: EventLoop, console: Console, title: String) throws(DisplayError) {
        try self.init(options: Options(title: title), loop: loop, console: console)
    }

    /// Opens the window at the frame's size. Add it to the console afterwards.
    public init(options: Options, loop: EventLoop, console: Console) throws(DisplayError) {
        self.options = options
        self.loop = loop
        self.console = console
        self.frame = console.frame
        self.log = Log.logger("display.sdl")
        // libSDL2 is loaded on first use, not linked (CDisplayShims/sdl.c).
        // Its error names the option and the Debian package to install.
        var reason = [CChar](repeating: 0, count: 1024)
        guard xenvfb_sdl_load(&reason, reason.count) == 0 else {
            throw DisplayError("sdl: \(reason.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })")
        }
        // Our loop handles signals (signalfd); SDL must not install handlers.
        SDL_SetHint(SDL_HINT_NO_SIGNAL_HANDLERS, "1")
        SDL_SetHint(SDL_HINT_QUIT_ON_LAST_WINDOW_CLOSE, "0")
        if let driver = options.videoDriver { SDL_SetHint(SDL_HINT_VIDEODRIVER, driver) }
        guard SDL_InitSubSystem(SDL_INIT_VIDEO) == 0 else {
            throw DisplayError("sdl: cannot initialise SDL video: \(Self.sdlError()) (is DISPLAY set?)")
        }
        sdlStarted = true
        let undefinedPosition: Int32 = 0x1FFF_0000 // SDL_WINDOWPOS_UNDEFINED (a macro)
        var flags = SDL_WINDOW_RESIZABLE.rawValue | SDL_WINDOW_ALLOW_HIGHDPI.rawValue
        if options.fullScreen { flags |= SDL_WINDOW_FULLSCREEN_DESKTOP.rawValue }
        guard let window = SDL_CreateWindow(options.title, undefinedPosition, undefinedPosition,
                                            Int32(frame.width), Int32(frame.height), flags) else {
            let message = Self.sdlError()
            SDL_QuitSubSystem(SDL_INIT_VIDEO)
            sdlStarted = false
            throw DisplayError("sdl: cannot open a window: \(message)")
        }
        self.window = window
        isFullScreen = options.fullScreen
        guard let renderer = SDL_CreateRenderer(window, -1, 0) ?? SDL_CreateRenderer(window, -1, SDL_RENDERER_SOFTWARE.rawValue) else {
            let message = Self.sdlError()
            SDL_DestroyWindow(window)
            SDL_QuitSubSystem(SDL_INIT_VIDEO)
            sdlStarted = false
            throw DisplayError("sdl: cannot create a renderer: \(message)")
        }
        self.renderer = renderer
        try makeTexture()
        updateTitle()
        log.info("SDL window open", metadata: ["driver": "\(String(cString: SDL_GetCurrentVideoDriver()))",
                                               "size": "\(frame.width)x\(frame.height)"])
        schedulePump()
    }

    deinit { close() }

    private static func sdlError() -> String { String(cString: SDL_GetError()) }

    private func makeTexture() throws(DisplayError) {
        guard let renderer else { return }
        if let texture { SDL_DestroyTexture(texture) }
        texture = SDL_CreateTexture(renderer, UInt32(SDL_PIXELFORMAT_XRGB8888.rawValue), Int32(SDL_TEXTUREACCESS_STREAMING.rawValue),
                                    Int32(frame.width), Int32(frame.height))
        guard texture != nil else { throw DisplayError("sdl: cannot create a texture: \(Self.sdlError())") }
        SDL_RenderSetLogicalSize(renderer, Int32(frame.width), Int32(frame.height))
    }

    // MARK: Display

    public func frameDidResize(_ frame: Frame) {
        self.frame = frame
        guard let window else { return }
        do { try makeTexture() } catch { log.error("\(error)"); return }
        if !isFullScreen { SDL_SetWindowSize(window, Int32(frame.width), Int32(frame.height)) }
        upload(frame.bounds)
        schedulePresent()
    }

    public func frameDidUpdate(_ frame: Frame, rects: [Rect]) {
        guard window != nil else { return }
        for r in rects { upload(r) }
        schedulePresent()
    }

    public func close() {
        if let t = presentTimer { loop.cancelTimer(t); presentTimer = nil }
        if let t = pumpTimer { loop.cancelTimer(t); pumpTimer = nil }
        releaseInput()
        if let texture { SDL_DestroyTexture(texture); self.texture = nil }
        if let renderer { SDL_DestroyRenderer(renderer); self.renderer = nil }
        if let window { SDL_DestroyWindow(window); self.window = nil; log.info("SDL window closed") }
        if sdlStarted { SDL_QuitSubSystem(SDL_INIT_VIDEO); sdlStarted = false }
    }

    // MARK: Drawing

    private func upload(_ r: Rect) {
        guard let texture, !r.isEmpty else { return }
        var rect = SDL_Rect(x: Int32(r.x), y: Int32(r.y), w: Int32(r.width), h: Int32(r.height))
        SDL_UpdateTexture(texture, &rect, frame.pixels + r.y * frame.stride + r.x * 4, Int32(frame.stride))
    }

    private func schedulePresent() {
        guard presentTimer == nil, window != nil else { return }
        presentTimer = loop.addTimer(after: .zero) { [weak self] in
            self?.presentTimer = nil
            self?.present()
        }
    }

    private func present() {
        guard let renderer, let texture else { return }
        SDL_SetRenderDrawColor(renderer, 0, 0, 0, 255)
        SDL_RenderClear(renderer)
        SDL_RenderCopy(renderer, texture, nil, nil)
        SDL_RenderPresent(renderer)
    }

    /// The window's picture as XRGB words, at the window's output size
    /// (equal to the frame at 1:1). For tests.
    public func readBack() -> (width: Int, height: Int, pixels: [UInt32])? {
        guard let renderer else { return nil }
        present()
        var w: Int32 = 0, h: Int32 = 0
        guard SDL_GetRendererOutputSize(renderer, &w, &h) == 0, w > 0, h > 0 else { return nil }
        // Read the whole output (outside the logical viewport).
        SDL_RenderSetLogicalSize(renderer, 0, 0)
        defer { SDL_RenderSetLogicalSize(renderer, Int32(frame.width), Int32(frame.height)) }
        var pixels = [UInt32](repeating: 0, count: Int(w) * Int(h))
        let rc = pixels.withUnsafeMutableBytes {
            SDL_RenderReadPixels(renderer, nil, UInt32(SDL_PIXELFORMAT_XRGB8888.rawValue), $0.baseAddress, w * 4)
        }
        return rc == 0 ? (Int(w), Int(h), pixels) : nil
    }

    // MARK: Events

    private func schedulePump() {
        guard window != nil, pumpTimer == nil else { return }
        let recent = EventLoop.now() &- lastActivity < 1_000_000_000
        pumpIntervalMilliseconds = recent ? Self.fastPumpMilliseconds : Self.idlePumpMilliseconds
        pumpTimer = loop.addTimer(after: .milliseconds(pumpIntervalMilliseconds)) { [weak self] in
            guard let self else { return }
            self.pumpTimer = nil
            self.pump()
            self.schedulePump()
        }
    }

    /// Handles every queued SDL event now (also called by tests).
    public func pump() {
        var event = SDL_Event()
        while window != nil, SDL_PollEvent(&event) != 0 {
            handle(event)
        }
    }

    private func handle(_ event: SDL_Event) {
        let type = SDL_EventType(event.type)
        switch type {
        case SDL_QUIT:
            windowClosed()
        case SDL_WINDOWEVENT:
            lastActivity = EventLoop.now()
            switch SDL_WindowEventID(UInt32(event.window.event)) {
            case SDL_WINDOWEVENT_CLOSE: windowClosed()
            case SDL_WINDOWEVENT_EXPOSED, SDL_WINDOWEVENT_SIZE_CHANGED, SDL_WINDOWEVENT_RESTORED: present()
            case SDL_WINDOWEVENT_FOCUS_LOST: releaseInput()
            default: break
            }
        case SDL_KEYDOWN, SDL_KEYUP:
            lastActivity = EventLoop.now()
            key(event.key, down: type == SDL_KEYDOWN)
        case SDL_MOUSEMOTION:
            lastActivity = EventLoop.now()
            move(x: event.motion.x, y: event.motion.y)
        case SDL_MOUSEBUTTONDOWN, SDL_MOUSEBUTTONUP:
            lastActivity = EventLoop.now()
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
            lastActivity = EventLoop.now()
            var dy = event.wheel.y
            if event.wheel.direction == SDL_MOUSEWHEEL_FLIPPED.rawValue { dy = -dy }
            // SDL: positive is away from the user (up); vkbd: negative is up.
            if dy != 0 { send(.wheel(-dy)) }
        default:
            break
        }
    }

    private func move(x: Int32, y: Int32) {
        let px = max(0, min(x, Int32(frame.width - 1)))
        let py = max(0, min(y, Int32(frame.height - 1)))
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
                setGrab(!grabbed)
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
        guard let window else { return false }
        switch scancode {
        case UInt32(SDL_SCANCODE_F.rawValue):
            isFullScreen.toggle()
            SDL_SetWindowFullscreen(window, isFullScreen ? SDL_WINDOW_FULLSCREEN_DESKTOP.rawValue : 0)
            log.info(isFullScreen ? "full screen" : "windowed")
            return true
        case UInt32(SDL_SCANCODE_U.rawValue):
            if isFullScreen { isFullScreen = false; SDL_SetWindowFullscreen(window, 0) }
            SDL_SetWindowSize(window, Int32(frame.width), Int32(frame.height))
            return true
        case UInt32(SDL_SCANCODE_G.rawValue):
            setGrab(!grabbed)
            return true
        default:
            return false
        }
    }

    /// Grabs or releases keyboard and pointer (also called by the Ctrl-Alt hotkey).
    public func setGrab(_ on: Bool) {
        guard let window, on != grabbed else { return }
        grabbed = on
        SDL_SetWindowGrab(window, on ? SDL_TRUE : SDL_FALSE)
        SDL_SetWindowKeyboardGrab(window, on ? SDL_TRUE : SDL_FALSE)
        if !on { releaseInput() }
        updateTitle()
    }

    private func updateTitle() {
        guard let window else { return }
        let hint = grabbed ? " - Press Ctrl-Alt to exit grab" : ""
        SDL_SetWindowTitle(window, options.title + hint)
    }

    /// The title as shown (tests).
    public var title: String? { window.map { String(cString: SDL_GetWindowTitle($0)) } }

    /// Releases every key and button the guest believes held.
    private func releaseInput() {
        for code in pressed.sorted() { send(.key(code: code, pressed: false)) }
        for code in buttons.sorted() { send(.key(code: code, pressed: false)) }
        pressed.removeAll()
        buttons.removeAll()
    }

    private func windowClosed() {
        if options.closeQuits {
            log.info("SDL window closed: quitting as asked")
            onQuit?()
        } else {
            log.info("SDL window closed; the device model keeps running")
        }
        close()
    }

    private func send(_ event: InputEvent) {
        console?.input?.send(event)
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
