import Host
import Testing
import XenProtocol

/// A zeroed page of this process's memory, as a GuestMapping.
func page(bytes: Int = 4096) -> GuestMapping {
    let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    return GuestMapping(base: p, byteCount: bytes, writable: true) { p, _ in p.deallocate() }
}

func request(_ n: UInt8) -> RingEntry64 {
    var e = RingEntry64()
    e.set(UInt16(n), at: 0)
    e.set(n, at: 8)
    return e
}

/// xen/io/ring.h's rings (`BackRing`, `FrontRing`): sizes, index
/// arithmetic across the 2^32 wrap, notification hold-off, and a frontend
/// that lies about its producer index.
@Suite struct RingTests {
    @Test func ringSizesAreThoseOfRingH() {
        // __RING_SIZE: (4096 - 64) / entry size, rounded down to a power of two.
        #expect(SharedRingLayout.entries(entrySize: 64) == 32)     // displif
        #expect(SharedRingLayout.entries(entrySize: 112) == 32)    // blkif
        #expect(SharedRingLayout.entries(entrySize: 40) == 64)
        #expect(SharedRingLayout.entries(entrySize: 4032) == 1)
        #expect(SharedRingLayout.entries(entrySize: 4033) == 0)
        #expect(SharedRingLayout.entries(entrySize: 0) == 0)
        #expect(DisplifLayout.requestRingEntries == 32)
        #expect(DisplifLayout.eventRingLength == 63)
    }

    @Test func aFrontendAndABackendExchangeRequestsAndResponsesInOrder() throws {
        let shared = page()
        var front = try #require(FrontRing<RingEntry64>(initialising: shared))
        var back = try #require(BackRing<RingEntry64>(page: shared))
        #expect(shared.load(UInt32.self, at: SharedRingLayout.reqEvent) == 1)
        for round in 0..<5 {
            for i in 0..<20 {
                let r1 = front.putRequest(request(UInt8(i)))
                #expect(r1)
            }
            let r2 = front.pushRequests()
            #expect(r2 == (round == 0)) // req_event is 1 at first, then never moved by this backend
            #expect(back.unconsumedRequests() == .success(20))
            for i in 0..<20 {
                let r3 = back.nextRequest()
                let r = try #require(r3)
                #expect(r == request(UInt8(i)))
                var rsp = RingEntry64()
                rsp.set(r.u16(at: 0), at: 0)
                let r4 = back.putResponse(rsp)
                #expect(r4)
            }
            _ = back.pushResponses()
            #expect(back.unconsumedRequests() == .success(0))
            #expect(front.unconsumedResponses() == .success(20))
            for i in 0..<20 {
                let r5 = front.nextResponse()
                #expect(r5?.u16(at: 0) == UInt16(i))
            }
        }
        #expect(back.reqCons == 100 && back.rspProdPvt == 100)
    }

    @Test func aFullRingTakesNoMoreRequests() throws {
        var front = try #require(FrontRing<RingEntry64>(initialising: page()))
        for i in 0..<32 {
            let r6 = front.putRequest(request(UInt8(i)))
            #expect(r6)
        }
        #expect(front.freeRequests == 0)
        let r7 = front.putRequest(request(99))
        #expect(!r7)
    }

    @Test func indicesWrapAroundTwoToTheThirtyTwo() throws {
        let shared = page()
        let start = UInt32.max - 5
        var back = try #require(BackRing<RingEntry64>(page: shared, start: start))
        // A frontend that attached at the same index put 10 requests in.
        for i in 0..<10 { request(UInt8(i)).write(to: shared, at: 64 + Int((start &+ UInt32(i)) & 31) * 64) }
        shared.store(start &+ 10, at: SharedRingLayout.reqProd)
        #expect(back.unconsumedRequests() == .success(10))
        for i in 0..<10 {
            let r8 = back.nextRequest()
            #expect(r8 == request(UInt8(i)))
            let r9 = back.putResponse(RingEntry64())
            #expect(r9)
        }
        _ = back.pushResponses()
        #expect(back.reqCons == 4)
        #expect(shared.load(UInt32.self, at: SharedRingLayout.rspProd) == 4)
        #expect(back.unconsumedRequests() == .success(0))
    }

