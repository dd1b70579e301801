import Damage
import Devices
import Console
import Displays
import GuestKit
import Host
import Testing
import XenBus
import XenProtocol

@Suite struct HandshakeTests {
    @Test func bothEndsReachConnectedAndTheModelSaysRunning() throws {
        let m = try Machine()
        let (fb, kbd) = try m.connectAll()
        #expect(fb.state == .connected && kbd.state == .connected)
        #expect(m.backendState("vfb") == .connected)
        #expect(m.backendState("vkbd") == .connected)
        #expect(try m.store.read("/local/domain/0/device-model/1/state") == "running")
        #expect(try m.store.directory("/local/domain/0/device-model/1/backends") == ["vdispl", "vfb", "vkbd"])
        let be = "/local/domain/0/backend/vfb/1/0"
        #expect(try m.store.read("\(be)/feature-resize") == "1")
        #expect(try m.store.read("\(be)/request-update") == "1")
        #expect(try m.store.read("\(be)/hotplug-status") == "connected")
        let kb = "/local/domain/0/backend/vkbd/1/0"
        #expect(try m.store.read("\(kb)/feature-abs-pointer") == "1")
        #expect(try m.store.read("\(kb)/feature-raw-pointer") == "1")
        #expect(try m.store.read("\(kb)/width") == "800")
        #expect(fb.updateWanted && fb.featureResize)
        #expect(m.vkbdDevice?.absolutePointer == true)
        // Features, hotplug-status and InitWait are written in that order, Connected after.
        let journal = m.store.journal.filter { $0.hasPrefix(be + "/") }.map { String($0.dropFirst(be.count + 1)) }
        let order = ["feature-resize=1", "hotplug-status=connected", "state=2", "request-update=1", "state=4"]
        var idx = journal.startIndex
        for key in order {
            guard let found = journal[idx...].firstIndex(of: key) else { Issue.record("\(key) missing or out of order in \(journal)"); break }
            idx = found
        }
    }

    @Test func anUpdateReachesTheFrameAndTheDisplays() throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, _) = try m.connectAll()
        m.settle()
        rec.updates.removeAll()
        fb.fill(Rect(x: 10, y: 20, width: 30, height: 40), color: 0x00ff8000)
        fb.update(Rect(x: 10, y: 20, width: 30, height: 40))
        #expect(m.run { !rec.updates.isEmpty })
        #expect(rec.updates.first == [Rect(x: 10, y: 20, width: 30, height: 40)])
        #expect(m.console.frame.pixel(x: 10, y: 20) & 0xffffff == 0xff8000)
        #expect(m.console.frame.pixel(x: 39, y: 59) & 0xffffff == 0xff8000)
        #expect(m.console.frame.pixel(x: 40, y: 60) & 0xffffff == 0)
        #expect(frameMatchesGuest(m.console.frame, fb))
    }

    @Test func manyRectanglesOfOneNotificationBecomeOneBoundedBatch() throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, _) = try m.connectAll()
        m.settle()
        rec.updates.removeAll()
        // Separate events (fbfront merges only while the ring is full): send them raw.
        for i in 0..<20 {
            fb.fill(Rect(x: i * 10, y: i * 10, width: 5, height: 5), color: 0xffffff)
            fb.send(XenfbOutEvent.update(x: Int32(i * 10), y: Int32(i * 10), width: 5, height: 5).slot)
        }
        #expect(m.run { !rec.updates.isEmpty })
        m.idle(ms: 50)
        #expect(rec.updates.count == 1, "one batch for the events of one notification")
        let batch = rec.updates.first ?? []
        #expect(batch.count <= BackendConfig().maxQueuedRects, "\(batch.count) rects in one batch")
        for i in 0..<20 {
            #expect(batch.contains { $0.contains(x: i * 10 + 4, y: i * 10 + 4) }, "square \(i) is in the batch")
        }
        #expect(frameMatchesGuest(m.console.frame, fb))
    }

    @Test func bogusRectanglesAreClippedOrDropped() throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, _) = try m.connectAll()
        m.settle()
        rec.updates.removeAll()
        fb.fill(Rect(x: 0, y: 0, width: 800, height: 600), color: 0xffffff) // no update sent for this
        func send(_ x: Int32, _ y: Int32, _ w: Int32, _ h: Int32) {
            fb.send(XenfbOutEvent.update(x: x, y: y, width: w, height: h).slot)
        }
        send(Int32.max, Int32.max, Int32.max, Int32.max)   // off screen: dropped
        send(-5, -5, -10, 20)                                // negative size: dropped
        send(790, 590, Int32.max, Int32.max)                 // clipped to 10x10, no overflow
        send(-100, 0, 110, 1)                                // clipped to 10x1 at 0,0
        var unknown = RingSlot(type: 77)                    // ignored
        unknown.set(Int32(-1), at: 4)
        fb.send(unknown)
        #expect(m.run { !rec.updates.isEmpty })
        #expect(rec.updates.first == [Rect(x: 0, y: 0, width: 10, height: 1), Rect(x: 790, y: 590, width: 10, height: 10)])
        #expect(m.console.frame.pixel(x: 10, y: 0) == 0, "only the clipped rectangles were copied")
        #expect(m.vfbDevice?.updatesReceived == 4)
    }

    @Test func aFullOutRingStashesAndFlushesOnTheBackendsNotification() throws {
        let m = try Machine()
        let (fb, _) = try m.connectAll()
        m.idle(ms: 30)
        // Fill the ring without running the loop: the backend cannot consume.
        for i in 0..<60 {
            fb.fill(Rect(x: i, y: i, width: 1, height: 1), color: 0xffffff)
            fb.update(Rect(x: i, y: i, width: 1, height: 1))
        }
        #expect(fb.stashes == 9, "51 slots, the other 9 updates merged into the stash")
        #expect(m.run { frameMatchesGuest(m.console.frame, fb) }, "the stash was flushed after the backend consumed")
    }
}

