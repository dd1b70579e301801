#if canImport(Glibc)
import Glibc
#endif
import Damage
import Devices
import Console
import GuestKit
import Host
import Testing
import XenBus
import XenProtocol

extension Machine {
    var vdisplDevice: VdisplDevice? { backends.vdispl?.devices[0]?.handler as? VdisplDevice }

    /// Toolstack + backends + a vdispl frontend (optionally a vfb device
    /// too), run until both ends of the vdispl device are Connected.
    func connectDisplay(connectors: [(id: String, width: Int, height: Int)] = [("id0", 320, 200)],
                        withFramebuffer: Bool = false) throws -> DisplayFrontend {
        if withFramebuffer { try Toolstack.addFramebuffer(store: store, domid: domid) }
        try Toolstack.addDisplay(store: store, domid: domid, connectors: connectors)
        try startBackends()
        #expect(run { self.backendState("vdispl") == .initWait })
        let d = DisplayFrontend(domain: guest)
        try d.start()
        #expect(run { d.state == .connected && self.backendState("vdispl") == .connected })
        return d
    }

    /// Sends `request` and runs the loop until its response; its status.
    func perform(_ d: DisplayFrontend, _ request: DisplifRequest, on connector: Int = 0) -> Int32? {
        var status: Int32?
        guard d.request(request, on: connector, done: { status = $0.status }) != nil else { return nil }
        run { status != nil }
        return status
    }

    /// Creates, fills and attaches a buffer; returns it (its framebuffer cookie is `fb`).
    func framebuffer(_ d: DisplayFrontend, fb: UInt64, width: Int = 320, height: Int = 200, color: UInt32) throws -> DisplayFrontend.DumbBuffer {
        let b = try d.allocateBuffer(width: width, height: height)
        b.fill(Rect(x: 0, y: 0, width: width, height: height), color: color)
        #expect(perform(d, d.createRequest(b)) == 0)
        #expect(perform(d, .fbAttach(dbufCookie: b.cookie, fbCookie: fb, width: UInt32(width), height: UInt32(height),
                                     pixelFormat: DisplifPixelFormat.xrgb8888.rawValue)) == 0)
        return b
    }
}

let xr24 = DisplifPixelFormat.xrgb8888.rawValue

func show(_ fb: UInt64, width: Int = 320, height: Int = 200, x: Int = 0, y: Int = 0, bpp: Int = 32) -> DisplifRequest {
    .setConfig(DisplifSetConfig(fbCookie: fb, x: UInt32(x), y: UInt32(y), width: UInt32(width), height: UInt32(height), bpp: UInt32(bpp)))
}

/// Whether the frame shows `b` at (x, y) and black everywhere else (RGB).
func frameShows(_ frame: Frame, _ b: DisplayFrontend.DumbBuffer, x ox: Int = 0, y oy: Int = 0) -> Bool {
    for y in 0..<frame.height {
        for x in 0..<frame.width {
            let inside = x >= ox && y >= oy && x - ox < b.width && y - oy < b.height
            let want = inside ? (b.pixel(x: x - ox, y: y - oy) ?? 0) : 0
            if frame.pixel(x: x, y: y) & 0xffffff != want & 0xffffff { return false }
        }
    }
    return true
}

/// vdispl end to end over SimHost: GuestKit's drm/xen-front-like frontend
/// creates buffers in its memory, grants them, and shows them through the
/// backend; the connector's console must show exactly what it drew, and
/// flips complete with their cookies, in order, after the picture changed.
@Suite(.serialized) struct DisplayTests {
    @Test func aConfiguredBufferAndAFlipShowOnTheConnectorsConsole() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        // No vfb: the connector is console 0.
        let a = try m.framebuffer(d, fb: 100, color: 0x112233)
        a.fill(Rect(x: 10, y: 20, width: 50, height: 40), color: 0xff8000)
        #expect(m.perform(d, show(100)) == 0)
        #expect(m.run { frameShows(m.console.frame, a) })

