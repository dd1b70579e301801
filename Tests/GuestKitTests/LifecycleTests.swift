import Damage
import Devices
import Console
import Displays
import GuestKit
import Host
import Testing
import XenBus
import XenProtocol

@Suite struct ResizeTests {
    @Test func anAllowedResizeChangesTheFrameAndARefusedOneKeepsIt() throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, _) = try m.connectAll()
        #expect(fb.resize(width: 640, height: 480))
        #expect(m.run { m.console.frame.width == 640 && m.console.frame.height == 480 })
        fb.fill(Rect(x: 0, y: 0, width: 640, height: 480), color: 0x123456)
        fb.update(Rect(x: 0, y: 0, width: 640, height: 480))
        #expect(m.run { frameMatchesGuest(m.console.frame, fb) })
        #expect(!fb.resize(width: 1024, height: 768), "fbfront never grows past its initial mode")
        // A hostile guest sends what fbfront would not; each is refused and the geometry stays.
        let refused: [(Int, Int, Int, Int, Int)] = [
            (640, 480, 2560, 12, 0),            // depth 12
            (640, 480, 0, 32, 0),               // stride 0
            (640, 480, -2560, 32, 0),           // negative stride
            (640, 480, 2_097_153, 32, 0),       // stride beyond the mapped framebuffer
            (640, 480, 2560, 32, -4),           // negative offset
            (640, 480, 2560, 32, 2_097_152),    // offset at the end
        ]
        for (w, h, s, d, o) in refused { fb.sendResize(width: w, height: h, stride: s, depth: d, offset: o) }
        #expect(m.run { m.vfbDevice?.resizesRefused == refused.count })
        #expect(m.vfbDevice?.geometry == VfbGeometry(width: 640, height: 480, depth: 32, stride: 2560, offset: 0))
        #expect(m.console.frame.width == 640)
        // Growing past the mapping is clamped, never remapped: 2 MiB / 3200 = 655 rows.
        fb.sendResize(width: 800, height: 100_000, stride: 3200, depth: 32, offset: 0)
        #expect(m.run { m.console.frame.height == 655 })
        #expect(m.backendState("vfb") == .connected)
    }

    @Test func depth16And8And24AreConvertedToXRGB() throws {
        let m = try Machine()
        let (fb, _) = try m.connectAll()
        // Write 16-bit pixels into the guest framebuffer and describe them with RESIZE.
        _ = fb.withPixels { px in
            let p16 = px.baseAddress!.assumingMemoryBound(to: UInt16.self)
            p16[0] = 0xf800; p16[1] = 0x07e0; p16[2] = 0x001f; p16[3] = 0xffff
        }
        fb.sendResize(width: 4, height: 1, stride: 8, depth: 16, offset: 0)
        #expect(m.run { m.console.frame.width == 4 && m.console.frame.pixel(x: 3, y: 0) == 0xffffff })
        #expect([0, 1, 2].map { m.console.frame.pixel(x: $0, y: 0) } == [0xff0000, 0x00ff00, 0x0000ff])

        _ = fb.withPixels { px in
            let b = px.baseAddress!.assumingMemoryBound(to: UInt8.self)
            b[0] = 0xe0; b[1] = 0x1c; b[2] = 0x03; b[3] = 0x00
        }
        fb.sendResize(width: 4, height: 2, stride: 4, depth: 8, offset: 0)
        #expect(m.run { m.console.frame.height == 2 && m.console.frame.pixel(x: 0, y: 0) == 0xff0000 })
        #expect([1, 2, 3].map { m.console.frame.pixel(x: $0, y: 0) } == [0x00ff00, 0x0000ff, 0])

        _ = fb.withPixels { px in
            let b = px.baseAddress!.assumingMemoryBound(to: UInt8.self)
            for (i, v) in [0x33, 0x22, 0x11, 0xcc, 0xbb, 0xaa].enumerated() { b[16 + i] = UInt8(v) }
        }
        fb.sendResize(width: 2, height: 1, stride: 6, depth: 24, offset: 16)
        #expect(m.run { m.console.frame.width == 2 && m.console.frame.height == 1 && m.console.frame.pixel(x: 0, y: 0) == 0x112233 })
        #expect(m.console.frame.pixel(x: 1, y: 0) == 0xaabbcc)
    }
}