    @Test func aProducerIndexBeyondTheRingIsAnErrorAndNothingIsConsumed() throws {
        let shared = page()
        var back = try #require(BackRing<RingEntry64>(page: shared))
        for prod: UInt32 in [33, 1000, UInt32.max, 0x8000_0000] {
            shared.store(prod, at: SharedRingLayout.reqProd)
            guard case .failure(let e) = back.unconsumedRequests() else {
                Issue.record("req_prod \(prod) accepted")
                continue
            }
            #expect(e == .requestProducerOverflow(prod: prod, responsesProduced: 0, size: 32))
            let r10 = back.finalCheckForRequests()
            #expect(!r10)
        }
        // Exactly a ring's worth is fine.
        shared.store(32, at: SharedRingLayout.reqProd)
        #expect(back.unconsumedRequests() == .success(32))
        #expect(back.reqCons == 0)
    }

    @Test func aBackendNeverAnswersMoreThanItWasAsked() throws {
        var back = try #require(BackRing<RingEntry64>(page: page()))
        let r11 = back.putResponse(RingEntry64())
        #expect(!r11)
        #expect(back.rspProdPvt == 0)
    }

    @Test func theFinalCheckAsksForTheNextNotification() throws {
        let shared = page()
        var front = try #require(FrontRing<RingEntry64>(initialising: shared))
        var back = try #require(BackRing<RingEntry64>(page: shared))
        front.putRequest(request(1))
        _ = front.pushRequests()
        let r12 = back.finalCheckForRequests()
        #expect(r12)          // work waiting: req_event untouched
        #expect(shared.load(UInt32.self, at: SharedRingLayout.reqEvent) == 1)
        _ = back.nextRequest()
        back.putResponse(RingEntry64())
        let r13 = back.finalCheckForRequests()
        #expect(!r13)
        #expect(shared.load(UInt32.self, at: SharedRingLayout.reqEvent) == 2)
        // The next request passes req_event: the frontend notifies; the one after does not.
        front.putRequest(request(2))
        let r14 = front.pushRequests()
        #expect(r14)
        front.putRequest(request(3))
        let r15 = front.pushRequests()
        #expect(!r15)
    }

    @Test func responsesNotifyOnlyWhenTheyPassRspEvent() throws {
        let shared = page()
        var front = try #require(FrontRing<RingEntry64>(initialising: shared))
        var back = try #require(BackRing<RingEntry64>(page: shared))
        for i in 0..<3 { front.putRequest(request(UInt8(i))) }
        _ = front.pushRequests()
        for _ in 0..<3 { _ = back.nextRequest() }
        back.putResponse(RingEntry64())
        let r16 = back.pushResponses()
        #expect(r16)                  // rsp_event 1: the first response notifies
        back.putResponse(RingEntry64())
        let r17 = back.pushResponses()
        #expect(!r17)                 // the frontend has not asked again
        _ = front.nextResponse(); _ = front.nextResponse()
        let r18 = front.finalCheckForResponses()
        #expect(!r18)       // rsp_event = 3
        back.putResponse(RingEntry64())
        let r19 = back.pushResponses()
        #expect(r19)
    }

    @Test func anEntryIsCopiedOnceAndLaterWritesDoNotChangeIt() throws {
        let shared = page()
        request(7).write(to: shared, at: 64)
        shared.store(UInt32(1), at: SharedRingLayout.reqProd)
        var back = try #require(BackRing<RingEntry64>(page: shared))
        let r20 = back.nextRequest()
        let copy = try #require(r20)
        request(9).write(to: shared, at: 64)
        #expect(copy == request(7))
        #expect(copy.u8(at: 8) == 7)
    }

    @Test func anUnmappedPageYieldsNoEntries() throws {
        let shared = page()
        shared.store(UInt32(1), at: SharedRingLayout.reqProd)
        var back = try #require(BackRing<RingEntry64>(page: shared))
        shared.unmap()
        #expect(back.unconsumedRequests() == .success(0))
        let r21 = back.nextRequest()
        #expect(r21 == nil)
        #expect(BackRing<RingEntry64>(page: page(bytes: 64)) == nil)
    }

    @Test func theDisplifEventPageHas63SlotsIndexedModulo63() {
        let p = page()
        let ring = DisplifEventRing.displifEvents(p)
        #expect(ring.slotOffset(0) == 64)
        #expect(ring.slotOffset(62) == 64 + 62 * 64)
        #expect(ring.slotOffset(63) == 64)
        #expect(ring.slotOffset(UInt32.max) == 64 + Int(UInt32.max % 63) * 64)
        let e = DisplifEvent(id: 3, fbCookie: 0xdead_beef_0000_0001)
        #expect(ring.put(e.entry, at: 125))
        #expect(ring.copySlot(125).map(DisplifEvent.init) == e)
    }
}
