import Testing
@testable import RFB

@Suite struct SessionTests {
    @Test func handshake38WithoutPasswordFedByteByByteEndsInServerInit() throws {
        let h = SessionHarness(frame: FakeFrame(width: 33, height: 21))
        #expect(h.take(12) == Array("RFB 003.008\n".utf8))
        try h.send(Array("RFB 003.008\n".utf8), byteByByte: true)
        #expect(h.take(2) == [1, 1])
        try h.send([1])
        #expect(h.take(4) == [0, 0, 0, 0])
        try h.send([1])
        #expect(h.take(4) == [0, 33, 0, 21])
        #expect(h.take(16) == [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
        #expect(h.take(8) == [0, 0, 0, 4] + Array("test".utf8))
        #expect(h.pending.isEmpty)
        #expect(h.session.phase == .normal)
    }

    @Test func version37HasNoSecurityResultForNoneAnd33IsToldTheTypeDirectly() throws {
        let a = SessionHarness(frame: FakeFrame(width: 4, height: 4))
        _ = a.take(12)
        try a.send(Array("RFB 003.007\n".utf8))
        #expect(a.take(2) == [1, 1])
        try a.send([1, 1])
        #expect(a.take(4) == [0, 4, 0, 4])

        let b = SessionHarness(frame: FakeFrame(width: 4, height: 4))
        _ = b.take(12)
        try b.send(Array("RFB 003.003\n".utf8) + [1])
        #expect(b.take(4) == [0, 0, 0, 1])
        #expect(b.take(4) == [0, 4, 0, 4])
    }

    @Test func vncAuthenticationAcceptsTheRightResponseOnly() throws {
        for (password, good) in [("secret", true), ("wrong", false)] {
            let h = SessionHarness(frame: FakeFrame(width: 4, height: 4), passwordRequired: true)
            h.password = Array("secret".utf8)
            _ = h.take(12)
            try h.send(Array("RFB 003.008\n".utf8))
            #expect(h.take(2) == [1, 2])
            try h.send([2])
            let challenge = try #require(h.take(16))
            let response = vncAuthResponse(challenge: challenge, password: Array(password.utf8))
            if good {
                try h.send(response, byteByByte: true)
                #expect(h.take(4) == [0, 0, 0, 0])
                try h.send([1])
                #expect(h.session.phase == .normal)
            } else {
                #expect(throws: ProtocolError.self) { try h.send(response) }
                h.drain()
                #expect(h.take(4) == [0, 0, 0, 1])
                #expect(h.take(4) == [0, 0, 0, 21])
                #expect(h.session.phase == .closing)
            }
        }
    }

    @Test func aClientChoosingNoneWhenAPasswordIsRequiredIsRefused() throws {
        let h = SessionHarness(frame: FakeFrame(width: 4, height: 4), passwordRequired: true)
        h.password = Array("secret".utf8)
        _ = h.take(12)
        try h.send(Array("RFB 003.008\n".utf8))
        #expect(throws: ProtocolError.self) { try h.send([1]) }
        #expect(h.session.phase == .closing)
    }

    @Test func unknownVersionsAndGarbageAreRefused() {
        for v in ["RFB 004.000\n", "RFB 003.006\n", "RFB 003.889\n", "GET / HTTP/1.1", "RFB 00x.008\n"] {
            let h = SessionHarness(frame: FakeFrame(width: 4, height: 4))
            #expect(throws: ProtocolError.self, "\(v)") { try h.send(Array(v.utf8).prefix(12).map { $0 }) }
            h.drain()
            #expect(h.pending == Array("RFB 003.008\n".utf8) + [0, 0, 0, 0], "\(v)")
        }
    }

