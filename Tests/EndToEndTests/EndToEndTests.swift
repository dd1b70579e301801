#if canImport(Glibc)
import Glibc
#endif
import Damage
import Devices
import Console
import Displays
import EventLoop
import GuestKit
import Host
import Testing
import XenBus
import XenStore

@Suite struct EndToEndTests {
    @Test func aGuestUpdateBecomesAPNGIdenticalToTheGuestFramebuffer() throws {
        let m = try XenstoreMachine(domid: 3)
        defer { m.stop() }
        let out = try makeTempDir()
        defer { removeTree(out) }
        let png = try PNGDisplay(spec: "png:dir=\(out),interval=0", loop: m.loop)
        m.console.add(png)
        try m.start()
        let guestStore = try XenStoreConnection(socketPath: m.guestSocket, loop: m.loop)
        let guest = try GuestDomain(host: SimHost(directory: m.dir, domid: 3), store: guestStore, loop: m.loop)
        let fb = FramebufferFrontend(domain: guest)
        let kbd = KeyboardFrontend(domain: guest)
        try fb.start()
        try kbd.start()
        #expect(m.run { fb.state == .connected && fb.updateWanted && m.backendState("vfb") == .connected && m.backendState("vkbd") == .connected })
        #expect(try m.dom0.read("/local/domain/0/device-model/3/state") == "running")

        // A picture with detail in every channel, then one small update on top.
        _ = fb.withPixels { px in
            for y in 0..<fb.height {
                let row = (px.baseAddress! + y * fb.stride).assumingMemoryBound(to: UInt32.self)
                for x in 0..<fb.width { row[x] = UInt32((x * 5) & 0xff) << 16 | UInt32((y * 7) & 0xff) << 8 | UInt32((x + y) & 0xff) }
            }
        }
        fb.update(Rect(x: 0, y: 0, width: fb.width, height: fb.height))
        fb.fill(Rect(x: 333, y: 222, width: 17, height: 9), color: 0xfedcba)
        fb.update(Rect(x: 333, y: 222, width: 17, height: 9))
        let before = png.framesWritten
        #expect(m.run { m.console.frame.pixel(x: 340, y: 225) == 0xfedcba && png.framesWritten > before })
        m.run(seconds: 0.3) { false } // let the last capture settle
        png.close()

        let decoded = try decodeWithPillow(png.latestPath)
        #expect(decoded.width == fb.width && decoded.height == fb.height)
        var expected = [UInt8]()
        expected.reserveCapacity(fb.width * fb.height * 3)
        for y in 0..<fb.height {
            for x in 0..<fb.width {
                let p = fb.pixel(x: x, y: y)!
                expected += [UInt8(p >> 16 & 0xff), UInt8(p >> 8 & 0xff), UInt8(p & 0xff)]
            }
        }
        #expect(decoded.rgb == expected, "the PNG is byte-identical to the guest's framebuffer")
        withExtendedLifetime((guestStore, guest, kbd)) {}
    }

