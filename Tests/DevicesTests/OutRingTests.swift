import Damage
import Devices
import EventLoop
import Console
import Host
import Testing
import XenProtocol

/// The vfb OUT ring driven directly (`VfbDevice.attach`), as Fuzz/FuzzVfbRing does.
@Suite struct OutRingTests {
    final class Rig {
        let page: GuestMapping
        let framebuffer: GuestMapping
        let console = Console(width: 16, height: 16)
        let loop = try! EventLoop()
        let vfb: VfbDevice
        var prod: UInt32 = 0

        init(fbLen: Int = 64 << 10, geometry: VfbGeometry) {
            func memory(_ n: Int, writable: Bool) -> GuestMapping {
                let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 4096)
                p.initializeMemory(as: UInt8.self, repeating: 0, count: n)
                return GuestMapping(base: p, byteCount: n, writable: writable) { p, _ in p.deallocate() }
            }
            page = memory(4096, writable: true)
            framebuffer = memory(fbLen, writable: false)
            vfb = VfbDevice(console: console, config: BackendConfig())
            vfb.attach(page: page, framebuffer: framebuffer, fbLen: fbLen, geometry: geometry, loop: loop)
        }

        func push(_ type: UInt8, _ values: [Int32]) {
            var e = RingSlot(type: type)
            for (i, v) in values.enumerated() { e.set(v, at: 4 + 4 * i) }
            let ring = SharedRing.vfbOut(page)
            ring.put(e, at: prod)
            prod &+= 1
            ring.storeProd(prod)
        }
    }

    /// Regression (found by FuzzVfbRing): an UPDATE queued just before a
    /// RESIZE to a smaller geometry stayed queued outside the new geometry.
    @Test func aResizeDropsRectanglesQueuedForTheOldGeometry() throws {
        let rig = Rig(geometry: try VfbGeometry.configure(fbLen: 64 << 10, width: 64, height: 48, depth: 32, stride: 256, offset: 0))
        rig.vfb.flush()
        rig.push(XenfbLayout.typeUpdate, [1, 30, 1, 1])
        rig.push(XenfbLayout.typeResize, [64, 10, 256, 32, 0])
        rig.vfb.processOutRing()
        let g = try #require(rig.vfb.geometry)
        #expect(g.height == 10)
        for r in rig.vfb.pendingRects {
            #expect(r.maxX <= g.width && r.maxY <= g.height, "queued \(r) outside \(g)")
        }
    }

    @Test func updatesAreClippedAndBogusOnesDropped() throws {
        let rig = Rig(geometry: try VfbGeometry.configure(fbLen: 64 << 10, width: 64, height: 48, depth: 32, stride: 256, offset: 0))
        rig.vfb.flush()
        rig.push(XenfbLayout.typeUpdate, [-5, -5, 10, 10])
        rig.push(XenfbLayout.typeUpdate, [Int32.max - 1, 0, Int32.max, 5])
        rig.push(XenfbLayout.typeUpdate, [10, 10, -3, 4])
        rig.push(XenfbLayout.typeUpdate, [60, 40, 100, 100])
        rig.vfb.processOutRing()
        #expect(rig.vfb.pendingRects == [Rect(x: 0, y: 0, width: 5, height: 5), Rect(x: 60, y: 40, width: 4, height: 8)])
        #expect(rig.page.load(UInt32.self, at: XenfbLayout.outCons) == 4)
    }

    @Test func aProducerMoreThanARingAheadIsIgnored() throws {
        let rig = Rig(geometry: try VfbGeometry.configure(fbLen: 64 << 10, width: 64, height: 48, depth: 32, stride: 256, offset: 0))
        rig.vfb.flush()
        rig.push(XenfbLayout.typeUpdate, [0, 0, 1, 1])
        rig.page.store(UInt32(XenfbLayout.outRingLength + 1), at: XenfbLayout.outProd)
        rig.vfb.processOutRing()
        #expect(rig.vfb.pendingRects.isEmpty)
        #expect(rig.vfb.updatesReceived == 0)
        #expect(rig.page.load(UInt32.self, at: XenfbLayout.outCons) == 0)
        // Behind the consumer (prod - cons wraps to a huge value): ignored too.
        rig.page.store(UInt32.max, at: XenfbLayout.outProd)
        rig.vfb.processOutRing()
        #expect(rig.vfb.updatesReceived == 0)
    }
}