    @Test func updatesGoOutOnlyWhenRequestedAndSomethingChanged() throws {
        let frame = FakeFrame(width: 40, height: 20)
        let h = SessionHarness(frame: frame)
        try h.handshake()
        try h.send(setEncodings([0]))
        #expect(h.pending.isEmpty) // dirty, but nothing requested
        try h.send(updateRequest(incremental: true))
        let first = try #require(h.nextMessage())
        #expect(first.rects.map { ($0.x, $0.y, $0.w, $0.h) }.elementsEqual([(0, 0, 40, 20)], by: ==))
        // The raw pixels are the frame without its padding byte, little-endian.
        let data = first.rects[0].data
        for i in stride(from: 0, to: 40 * 20, by: 37) {
            let v = UInt32(data[4 * i]) | UInt32(data[4 * i + 1]) << 8 | UInt32(data[4 * i + 2]) << 16 | UInt32(data[4 * i + 3]) << 24
            #expect(v == frame.pixels[i] & 0xffffff)
        }
        try h.send(updateRequest(incremental: true))
        #expect(h.pending.isEmpty) // nothing changed
        h.session.markDirty(RFBRect(x: 17, y: 3, width: 2, height: 2))
        h.drain()
        let second = try #require(h.nextMessage())
        #expect(second.rects.map { ($0.x, $0.y, $0.w, $0.h) }.elementsEqual([(16, 0, 16, 16)], by: ==))
        h.session.markDirty(RFBRect(x: 0, y: 0, width: 1, height: 1))
        h.drain()
        #expect(h.pending.isEmpty) // no request outstanding
        try h.send(updateRequest(incremental: false, 30, 10, 5, 5))
        let third = try #require(h.nextMessage())
        // The requested tiles (x 16–47, y 0–15) and the one changed at (0,0), clipped to the frame.
        #expect(third.rects.map { "\($0.x),\($0.y),\($0.w),\($0.h)" } == ["0,0,40,16"])
    }

    @Test func aClientThatNeverReadsHoldsBoundedOutputAndGetsTheRestWhenItReads() throws {
        let frame = FakeFrame(width: 1920, height: 1080)
        let h = SessionHarness(frame: frame)
        try h.handshake()
        // `send` would read the output; this client does not.
        try h.session.receive(setEncodings([0]) + updateRequest(incremental: false))
        h.session.pump()
        let queued = h.session.out.count
        #expect(queued >= RFBSession.outputThreshold)
        #expect(queued <= RFBSession.outputThreshold + RFBSession.chunkTarget + 32 * 1920 * 4)
        #expect(h.session.isUpdating)
        #expect(!h.session.wantsInput)
        // More damage and input while stalled: nothing more is queued.
        for _ in 0..<100 { h.session.markDirty(RFBRect(x: 0, y: 0, width: 1920, height: 1080)) }
        try h.session.receive(updateRequest(incremental: false) + setEncodings([0, -258, -257]))
        h.session.pump()
        #expect(h.session.out.count == queued)
        // Reading resumes the update; it arrives whole and exact.
        h.drain()
        let update = try #require(h.nextMessage())
        #expect(update.rects.reduce(0) { $0 + $1.w * $1.h } == 1920 * 1080)
        #expect(!h.session.isUpdating)
    }