@Suite struct InputTests {
    @Test func tenThousandEventsArriveCompleteAndInOrderPastAFullRing() throws {
        let m = try Machine()
        let (_, kbd) = try m.connectAll()
        kbd.paused = true
        var expected: [ReceivedInput] = []
        for i in 0..<10_000 {
            switch i % 4 {
            case 0:
                m.console.input?.send(.key(code: UInt32(1 + i % 200), pressed: true)); expected.append(.key(code: UInt32(1 + i % 200), pressed: true))
            case 1:
                m.console.input?.send(.key(code: UInt32(1 + (i - 1) % 200), pressed: false)); expected.append(.key(code: UInt32(1 + (i - 1) % 200), pressed: false))
            case 2:
                m.console.input?.send(.absolute(x: Int32(i % 800), y: Int32(i % 600))); expected.append(.position(x: Int32(i % 800), y: Int32(i % 600), dz: 0))
            default:
                m.console.input?.send(.key(code: 0x110, pressed: i % 8 == 3)); expected.append(.key(code: 0x110, pressed: i % 8 == 3))
            }
        }
        m.idle(ms: 20)
        #expect(kbd.received.isEmpty)
        #expect(m.vkbdDevice?.queuedEvents == 10_000 - 51, "51 in the ring, the rest queued")
        kbd.resume()
        #expect(m.run { kbd.received.count >= 10_000 })
        #expect(kbd.received == expected)
        #expect(m.vkbdDevice?.queuedEvents == 0)
    }

    @Test func wheelRelativeAndRawPointerAreTranslatedAsQEMUDoes() throws {
        let m = try Machine()
        let (_, kbd) = try m.connectAll(requestRaw: true)
        #expect(m.vkbdDevice?.rawPointer == true)
        m.console.input?.send(.absolute(x: 799, y: 0))
        m.console.input?.send(.absolute(x: 0, y: 599))
        m.console.input?.send(.wheel(-1))
        m.console.input?.send(.relative(dx: 3, dy: -2))
        #expect(m.run { kbd.received.count == 4 })
        #expect(kbd.received == [.position(x: 0x7fff, y: 0, dz: 0), .position(x: 0, y: 0x7fff, dz: 0),
                                 .position(x: 0, y: 0x7fff, dz: -1), .motion(dx: 3, dy: -2, dz: 0)])
    }

    @Test func inputBeforeAnyFrontendIsNotDelivered() throws {
        let m = try Machine()
        try Toolstack.addFramebuffer(store: m.store, domid: 1)
        try m.startBackends()
        m.run { m.backendState("vkbd") == .initWait }
        m.console.input?.send(.key(code: 30, pressed: true))
        #expect(m.vkbdDevice?.queuedEvents == 0)
    }
}

@Suite struct LifecycleTests {
    @Test func theFrontendDisconnectsAndReconnects() throws {
        let m = try Machine()
        let (fb, kbd) = try m.connectAll()
        fb.disconnect()
        #expect(m.run { m.backendState("vfb") == .closed && fb.state == .closed })
        #expect(m.vfbDevice?.geometry == nil, "the backend unmapped on Closed")
        try fb.reconnect()
        #expect(m.run { m.backendState("vfb") == .connected && fb.state == .connected })
        fb.fill(Rect(x: 100, y: 100, width: 50, height: 50), color: 0x00ff00)
        fb.update(Rect(x: 100, y: 100, width: 50, height: 50))
        #expect(m.run { m.console.frame.pixel(x: 120, y: 120) == 0x00ff00 })
        #expect(frameMatchesGuest(m.console.frame, fb))

        kbd.disconnect()
        #expect(m.run { m.backendState("vkbd") == .closed })
        try kbd.reconnect()
        #expect(m.run { m.backendState("vkbd") == .connected && m.vkbdDevice?.ready == true })
        m.console.input?.send(.key(code: 30, pressed: true))
        #expect(m.run { kbd.received.last == .key(code: 30, pressed: true) })
    }