        let b = try m.framebuffer(d, fb: 101, color: 0x0000ff)
        b.fill(Rect(x: 300, y: 180, width: 20, height: 20), color: 0xffffff)
        var shownAtEvent = false
        d.onFlipDone = { _, _ in shownAtEvent = frameShows(m.console.frame, b) }
        #expect(m.perform(d, .pageFlip(fbCookie: 101)) == 0)
        #expect(m.run { d.flipsDone.count == 1 })
        #expect(d.flipsDone.first?.connector == 0 && d.flipsDone.first?.cookie == 101)
        #expect(shownAtEvent, "the event came before the picture")
        // And back.
        #expect(m.perform(d, .pageFlip(fbCookie: 100)) == 0)
        #expect(m.run { d.flipsDone.count == 2 })
        #expect(d.flipsDone.last?.cookie == 100)
        #expect(frameShows(m.console.frame, a))
        #expect(d.eventsDropped == 0)
        #expect(m.vdisplDevice?.connectors.first?.flipsCompleted == 2)
    }

    @Test func withAVfbTheConnectorGetsTheNextConsoleAndEachConnectorItsOwn() throws {
        let m = try Machine()
        let d = try m.connectDisplay(connectors: [("left", 320, 200), ("right", 160, 120)], withFramebuffer: true)
        let consoles = try #require(m.backends.consoles)
        #expect(consoles.all.count == 3)
        #expect(consoles.owner(of: 0) == Consoles.Owner(device: "vfb-0", head: 0))
        #expect(consoles.owner(of: 1) == Consoles.Owner(device: "vdispl-0", head: 0))
        #expect(consoles.owner(of: 2) == Consoles.Owner(device: "vdispl-0", head: 1))
        #expect(consoles.all[2].frame.width == 160 && consoles.all[2].frame.height == 120)
        #expect(m.vdisplDevice?.connectors.map(\.uniqueID) == ["left", "right"])

        let a = try m.framebuffer(d, fb: 1, color: 0x00ff00)
        let b = try m.framebuffer(d, fb: 2, width: 160, height: 120, color: 0xff00ff)
        #expect(m.perform(d, show(1)) == 0)
        #expect(m.perform(d, show(2, width: 160, height: 120), on: 1) == 0)
        #expect(m.run { frameShows(consoles.all[1].frame, a) && frameShows(consoles.all[2].frame, b) })
        // A flip on connector 1 completes on connector 1 and changes only its screen.
        let c = try m.framebuffer(d, fb: 3, width: 160, height: 120, color: 0x123456)
        #expect(m.perform(d, .pageFlip(fbCookie: 3), on: 1) == 0)
        #expect(m.run { d.flipsDone.count == 1 })
        #expect(d.flipsDone.first?.connector == 1 && d.flipsDone.first?.cookie == 3)
        #expect(frameShows(consoles.all[2].frame, c) && frameShows(consoles.all[1].frame, a))
        #expect(consoles.all[0].frame.pixel(x: 5, y: 5) == 0, "the vfb's console is untouched")
    }

    @Test func aSmallerFramebufferIsShownAtItsPlaceOnBlack() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        let big = try m.framebuffer(d, fb: 1, color: 0xffffff)
        #expect(m.perform(d, show(1)) == 0)
        #expect(m.run { frameShows(m.console.frame, big) })
        let small = try m.framebuffer(d, fb: 2, width: 100, height: 50, color: 0x336699)
        #expect(m.perform(d, show(2, width: 100, height: 50, x: 30, y: 40)) == 0)
        #expect(m.run { frameShows(m.console.frame, small, x: 30, y: 40) })
        // A mode larger than the screen is clipped to it, not refused.
        #expect(m.perform(d, show(1, width: 4000, height: 4000, x: 310, y: 190)) == 0)
        #expect(m.run { m.console.frame.pixel(x: 315, y: 195) & 0xffffff == 0xffffff && m.console.frame.pixel(x: 0, y: 0) == 0 })
        // Reset: the screen goes black.
        #expect(m.perform(d, show(0, width: 0, height: 0, bpp: 0)) == 0)
        #expect(m.run { m.console.frame.pixel(x: 315, y: 195) == 0 })
    }

    @Test func drawingIntoTheShownBufferWithoutAFlipReachesTheScreen() throws {
        var config = BackendConfig()
        config.vdisplPollInterval = .milliseconds(20)
        let m = try Machine(config: config)
        let d = try m.connectDisplay()
        let a = try m.framebuffer(d, fb: 1, color: 0)
        #expect(m.perform(d, show(1)) == 0)
        a.fill(Rect(x: 100, y: 100, width: 10, height: 10), color: 0xabcdef)
        #expect(m.run { m.console.frame.pixel(x: 105, y: 105) & 0xffffff == 0xabcdef })
    }

    @Test func comparesBackOffWhileNothingChangesAndAChangeOrANewModeBringsThemBack() throws {
        var config = BackendConfig()
        config.vdisplPollInterval = .milliseconds(10)
        config.vdisplPollIntervalMax = .milliseconds(80)
        let m = try Machine(config: config)
        let d = try m.connectDisplay()
        let a = try m.framebuffer(d, fb: 1, color: 0)
        _ = try m.framebuffer(d, fb: 2, color: 0x0000ff)
        #expect(m.perform(d, show(1)) == 0)
        let c = try #require(m.vdisplDevice?.connectors.first)
        #expect(c.pollInterval == .milliseconds(10))
        #expect(m.run(seconds: 3) { c.pollInterval == .milliseconds(80) }, "an idle screen is compared at most every 80 ms")
        // Flips do not make compares more frequent: a flipping program draws into the hidden buffer.
        #expect(m.perform(d, .pageFlip(fbCookie: 2)) == 0)
        #expect(m.perform(d, .pageFlip(fbCookie: 1)) == 0)
        #expect(c.pollInterval == .milliseconds(80))
        #expect(m.perform(d, show(1)) == 0)
        #expect(c.pollInterval == .milliseconds(10), "a new mode is compared often again")
        #expect(m.run(seconds: 3) { c.pollInterval == .milliseconds(80) })
        // Even backed off, drawing without a flip shows within the longest interval.
        a.fill(Rect(x: 0, y: 0, width: 4, height: 4), color: 0xfedcba)
        #expect(m.run(seconds: 1) { m.console.frame.pixel(x: 1, y: 1) & 0xffffff == 0xfedcba })
        #expect(c.pollInterval == .milliseconds(10), "a compare that found a change looks often again")
    }

    @Test func everyPixelFormatOfDrmXenFrontIsConverted() throws {
        let m = try Machine()
        let d = try m.connectDisplay(connectors: [("id0", 8, 2)])
        // Two pixels per format: a colour and white (YUYV: one pair).
        let cases: [(DisplifPixelFormat, [UInt8], [UInt32])] = [
            (.xrgb8888, [0x33, 0x22, 0x11, 0xee, 0xff, 0xff, 0xff, 0x00], [0x112233, 0xffffff]),
            (.argb8888, [0x33, 0x22, 0x11, 0x80, 0xff, 0xff, 0xff, 0xff], [0x112233, 0xffffff]),
            (.rgb888, [0x33, 0x22, 0x11, 0xff, 0xff, 0xff], [0x112233, 0xffffff]),
            (.rgb565, [0x00, 0xf8, 0xff, 0xff], [0xff0000, 0xffffff]),
            (.xrgb1555, [0xe0, 0x03, 0xff, 0x7f], [0x00ff00, 0xffffff]),
            (.argb1555, [0x1f, 0x80, 0xff, 0xff], [0x0000ff, 0xffffff]),
            (.xrgb4444, [0x00, 0x0f, 0xff, 0x0f], [0xff0000, 0xffffff]),
            (.argb4444, [0x48, 0xf0, 0xff, 0xff], [0x004488, 0xffffff]),
            // BT.601 limited range: Y 235 with neutral chroma is white, Y 16 black.
            (.yuyv, [235, 128, 16, 128], [0xffffff, 0x000000]),
        ]
        var fb: UInt64 = 10
        for (format, bytes, expected) in cases {
            let b = try d.allocateBuffer(width: 8, height: 2, bpp: format.bitsPerPixel)
            _ = b.withBytes { raw in for (i, v) in bytes.enumerated() { raw[i] = v } }
            #expect(m.perform(d, d.createRequest(b)) == 0)
            #expect(m.perform(d, .fbAttach(dbufCookie: b.cookie, fbCookie: fb, width: 8, height: 2, pixelFormat: format.rawValue)) == 0)
            #expect(m.perform(d, show(fb, width: 8, height: 2, bpp: format.bitsPerPixel)) == 0, "\(format)")
            m.vdisplDevice?.refreshNow()
            let got = [m.console.frame.pixel(x: 0, y: 0) & 0xffffff, m.console.frame.pixel(x: 1, y: 0) & 0xffffff]
            #expect(got == expected, "\(format): \(got.map { String($0, radix: 16) })")
            fb += 1
        }
    }

    @Test func aFrontendThatClosesLosesItsBuffersAndCanConnectAgain() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        _ = try m.framebuffer(d, fb: 1, color: 0x010203)
        #expect(m.vdisplDevice?.bufferCount == 1 && (m.vdisplDevice?.mappedPages ?? 0) > 0)
        d.disconnect()
        #expect(m.run { m.backendState("vdispl") == .closed })
        #expect(m.vdisplDevice?.bufferCount == 0 && m.vdisplDevice?.framebufferCount == 0 && m.vdisplDevice?.mappedPages == 0)
        try d.reconnect()
        #expect(m.run { d.state == .connected && m.backendState("vdispl") == .connected })
        let a = try m.framebuffer(d, fb: 1, color: 0x445566)
        #expect(m.perform(d, show(1)) == 0)
        #expect(m.run { frameShows(m.console.frame, a) })
    }

    @Test func manyRequestsAtOnceAreAllAnswered() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        let a = try m.framebuffer(d, fb: 1, color: 0x777777)
        #expect(m.perform(d, show(1)) == 0)
        // A full ring (32) of requests, three times over, without waiting.
        var answered = 0
        for round in 0..<3 {
            for i in 0..<32 {
                let r: DisplifRequest = i % 2 == 0 ? .pageFlip(fbCookie: 1) : .fbDetach(fbCookie: 999)
                #expect(d.request(r, done: { _ in answered += 1 }) != nil, "round \(round) request \(i)")
            }
            #expect(m.run { answered == 32 * (round + 1) })
        }
        #expect(m.run { d.flipsDone.count == 48 })
        #expect(Set(d.flipsDone.map(\.cookie)) == [1])
        #expect(frameShows(m.console.frame, a))
    }
}