    @Test func theGuestAsAProcessOfItsOwnConnectsDrawsAndReceivesInputInOrder() throws {
        let m = try XenstoreMachine(domid: 4)
        defer { m.stop() }
        try m.start()
        let child = try ChildProcess(try xenvfbPath(tool: "xenvfb-testtool"),
                                     ["sim-guest", "--machine", m.dir, "--xenstore", m.guestSocket, "--domid", "4"],
                                     loop: m.loop, stderrPath: m.dir + "/guest.log")
        defer { child.terminate() }
        #expect(m.run { child.lines.contains("drawn") && m.backendState("vfb") == .connected }, "guest output: \(child.lines)")
        #expect(m.run {
            m.console.frame.pixel(x: 799, y: 599) & 0xffffff == ((799 * 7) & 0xff) << 16 | ((599 * 3) & 0xff) << 8 | ((799 ^ 599) & 0xff)
        })
        var mismatches = 0
        for y in stride(from: 0, to: 600, by: 7) {
            for x in stride(from: 0, to: 800, by: 3) {
                let want = UInt32((x * 7) & 0xff) << 16 | UInt32((y * 3) & 0xff) << 8 | UInt32((x ^ y) & 0xff)
                if m.console.frame.pixel(x: x, y: y) & 0xffffff != want { mismatches += 1 }
            }
        }
        #expect(mismatches == 0)

        #expect(m.run { (m.console.input as? VkbdDevice)?.ready == true })
        var expected: [String] = []
        for i in 0..<2000 {
            if i % 2 == 0 {
                m.console.input?.send(.key(code: UInt32(1 + i % 100), pressed: i % 4 == 0))
                expected.append("key \(1 + i % 100) \(i % 4 == 0 ? 1 : 0)")
            } else {
                m.console.input?.send(.absolute(x: Int32(i % 800), y: Int32(i % 600)))
                expected.append("pos \(i % 800) \(i % 600) 0")
            }
        }
        #expect(m.run { child.lines.filter { $0.hasPrefix("key") || $0.hasPrefix("pos") }.count >= expected.count })
        #expect(child.lines.filter { $0.hasPrefix("key") || $0.hasPrefix("pos") } == expected)

        // The guest process goes away: its frontend directory stays at Connected,
        // but the toolstack's removal of the backend directory drops the devices.
        #expect(child.terminate() == 0)
        try Toolstack.removeDevice(store: m.dom0, type: "vfb", domid: 4)
        try Toolstack.removeDevice(store: m.dom0, type: "vkbd", domid: 4)
        #expect(m.run { m.backends.vfb?.devices.isEmpty == true && m.backends.vkbd?.devices.isEmpty == true })
    }

    @Test func xenstorePermissionsKeepTheGuestOutOfTheBackendDirectory() throws {
        let m = try XenstoreMachine(domid: 5)
        defer { m.stop() }
        try m.start()
        let guestStore = try XenStoreConnection(socketPath: m.guestSocket, loop: m.loop)
        let be = "/local/domain/0/backend/vfb/5/0"
        #expect(try guestStore.read("\(be)/state") != nil, "the guest may read its backend")
        #expect(throws: (any Error).self, "but not write it") { try guestStore.write("\(be)/state", "4") }
        #expect(throws: (any Error).self) { try guestStore.write("/local/domain/0/device-model/5/state", "x") }
    }
}

@Suite struct DemoCommandTests {
    /// Each tracking mode alone finds what the demo guest draws: the guest
    /// sends no update of its own, so the picture only shows up if it works.
    @Test(arguments: ["uffd", "mprotect", "compare"])
    func theDemoWritesPicturesOfItsGuestAndStopsByItself(tracking: String) throws {
        let out = try makeTempDir()
        defer { removeTree(out) }
        let loop = try EventLoop()
        let child = try ChildProcess(try xenvfbPath(), ["demo", "--seconds", "3", "--dirty-tracking", tracking,
                                                               "--display", "png:dir=\(out),interval=500"],
                                     loop: loop, stderrPath: out + "/demo.log")
        var status: Int32 = -1
        var raw: Int32 = 0
        let deadline = EventLoop.now() + 60_000_000_000
        while EventLoop.now() < deadline {
            if waitpid(child.pid, &raw, WNOHANG) == child.pid {
                status = (raw >> 8) & 0xff
                child.exited = true // reaped here; nothing left to terminate
                loop.unwatch(fd: child.outFD)
                close(child.outFD)
                break
            }
            loop.runOnce(timeoutMilliseconds: 50)
        }
        #expect(status == 0, "the demo exits 0 after --seconds")
        let picture = try decodeWithPillow(out + "/latest.png")
        #expect(picture.width == 800 && picture.height == 600)
        // The title is drawn in 0xffd040 and the clock in white: both must be on screen.
        var colours = Set<UInt32>()
        for i in stride(from: 0, to: picture.rgb.count, by: 3) {
            colours.insert(UInt32(picture.rgb[i]) << 16 | UInt32(picture.rgb[i + 1]) << 8 | UInt32(picture.rgb[i + 2]))
        }
        #expect(colours.contains(0xffd040) && colours.contains(0xffffff) && colours.contains(0xe04040))
        let log = String(decoding: (try? readFile(out + "/demo.log")) ?? [], as: UTF8.self)
        #expect(log.contains("pictures of the guest's screen go to \(out)"), "\(log)")
        #expect(log.contains("framebuffer writes found by \(tracking) tracking"), "\(log)")
    }
}

func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw TestFailure("cannot open \(path)") }
    defer { close(fd) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        data += chunk[0..<n]
    }
    return data
}