    @Test func aFailedXenstoreReadIsRetriedAndDoesNotCostTheGuestItsDevice() throws {
        let m = try Machine()
        // The backend's reads of the frontend's page-ref fail three times in a
        // row while it connects: before, a failed read looked like a missing
        // key and the device went to Closing.
        m.store.failReads(of: "/local/domain/1/device/vfb/0/page-ref", count: 3)
        let (fb, _) = try m.connectAll()
        #expect(m.store.failedReads == 3)
        #expect(m.backendState("vfb") == .connected && fb.state == .connected)
        #expect(!m.store.journal.contains("/local/domain/0/backend/vfb/1/0/state=5"), "the backend never went to Closing")
    }

    @Test func removingTheBackendDirectoryDropsTheDevice() throws {
        let m = try Machine()
        let (fb, kbd) = try m.connectAll()
        defer { withExtendedLifetime((fb, kbd)) {} }
        #expect(m.backends.vfb?.devices.count == 1)
        try Toolstack.unplug(store: m.store, type: "vfb", domid: 1)
        #expect(m.run { m.backendState("vfb") == .closed })
        try Toolstack.removeDevice(store: m.store, type: "vfb", domid: 1)
        #expect(m.run { m.backends.vfb?.devices.isEmpty == true })
        try m.store.remove("/local/domain/0/backend/vkbd/1")
        #expect(m.run { m.backends.vkbd?.devices.isEmpty == true })
    }

    @Test func aFlappingFrontendIsRateLimitedAndAnInvalidStateIgnored() throws {
        let m = try Machine()
        let (fb, _) = try m.connectAll()
        try m.store.write("\(fb.path)/state", "99")
        m.idle(ms: 20)
        #expect(m.backendState("vfb") == .connected)
        // Flap Closed/Initialising faster than the backend is willing to reconnect
        // (writing the frontend's state directly, so the frontend itself stays out of it).
        fb.detach()
        m.backends.vfb?.resetWindow = .seconds(3600)
        m.backends.vfb?.resetBackoff = .seconds(3600)
        let dev = try #require(m.backends.vfb?.devices[0])
        for i in 0..<12 {
            try m.store.write("\(fb.path)/state", "6")
            #expect(m.run { m.backendState("vfb") == .closed })
            try m.store.write("\(fb.path)/state", "1")
            #expect(m.run { dev.reconnects + dev.postponedReconnects > i })
        }
        #expect(dev.reconnects == 5, "at most five reconnects per window")
        #expect(dev.postponedReconnects >= 7)
        #expect(m.backendState("vfb") == .closed, "the postponed reconnect has not happened yet")
    }

    @Test func shutdownTakesDevicesToClosed() throws {
        let m = try Machine()
        let (fb, _) = try m.connectAll()
        var done = false
        m.backends.shutdown { done = true }
        #expect(done)
        #expect(m.backendState("vfb") == .closed && m.backendState("vkbd") == .closed)
        #expect(m.run { fb.state == .closed })
    }
}

@Suite struct HostileFrontendTests {
    /// Connects with the shared page edited by `edit`; the vfb backend must
    /// refuse (Closing) without crashing, and vkbd is unaffected.
    func refuses(_ edit: @escaping (GuestMapping, Int) -> Void, config: BackendConfig = BackendConfig(), pageRef: String? = nil) throws -> Bool {
        let m = try Machine(config: config)
        try Toolstack.addFramebuffer(store: m.store, domid: 1)
        try m.startBackends()
        m.run { m.backendState("vfb") == .initWait }
        let fb = FramebufferFrontend(domain: m.guest)
        fb.hostile.editPage = edit
        fb.hostile.pageRef = pageRef
        try fb.start()
        m.run { m.backendState("vfb") == .closing || m.backendState("vfb") == .connected }
        return m.backendState("vfb") == .closing && m.vfbDevice?.geometry == nil
    }