    @Test func rawSentStraightFromTheFrameArrivesAsTheCopiedPathSendsItWhateverTheSocketTakes() throws {
        // The same frames and requests through the queue only (a) and through the direct
        // path (b) with a socket that takes everything, nothing, or cuts mid-header,
        // mid-row and mid-pixel: the same updates, byte for byte but the padding byte
        // (the direct path sends the frame's; the copy clears it).
        let takes: [[Int?]] = [[nil], [0], [3, nil, 70_001, 0, 13, nil, 1, 200_000], [1_000, 0, 0, 5]]
        for schedule in takes {
            let fa = FakeFrame(width: 300, height: 200, seed: 7), fb = FakeFrame(width: 300, height: 200, seed: 7)
            let a = SessionHarness(frame: fa), b = SessionHarness(frame: fb)
            let calls = b.sendDirectly(takes: schedule)
            for h in [a, b] {
                try h.handshake()
                try h.send(setEncodings([0]) + updateRequest(incremental: false))
                // A rectangle narrower than the frame (one iovec per row), then one the frame
                // shrank under (planned on the old size: the part outside reads as black).
                h.session.markDirty(RFBRect(x: 33, y: 40, width: 100, height: 70))
                try h.send(updateRequest(incremental: true))
                try h.session.receive(updateRequest(incremental: false))
                h.frame.set(width: 120, height: 90, fill: 0xff12_3456)
                h.drain()
            }
            #expect(calls() > 0, "\(schedule)")
            for n in 0..<3 {
                let ma = try #require(a.nextMessage(), "\(schedule) update \(n)")
                let mb = try #require(b.nextMessage(), "\(schedule) update \(n)")
                #expect(ma.rects.map { "\($0.x),\($0.y),\($0.w),\($0.h),\($0.encoding)" }
                        == mb.rects.map { "\($0.x),\($0.y),\($0.w),\($0.h),\($0.encoding)" }, "\(schedule) update \(n)")
                for (ra, rb) in zip(ma.rects, mb.rects) {
                    #expect(ra.data.count == rb.data.count)
                    let same = zip(ra.data.indices, zip(ra.data, rb.data)).allSatisfy { i, p in i % 4 == 3 || p.0 == p.1 }
                    #expect(same, "\(schedule) update \(n) rect \(ra.x),\(ra.y)")
                }
            }
            #expect(a.pending.isEmpty && b.pending.isEmpty, "\(schedule)")
        }
    }

    @Test func pseudoEncodingsAreAcknowledgedInTheNextRequestedUpdate() throws {
        let h = SessionHarness(frame: FakeFrame(width: 50, height: 40))
        try h.handshake()
        try h.send(setEncodings([0, -258, -257, -308]))
        #expect(h.pending.isEmpty, "nothing is sent before a request")
        // The acknowledgements go first in the update that answers the next request.
        try h.send(updateRequest(incremental: true, 0, 0, 1, 1))
        let first = try #require(h.nextMessage())
        #expect(first.rects.prefix(2).map(\.encoding) == [-258, -257])
        #expect(first.rects[0].w == 50 && first.rects[1].x == 1, "extended key event for the frame; pointer absolute")
        #expect(first.rects.dropFirst(2).allSatisfy { $0.encoding == 0 }, "then the pixels (all dirty after ServerInit)")
        #expect(h.pending.isEmpty)
        // Alone when nothing is dirty.
        try h.send(setEncodings([0, -258, -308]) + updateRequest(incremental: true))
        let alone = try #require(h.nextMessage())
        #expect(alone.rects.map(\.encoding) == [-258])
        #expect(h.pending.isEmpty)
        // SetDesktopSize is refused, in the next update: x = 1 (this client asked), y = 1 (prohibited).
        try h.send([251, 0, 0, 100, 0, 100, 1, 0] + [UInt8](repeating: 0, count: 16))
        #expect(h.pending.isEmpty)
        try h.send(updateRequest(incremental: true))
        let refusal = try #require(h.nextMessage())
        #expect(refusal.rects.count == 1 && refusal.rects[0].encoding == -308)
        #expect((refusal.rects[0].x, refusal.rects[0].y, refusal.rects[0].w, refusal.rects[0].h) == (1, 1, 50, 40))
        // A non-incremental request gets the current layout and the pixels in one update.
        try h.send(updateRequest(incremental: false))
        let update = try #require(h.nextMessage())
        #expect(update.rects.first?.encoding == -308 && update.rects.first?.x == 0)
        #expect(update.rects.dropFirst().allSatisfy { $0.encoding == 0 })
        #expect(update.rects.dropFirst().reduce(0) { $0 + $1.w * $1.h } == 50 * 40)
        #expect(h.pending.isEmpty)
    }

    /// TigerVNC asks for the next update as one starts, and switches to a new
    /// pixel format after the update that follows its SetPixelFormat: the
    /// server must answer each request with exactly one update, or the client
    /// decodes pixels in the wrong format (found with -FullColor=0).
    @Test func everyUpdateAnswersOneRequestSoAPixelFormatChangeLandsWhereTheClientExpects() throws {
        let frame = FakeFrame(width: 40, height: 30)
        let h = SessionHarness(frame: frame)
        try h.handshake()
        let bgr111: [UInt8] = [0, 0, 0, 0, 8, 3, 0, 1, 0, 1, 0, 1, 0, 1, 2, 1, 0, 0, 0, 0]
        try h.send(bgr111 + setEncodings([0, -258, -257, -308, -223]) + updateRequest(incremental: false))
        var requests = 1, updates = 0
        // The client's pipeline: at the start of each update it reads, it asks for the next one.
        for _ in 0..<6 {
            guard let m = h.nextMessage(bytesPerPixel: updates == 0 ? 1 : 4) else { break }
            #expect(m.type == 0)
            updates += 1
            if updates == 1 {
                // After the first update the client chooses full colour: SetPixelFormat with its next request.
                try h.send([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0] + updateRequest(incremental: true))
            } else {
                try h.send(updateRequest(incremental: true))
            }
            requests += 1
            #expect(updates <= requests - 1 + 1)
            if updates == 2 {
                // The update answering the request sent with SetPixelFormat: the whole frame in the new format.
                #expect(m.rects.filter { $0.encoding == 0 }.reduce(0) { $0 + $1.w * $1.h } == 40 * 30)
                #expect(m.rects.filter { $0.encoding == 0 }.allSatisfy { $0.data.count == $0.w * $0.h * 4 })
            }
        }
        #expect(updates == 2, "one update per request: the first (old format), the second (new format), then nothing dirty")
    }

    @Test func aResizeIsAnnouncedWithTheNextUpdatesPixelsToClientsThatFollowAndClippedForOthers() throws {
        let frame = FakeFrame(width: 64, height: 48)
        let follows = SessionHarness(frame: frame)
        try follows.handshake()
        try follows.send(setEncodings([0, -223]) + updateRequest(incremental: false))
        _ = follows.nextMessage()
        let stays = SessionHarness(frame: frame)
        try stays.handshake()
        try stays.send(setEncodings([0]) + updateRequest(incremental: false))
        _ = stays.nextMessage()

        frame.set(width: 100, height: 30, fill: 0x00ff_0000)
        for h in [follows, stays] {
            h.context.frameWidth = 100
            h.context.frameHeight = 30
            h.session.frameResized()
        }
        follows.drain()
        #expect(follows.pending.isEmpty) // the size waits for a request, and goes with the pixels
        try follows.send(updateRequest(incremental: true))
        let update = try #require(follows.nextMessage())
        #expect(update.rects.first?.encoding == -223 && update.rects.first?.w == 100 && update.rects.first?.h == 30)
        #expect(update.rects.dropFirst().reduce(0) { $0 + $1.w * $1.h } == 100 * 30)

        try stays.send(updateRequest(incremental: true))
        let clipped = try #require(stays.nextMessage())
        #expect(clipped.rects.allSatisfy { $0.x + $0.w <= 64 && $0.y + $0.h <= 30 && $0.encoding == 0 })
        #expect(clipped.rects.reduce(0) { $0 + $1.w * $1.h } == 64 * 30)
    }

    @Test func pointerPositionsAreClampedToTheFrameAndKeysReported() throws {
        let h = SessionHarness(frame: FakeFrame(width: 50, height: 40))
        try h.handshake()
        try h.send([5, 1, 0xff, 0xff, 0xff, 0xff, 4, 1, 0, 0, 0, 0, 0, 0x61, 255, 0, 0, 0, 0, 0, 0, 0x61, 0, 0, 0, 0x1e])
        #expect(h.events == [.pointer(buttons: 1, x: 49, y: 39, client: 0), .key(keysym: 0x61, down: true, scancode: nil, client: 0),
                             .key(keysym: 0x61, down: false, scancode: 0x1e, client: 0)])
    }

    @Test func anUnservablePixelFormatClosesTheClient() throws {
        let h = SessionHarness(frame: FakeFrame(width: 4, height: 4))
        try h.handshake()
        #expect(throws: ProtocolError.self) { try h.send([0, 0, 0, 0, 24, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]) }
        #expect(h.session.phase == .closing)
    }

    @Test func randomInputAfterTheHandshakeNeverTraps() throws {
        var rng = SplitMix(seed: 99)
        for round in 0..<300 {
            let h = SessionHarness(frame: FakeFrame(width: 37, height: 23, seed: UInt64(round)))
            try h.handshake()
            for _ in 0..<20 {
                // Mostly valid message types with random bodies.
                let types: [UInt8] = [0, 2, 3, 4, 5, 6, 251, 255]
                var bytes = [types[Int(rng.next() % 8)]]
                bytes += (0..<Int(rng.next() % 40)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                do { try h.send(bytes) } catch { break }
            }
        }
    }
}
