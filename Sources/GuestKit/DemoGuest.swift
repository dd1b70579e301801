#if canImport(Glibc)
import Glibc
#endif
import Damage
import EventLoop
import Host
import Support
import XenBus

/// The built-in demo guest: a vfb and a vkbd frontend and an animated scene
/// a person recognises at a glance — a title, a running clock, moving shapes,
/// and the last key or pointer event it received.
public final class DemoGuest {
    public let fb: FramebufferFrontend
    public let kbd: KeyboardFrontend
    private let loop: EventLoop
    private var timer: EventLoop.TimerID?
    private var frameNumber = 0
    private var lastClock = ""
    private var lastInput = "NONE YET - TYPE OR CLICK IN A VNC OR SDL DISPLAY"
    private var inputChanged = true
    private var shapes: [Rect] = []
    private var drewBackground = false
    private var square = (x: 120.0, y: 360.0, dx: 5.0, dy: 3.5)

    /// Animation period.
    public var tick: Duration = .milliseconds(50)
    /// Find what was drawn with the write-fault engine (as Linux's deferred
    /// I/O does) rather than sending an update per drawing call.
    public var trackWrites = true
    /// Which fault mechanism tracks them (`--dirty-tracking`).
    public var trackingMode: DirtyTrackingMode = .auto

    public init(domain: GuestDomain) {
        fb = FramebufferFrontend(domain: domain)
        kbd = KeyboardFrontend(domain: domain)
        loop = domain.loop
    }

    public func start() throws {
        kbd.onInput = { [weak self] input in
            guard let self else { return }
            switch input {
            case .key(let code, let pressed): self.lastInput = "KEY \(code) \(pressed ? "DOWN" : "UP")"
            case .position(let x, let y, let z): self.lastInput = "POINTER AT \(x),\(y)" + (z != 0 ? " WHEEL \(z)" : "")
            case .motion(let dx, let dy, let dz): self.lastInput = "POINTER MOVED \(dx),\(dy)" + (dz != 0 ? " WHEEL \(dz)" : "")
            case .other(let t): self.lastInput = "EVENT TYPE \(t)"
            }
            self.inputChanged = true
        }
        try fb.start()
        try kbd.start()
        if trackWrites {
            do {
                try fb.startWriteTracking(mode: trackingMode, delay: tick)
                Log.logger("demo-guest").info("framebuffer writes found by \(fb.writeTracking?.rawValue ?? "no") tracking, sent as update events")
            } catch {
                Log.logger("demo-guest").warning("write tracking unavailable (\(error)); sending explicit updates")
            }
        }
        timer = loop.addTimer(after: tick, repeating: tick) { [weak self] in self?.animate() }
    }

    public func stop() {
        if let timer { loop.cancelTimer(timer) }
        timer = nil
    }

    // MARK: Scene

    private var width: Int { fb.width }
    private var height: Int { fb.height }

    /// A vertical gradient from deep blue to teal.
    private func background(_ y: Int) -> UInt32 {
        let t = height > 1 ? y * 255 / (height - 1) : 0
        let r = 12 + t * 10 / 255, g = 24 + t * 80 / 255, b = 64 + t * 70 / 255
        return UInt32(r) << 16 | UInt32(g) << 8 | UInt32(b)
    }

    private func fillBackground(_ rect: Rect) {
        let r = rect.intersection(Rect(x: 0, y: 0, width: width, height: height))
        guard !r.isEmpty else { return }
        for y in r.y..<r.maxY { fb.fill(Rect(x: r.x, y: y, width: r.width, height: 1), color: background(y)) }
    }

    /// Draws `text` with its top-left corner at (x, y); returns the rect it covers.
    @discardableResult
    public func drawText(_ text: String, x: Int, y: Int, scale: Int, color: UInt32, shadow: Bool = true) -> Rect {
        if shadow { drawText(text, x: x + max(1, scale / 2), y: y + max(1, scale / 2), scale: scale, color: 0x000000, shadow: false) }
        var cx = x
        for c in text {
            let rows = BitmapFont.rows(c)
            for (ry, bits) in rows.enumerated() {
                for rx in 0..<BitmapFont.glyphWidth where bits & (0x10 >> UInt8(rx)) != 0 {
                    fb.fill(Rect(x: cx + rx * scale, y: y + ry * scale, width: scale, height: scale), color: color)
                }
            }
            cx += BitmapFont.advance * scale
        }
        return Rect(x: x, y: y, width: BitmapFont.width(of: text, scale: scale) + max(1, scale / 2),
                    height: BitmapFont.glyphHeight * scale + max(1, scale / 2))
    }

