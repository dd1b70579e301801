#if canImport(Glibc)
import Glibc
#endif
import Damage
import Devices
import Console
import Displays
import GuestKit
import Host
import Testing
import XenBus
import XenProtocol

/// A hostile guest (GuestKit's HostileGuest) against the backends, beyond
/// the single bad values LifecycleTests covers: values that change while the
/// backend reads them, floods of resizes, a frontend that vanishes in the
/// middle of the handshake. Each time the backend stays up, its geometry
/// stays inside the mapped framebuffer, the guest's other device keeps
/// working, and memory stays bounded.
@Suite struct HostileGuestTests {
    /// The geometry lies inside the 2 MiB framebuffer the frontend mapped,
    /// and the frame follows it at the next tick.
    func checkGeometry(_ m: Machine) {
        m.vfbDevice?.flush()
        guard let g = m.vfbDevice?.geometry else { return }
        #expect(g.width > 0 && g.height > 0 && g.width * g.bytesPerPixel <= g.stride)
        #expect(g.offset >= 0 && g.offset + g.height * g.stride <= 2 << 20, "\(g)")
        #expect(m.console.frame.width == g.width && m.console.frame.height == g.height)
    }

    /// Keys still reach the guest's keyboard (the other device keeps working).
    func checkKeyboard(_ m: Machine, _ kbd: KeyboardFrontend, code: UInt32) {
        let before = kbd.received.count
        m.console.input?.send(.key(code: code, pressed: true))
        #expect(m.run { kbd.received.count > before })
        #expect(kbd.received.last == .key(code: code, pressed: true))
    }

    @Test func valuesThatChangeBetweenTwoReadsNeverEscapeTheGeometry() throws {
        let m = try Machine()
        let (fb, kbd) = try m.connectAll()
        m.settle()
        let hostile = HostileGuest(fb: fb)
        try hostile.startFlipping()
        // Notifications while the slots and out_prod flip under the backend.
        for i in 0..<200 {
            fb.send(HostileGuest.update(x: Int32(i % 50), y: 0, width: 4, height: 4))
            m.loop.runOnce(timeoutMilliseconds: 1)
            if i % 20 == 0 { checkGeometry(m) }
        }
        let rounds = hostile.stopFlipping()
        #expect(rounds > 0)
        m.idle(ms: 30)
        checkGeometry(m)
        #expect(m.backendState("vfb") == .connected)
        checkKeyboard(m, kbd, code: 30)
        // Repaired, the ring works again: an update reaches the frame.
        hostile.repairOutRing()
        m.idle(ms: 20)
        if m.vfbDevice?.geometry?.width == 800 {
            fb.fill(Rect(x: 0, y: 0, width: 800, height: 600), color: 0x123456)
            fb.update(Rect(x: 0, y: 0, width: 800, height: 600))
            #expect(m.run { m.console.frame.pixel(x: 5, y: 5) == 0x123456 })
        }
    }