/// GuestKit's `DisplayGuest` (the demo's and the device-model tests' KMS
/// client): two buffers per connector, the first shown, flips one at a time.
@Suite(.serialized) struct DisplayGuestTests {
    @Test func itShowsItsFirstBufferThenFlipsEachOnlyAfterTheLastCompleted() throws {
        let m = try Machine()
        try Toolstack.addDisplay(store: m.store, domid: m.domid, connectors: [("a", 64, 48), ("b", 32, 16)])
        try m.startBackends()
        let g = DisplayGuest(domain: m.guest)
        g.initialDraw = { c, b in b.fill(Rect(x: 0, y: 0, width: b.width, height: b.height), color: c == 0 ? 0x0000ff : 0x00ff00) }
        try g.start()
        #expect(m.run { g.ready })
        #expect(g.failure == nil)
        let consoles = try #require(m.backends.consoles)
        #expect(m.run { frameShows(consoles.all[0].frame, try! #require(g.front(0))) && frameShows(consoles.all[1].frame, try! #require(g.front(1))) })
        var done = 0
        #expect(g.flip(connector: 0, draw: { $0.fill(Rect(x: 0, y: 0, width: 64, height: 48), color: 0xff0000) }, done: { done += 1 }))
        #expect(!g.flip(connector: 0, draw: { _ in Issue.record("drew while a flip was waiting") }), "one flip at a time")
        #expect(m.run { done == 1 })
        #expect(frameShows(consoles.all[0].frame, try #require(g.front(0))))
        #expect(g.front(0)?.pixel(x: 0, y: 0) == 0xff0000)
        #expect(g.flipsDone == [1, 0])
    }
}