    private func centered(_ text: String, y: Int, scale: Int, color: UInt32) -> Rect {
        drawText(text, x: (width - BitmapFont.width(of: text, scale: scale)) / 2, y: y, scale: scale, color: color)
    }

    private func fillCircle(cx: Int, cy: Int, r: Int, color: UInt32) -> Rect {
        for dy in -r...r {
            var half = 0
            while (half + 1) * (half + 1) + dy * dy <= r * r { half += 1 }
            fb.fill(Rect(x: cx - half, y: cy + dy, width: 2 * half + 1, height: 1), color: color)
        }
        return Rect(x: cx - r, y: cy - r, width: 2 * r + 1, height: 2 * r + 1)
    }

    private static func clockText() -> String {
        var t = time(nil)
        var tm = tm()
        localtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))"
    }

    private func animate() {
        guard fb.state == .connected, fb.updateWanted, fb.width > 0 else { drewBackground = false; return }
        var dirty: [Rect] = []
        if !drewBackground {
            drewBackground = true
            fillBackground(Rect(x: 0, y: 0, width: width, height: height))
            _ = centered("XENVFB", y: 24, scale: 10, color: 0xffd040)
            _ = centered("XEN PV FRAMEBUFFER - DEMO GUEST", y: 112, scale: 3, color: 0xe0f0ff)
            fb.fill(Rect(x: 40, y: 326, width: width - 80, height: 2), color: 0x80a0c0)
            lastClock = ""
            inputChanged = true
            dirty.append(Rect(x: 0, y: 0, width: width, height: height))
        }
        frameNumber += 1

        let clock = Self.clockText()
        if clock != lastClock {
            lastClock = clock
            let box = Rect(x: 0, y: 150, width: width, height: 100)
            fillBackground(box)
            _ = centered(clock, y: 160, scale: 11, color: 0xffffff)
            dirty.append(box)
        }
        let status = Rect(x: 0, y: 268, width: width, height: 50)
        fillBackground(status)
        _ = centered("DOMAIN \(fb.domain.domid)  FRAME \(frameNumber)", y: 280, scale: 3, color: 0x90ffb0)
        dirty.append(status)

        // Moving shapes: erase where they were, draw where they are.
        for r in shapes { fillBackground(r); dirty.append(r) }
        shapes.removeAll()
        let top = 340.0, bottom = Double(height - 80)
        square.x += square.dx; square.y += square.dy
        if square.x < 20 || square.x > Double(width - 90) { square.dx = -square.dx; square.x += 2 * square.dx }
        if square.y < top || square.y > bottom - 70 { square.dy = -square.dy; square.y += 2 * square.dy }
        let sq = Rect(x: Int(square.x), y: Int(square.y), width: 70, height: 70)
        fb.fill(sq, color: 0xe04040)
        fb.fill(Rect(x: sq.x + 10, y: sq.y + 10, width: 50, height: 50), color: 0xff8080)
        shapes.append(sq)
        let phase = Double(frameNumber % 160) / 160.0
        let bx = 40 + Int(phase * Double(width - 80))
        let by = Int(top + (bottom - top) / 2 + sin(phase * 4 * Double.pi) * (bottom - top - 60) / 2)
        shapes.append(fillCircle(cx: bx, cy: by, r: 28, color: 0xffe040))
        let barWidth = (frameNumber * 7) % (width - 80)
        let bar = Rect(x: 40, y: Int(bottom) + 8, width: barWidth, height: 10)
        fb.fill(bar, color: 0x40e080)
        shapes.append(Rect(x: 40, y: Int(bottom) + 8, width: width - 80, height: 10))
        for r in shapes { dirty.append(r) }

        if inputChanged {
            inputChanged = false
            let box = Rect(x: 0, y: height - 50, width: width, height: 50)
            fillBackground(box)
            _ = centered("LAST INPUT: " + lastInput, y: height - 40, scale: 2, color: 0xffffff)
            dirty.append(box)
        }
        if fb.writeTracking == nil {
            for r in dirty { fb.update(r) }
        }
    }
}