    @Test func aFloodOfResizesKeepsTheGeometryValidAndTheFrameBounded() throws {
        let m = try Machine()
        let (fb, kbd) = try m.connectAll()
        m.settle()
        let hostile = HostileGuest(fb: fb)
        let absurd: [RingSlot] = [
            HostileGuest.resize(width: .max, height: .max, stride: .max, depth: 32, offset: 0),
            HostileGuest.resize(width: 0x4000_0000, height: 0x4000_0000, stride: 0x10_0000, depth: 8, offset: 0),
            HostileGuest.resize(width: 800, height: 600, stride: -3200, depth: 32, offset: 0),
            HostileGuest.resize(width: 800, height: 600, stride: 3200, depth: 12, offset: 0),
            HostileGuest.resize(width: 800, height: 600, stride: 3200, depth: 32, offset: -1),
            HostileGuest.resize(width: 800, height: 600, stride: 3200, depth: 32, offset: .max),
            HostileGuest.resize(width: -1, height: -1, stride: 4, depth: 32, offset: 0),
        ]
        var sent = 0
        var maxFrameBytes = 0
        for round in 0..<200 {
            while hostile.outRoom > 0 {
                let valid = HostileGuest.resize(width: Int32(16 + sent % 700), height: Int32(16 + sent % 500),
                                                stride: 3200, depth: [8, 16, 24, 32][sent % 4], offset: Int32(sent % 3) * 3200)
                fb.send(sent % 2 == 0 ? valid : absurd[sent % absurd.count])
                sent += 1
            }
            m.loop.runOnce(timeoutMilliseconds: 5)
            maxFrameBytes = max(maxFrameBytes, m.console.frame.byteCount)
            if round % 25 == 0 { checkGeometry(m) }
        }
        m.idle(ms: 30)
        checkGeometry(m)
        #expect(sent > 5000)
        #expect((m.vfbDevice?.resizesRefused ?? 0) >= sent / 2 - 60)
        // The frame was reallocated at most once per tick, not once per RESIZE.
        let applied = m.vfbDevice?.resizesApplied ?? .max
        #expect(applied <= (m.vfbDevice?.statistics?.ticks ?? 0) && applied < sent / 4, "\(applied) resizes applied of \(sent / 2) valid")
        // Nothing grows past what the framebuffer can describe: 2 MiB of 8 bpp is at most 8 MiB of frame.
        #expect(maxFrameBytes <= 4 * (2 << 20))
        #expect(m.backendState("vfb") == .connected)
        checkKeyboard(m, kbd, code: 31)
    }

    @Test func aFrontendThatVanishesInTheMiddleOfTheHandshakeOnlyLosesItsOwnDevice() throws {
        let m = try Machine()
        try Toolstack.addFramebuffer(store: m.store, domid: m.domid)
        try m.startBackends()
        m.run { m.backendState("vfb") == .initWait && m.backendState("vkbd") == .initWait }
        let fb = FramebufferFrontend(domain: m.guest)
        let kbd = KeyboardFrontend(domain: m.guest)
        try fb.start()
        try kbd.start()
        // The vfb frontend's directory goes before the backend has seen it connect.
        try m.store.remove("/local/domain/\(m.domid)/device/vfb/0")
        m.run { kbd.state == .connected && m.backendState("vkbd") == .connected && m.vkbdDevice?.ready == true }
        m.idle(ms: 50)
        let vfb = m.backendState("vfb")
        #expect(vfb == nil || vfb == .closing || vfb == .closed || vfb == .initWait, "vfb backend in \(String(describing: vfb))")
        #expect(m.vfbDevice?.geometry == nil)
        checkKeyboard(m, kbd, code: 32)
        withExtendedLifetime(fb) {}
    }

    @Test func ringIndicesFarAheadOrBehindAreIgnoredUntilRepaired() throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, kbd) = try m.connectAll()
        m.settle()
        let hostile = HostileGuest(fb: fb)
        // send() puts an event at out_prod, bumps it by one and notifies.
        for prod in [hostile.outIndices.cons &- 2, hostile.outIndices.cons &+ 51, hostile.outIndices.cons &+ 0x8000_0000] {
            rec.updates.removeAll()
            hostile.setOutProd(prod)
            fb.send(HostileGuest.update(x: 0, y: 0, width: 10, height: 10))
            m.idle(ms: 30)
            #expect(rec.updates.isEmpty, "prod \(prod) was processed")
            #expect(m.backendState("vfb") == .connected)
            hostile.repairOutRing()
        }
        checkKeyboard(m, kbd, code: 33)
        fb.fill(Rect(x: 0, y: 0, width: 10, height: 10), color: 0xabcdef)
        fb.update(Rect(x: 0, y: 0, width: 10, height: 10))
        #expect(m.run { m.console.frame.pixel(x: 3, y: 3) == 0xabcdef })
    }
}
