#if canImport(Glibc)
import Glibc
#endif
import Damage
import EventLoop
import Support
import XenProtocol

/// What a KMS program does on drm/xen-front, driven through GuestKit's
/// `DisplayFrontend`: per connector two dumb buffers (DBUF_CREATE, then
/// FB_ATTACH each), the first shown with SET_CONFIG (as drmModeSetCrtc
/// does), then page flips, each drawn into the buffer not shown and sent
/// only after the previous flip completed (as a compositor waits for its
/// flip event). For the demo (`xenvfb demo --vdispl`) and the tests.
public final class DisplayGuest {
    public let display: DisplayFrontend
    /// Per connector: its two buffers, and which one is shown.
    public private(set) var buffers: [[DisplayFrontend.DumbBuffer]] = []
    public private(set) var shown: [Int] = []
    /// Every connector shows its first buffer.
    public private(set) var ready = false
    /// What went wrong in the set-up, if anything.
    public private(set) var failure: String?
    /// Flips sent and completed, per connector.
    public private(set) var flipsDone: [Int] = []
    /// Draws a connector's first picture (connector, buffer) before it is shown.
    public var initialDraw: ((Int, DisplayFrontend.DumbBuffer) -> Void)?
    public var onReady: (() -> Void)?
    private var flipping: [Bool] = []
    private var flipDone: [(() -> Void)?] = []
    private var settingUp = false
    private let log = Log.logger("guest-display")

    public init(domain: GuestDomain, devid: UInt32 = 0) {
        display = DisplayFrontend(domain: domain, devid: devid)
    }

    /// The framebuffer cookie of connector `c`'s buffer `i`.
    public static func framebufferCookie(connector c: Int, buffer i: Int) -> UInt64 { UInt64(1000 * (c + 1) + i) }

    public func start() throws {
        display.onBackendConnected = { [weak self] in self?.setUp() }
        display.onFlipDone = { [weak self] c, _ in self?.flipCompleted(c) }
        try display.start()
    }

    /// The buffer connector `c` shows.
    public func front(_ c: Int) -> DisplayFrontend.DumbBuffer? {
        c < buffers.count ? buffers[c][shown[c]] : nil
    }

    /// Draws with `draw` into connector `c`'s hidden buffer and flips to it;
    /// `done` runs when the backend says the flip is on screen. False (and
    /// nothing drawn) while the previous flip is still waiting.
    @discardableResult
    public func flip(connector c: Int, draw: (DisplayFrontend.DumbBuffer) -> Void, done: (() -> Void)? = nil) -> Bool {
        guard ready, c < buffers.count, !flipping[c] else { return false }
        let next = 1 - shown[c]
        draw(buffers[c][next])
        flipping[c] = true
        flipDone[c] = done
        let sent = display.request(.pageFlip(fbCookie: Self.framebufferCookie(connector: c, buffer: next)), on: c) { [weak self] r in
            guard let self, r.status != 0 else { return }
            self.log.error("PG_FLIP on connector \(c) refused: \(r.status)")
            self.flipping[c] = false
        }
        guard sent != nil else { flipping[c] = false; return false }
        shown[c] = next
        return true
    }

    private func flipCompleted(_ c: Int) {
        guard c < flipping.count else { return }
        flipping[c] = false
        flipsDone[c] += 1
        let done = flipDone[c]
        flipDone[c] = nil
        done?()
    }

    /// Buffers, framebuffers and the first mode, one request after another.
    private func setUp() {
        guard !settingUp, !ready else { return }
        settingUp = true
        var steps: [(DisplifRequest, Int)] = []
        buffers = []
        for c in display.connectors {
            var pair: [DisplayFrontend.DumbBuffer] = []
            for i in 0..<2 {
                guard let b = try? display.allocateBuffer(width: c.width, height: c.height) else {
                    failure = "connector \(c.index): no guest memory for a \(c.width)x\(c.height) buffer"
                    return
                }
                pair.append(b)
                steps.append((display.createRequest(b), 0))
                steps.append((.fbAttach(dbufCookie: b.cookie, fbCookie: Self.framebufferCookie(connector: c.index, buffer: i),
                                        width: UInt32(c.width), height: UInt32(c.height),
                                        pixelFormat: DisplifPixelFormat.xrgb8888.rawValue), 0))
            }
            initialDraw?(c.index, pair[0])
            buffers.append(pair)
            steps.append((.setConfig(DisplifSetConfig(fbCookie: Self.framebufferCookie(connector: c.index, buffer: 0), x: 0, y: 0,
                                                      width: UInt32(c.width), height: UInt32(c.height), bpp: 32)), c.index))
        }
        shown = Array(repeating: 0, count: buffers.count)
        flipping = Array(repeating: false, count: buffers.count)
        flipDone = Array(repeating: nil, count: buffers.count)
        flipsDone = Array(repeating: 0, count: buffers.count)
        run(steps[...])
    }