    @Test func badDepthIsRefused() throws {
        #expect(try refuses { p, o in p.store(UInt8(15), at: o + XenfbLayout.depth) })
        #expect(try refuses { p, o in p.store(UInt8(0), at: o + XenfbLayout.depth) })
    }

    @Test func badLineLengthIsRefused() throws {
        #expect(try refuses { p, o in p.store(UInt32(0), at: o + XenfbLayout.lineLength) })
        #expect(try refuses { p, o in p.store(UInt32(bitPattern: -3200), at: o + XenfbLayout.lineLength) })
        #expect(try refuses { p, o in p.store(UInt32(2 << 20) + 1, at: o + XenfbLayout.lineLength) })
    }

    @Test func memLengthOverTheLimitOrInRingSpaceIsRefused() throws {
        var small = BackendConfig()
        small.maxFramebufferBytes = 1 << 20
        #expect(try refuses({ _, _ in }, config: small), "2 MiB framebuffer, 1 MiB limit")
        #expect(try refuses { p, o in p.store(UInt32(0), at: o + XenfbLayout.memLength) })
        var big = BackendConfig()
        big.maxFramebufferBytes = 512 << 20
        // 300 MiB needs 150 directories; pd[123...] would be read from the IN ring.
        #expect(try refuses({ p, o in p.store(UInt32(300 << 20), at: o + XenfbLayout.memLength) }, config: big))
    }

    @Test func framesTheGuestDoesNotOwnAreRefused() throws {
        #expect(try refuses({ _, _ in }, pageRef: "999999999"))
        #expect(try refuses({ _, _ in }, pageRef: "-1"))
        #expect(try refuses({ _, _ in }, pageRef: "0x10"))
        #expect(try refuses { p, o in p.store(UInt64(1) << 40, at: o + XenfbLayout.pd64) })
    }

    @Test func hugeWidthAndHeightAreClampedWithoutOverflow() throws {
        let m = try Machine()
        let (fb, kbd) = try m.connectAll { p, o in
            p.store(Int32.max, at: o + XenfbLayout.width)
            p.store(Int32.max, at: o + XenfbLayout.height)
        }
        defer { withExtendedLifetime((fb, kbd)) {} }
        // Clamped to stride/4 = 800 and 2 MiB/3200 = 655 rows.
        #expect(m.vfbDevice?.geometry == VfbGeometry(width: 800, height: 655, depth: 32, stride: 3200, offset: 0))
    }

    @Test func aCorruptedOutRingIsIgnoredNotSpunOn() throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, _) = try m.connectAll()
        m.settle()
        rec.updates.removeAll()
        let page = fb.pageMappingForTests()
        page.store(UInt32(1000), at: XenfbLayout.outProd)
        fb.update(Rect(x: 0, y: 0, width: 1, height: 1))
        m.idle(ms: 50)
        #expect(rec.updates.isEmpty)
        #expect(m.backendState("vfb") == .connected)
    }
}

@Suite struct HostileKeyboardTests {
    @Test func aCorruptedInConsumerIsTreatedAsAFullRingUntilTheGuestRepairsIt() throws {
        let m = try Machine()
        let (fb, kbd) = try m.connectAll()
        defer { withExtendedLifetime(fb) {} }
        kbd.paused = true
        let page = kbd.pageMappingForTests()
        let prod = page.load(UInt32.self, at: XenkbdLayout.inProd)!
        page.store(prod &+ 1000, at: XenkbdLayout.inCons) // consumer far ahead of the producer
        for code in UInt32(1)...100 { m.console.input?.send(.key(code: code, pressed: true)) }
        m.idle(ms: 20)
        #expect(page.load(UInt32.self, at: XenkbdLayout.inProd) == prod, "nothing was written into a ring that looks inconsistent")
        #expect(m.vkbdDevice?.queuedEvents == 100)
        page.store(prod, at: XenkbdLayout.inCons)
        kbd.resume()
        // The next input makes the backend look at the ring again; everything goes, in order.
        m.console.input?.send(.key(code: 101, pressed: true))
        #expect(m.run { kbd.received.count == 101 })
        #expect(kbd.received == (UInt32(1)...101).map { .key(code: $0, pressed: true) })
    }
}