@Suite struct WriteTrackingTests {
    @Test(arguments: [DirtyTrackingMode.auto, .mprotect])
    func writesToTheGuestFramebufferReachTheFrameWithoutExplicitUpdates(mode: DirtyTrackingMode) throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, kbd) = try m.connectAll()
        defer { withExtendedLifetime(kbd) {} }
        try fb.startWriteTracking(mode: mode, delay: .milliseconds(5))
        #expect(fb.writeTracking != nil && fb.writeTracking != .auto)
        m.settle()
        let sent = fb.updatesSent
        fb.fill(Rect(x: 200, y: 300, width: 40, height: 3), color: 0x00abcdef)
        #expect(m.run { m.console.frame.pixel(x: 239, y: 302) == 0xabcdef })
        #expect(fb.updatesSent > sent, "the engine sent the update")
        #expect(frameMatchesGuest(m.console.frame, fb))
        fb.stopWriteTracking()
    }
}

@Suite struct PollingTests {
    @Test func aFrontendWithoutFeatureUpdateIsPolledWhileConnectedOnly() throws {
        let m = try Machine()
        let rec = RecordingDisplay()
        m.console.add(rec)
        let (fb, kbd) = try m.connectAll(featureUpdate: false)
        defer { withExtendedLifetime(kbd) {} }
        #expect(try m.store.read("/local/domain/0/backend/vfb/1/0/request-update") == nil)
        #expect(!fb.updateWanted)
        fb.fill(Rect(x: 5, y: 500, width: 100, height: 70), color: 0x00c0ffee)
        fb.update(Rect(x: 5, y: 500, width: 100, height: 70)) // not wanted: nothing is sent
        #expect(fb.updatesSent == 0)
        #expect(m.run { m.console.frame.pixel(x: 104, y: 569) == 0xc0ffee }, "the backend's compare found the change")
        #expect(frameMatchesGuest(m.console.frame, fb))
        fb.disconnect()
        #expect(m.run { m.backendState("vfb") == .closed })
        let updates = rec.updates.count
        fb.fill(Rect(x: 0, y: 0, width: 10, height: 10), color: 0xffffff)
        m.idle(ms: 200)
        #expect(rec.updates.count == updates, "no polling once disconnected")
        #expect(m.loop.activeTimers == 0, "no timer left running")
    }
}