    private func run(_ steps: ArraySlice<(DisplifRequest, Int)>) {
        guard let (request, connector) = steps.first else {
            ready = true
            settingUp = false
            onReady?()
            return
        }
        let sent = display.request(request, on: connector) { [weak self] r in
            guard let self else { return }
            guard r.status == 0 else {
                self.failure = "\(request) refused: status \(r.status)"
                self.log.error("\(self.failure!)")
                self.settingUp = false
                return
            }
            self.run(steps.dropFirst())
        }
        if sent == nil { failure = "the request ring is full"; settingUp = false }
    }

    // MARK: Drawing helpers

    /// Draws `text` (BitmapFont) into `b` with its top-left corner at (x, y).
    public static func drawText(_ text: String, in b: DisplayFrontend.DumbBuffer, x: Int, y: Int, scale: Int, color: UInt32) {
        var cx = x
        for ch in text {
            for (ry, bits) in BitmapFont.rows(ch).enumerated() {
                for rx in 0..<BitmapFont.glyphWidth where bits & (0x10 >> UInt8(rx)) != 0 {
                    b.fill(Rect(x: cx + rx * scale, y: y + ry * scale, width: scale, height: scale), color: color)
                }
            }
            cx += BitmapFont.advance * scale
        }
    }
}

/// The demo's animation on a `DisplayGuest`: each frame is drawn into the
/// hidden buffer and flipped, the next one only after the flip completed.
public final class DisplayDemo {
    public let guest: DisplayGuest
    private let loop: EventLoop
    private var timer: EventLoop.TimerID?
    private var frame = 0
    public var tick: Duration = .milliseconds(50)

    public init(domain: GuestDomain, devid: UInt32 = 0) {
        guest = DisplayGuest(domain: domain, devid: devid)
        loop = domain.loop
    }

    public func start() throws {
        guest.initialDraw = { [weak self] c, b in self?.draw(c, b) }
        try guest.start()
        timer = loop.addTimer(after: tick, repeating: tick) { [weak self] in self?.animate() }
    }

    public func stop() {
        if let timer { loop.cancelTimer(timer) }
        timer = nil
    }

    private func animate() {
        guard guest.ready else { return }
        frame += 1
        for c in 0..<guest.buffers.count { guest.flip(connector: c) { self.draw(c, $0) } }
    }

    private func draw(_ c: Int, _ b: DisplayFrontend.DumbBuffer) {
        let w = b.width, h = b.height
        // A diagonal gradient that scrolls: every pixel changes every frame.
        let shift = frame * 4
        _ = b.withBytes { px in
            for y in 0..<h {
                let row = (px.baseAddress! + y * b.stride).assumingMemoryBound(to: UInt32.self)
                for x in 0..<w {
                    let t = (x + y + shift) & 0x1ff
                    let v = UInt32(t < 256 ? t : 511 - t)
                    row[x] = (v / 3) << 16 | (v / 2) << 8 | UInt32(90 + Int(v) / 3)
                }
            }
        }
        let scale = max(1, min(w / 160, 5))
        DisplayGuest.drawText("XENVFB VDISPL", in: b, x: 20, y: 20, scale: scale * 2, color: 0xffd040)
        DisplayGuest.drawText("CONNECTOR \(c)  \(w)X\(h)", in: b, x: 20, y: 20 + 18 * scale, scale: scale, color: 0xffffff)
        DisplayGuest.drawText("PAGE FLIPS DONE: \(guest.flipsDone.count > c ? guest.flipsDone[c] : 0)", in: b,
                              x: 20, y: 20 + 30 * scale, scale: scale, color: 0x90ffb0)
        let box = 30 * scale
        let x = (frame * 6) % max(w - box, 1)
        b.fill(Rect(x: x, y: h - box - 10, width: box, height: box), color: 0xe04040)
    }
}
