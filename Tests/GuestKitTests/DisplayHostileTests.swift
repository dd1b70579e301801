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

/// A hostile vdispl frontend: every malformed request gets an error status
/// (the errno displif.h's status carries), nothing is mapped that was not
/// granted, the limits hold, a broken ring or event page is survived, and
/// afterwards the device still shows a good buffer and completes a flip.
@Suite(.serialized) struct DisplayHostileTests {
    /// The device still works: a fresh buffer configured and flipped shows, and the flip completes.
    func stillWorks(_ m: Machine, _ d: DisplayFrontend, fb: UInt64 = 9000) throws {
        #expect(m.backendState("vdispl") == .connected)
        let a = try m.framebuffer(d, fb: fb, color: 0x5a5a5a)
        let b = try m.framebuffer(d, fb: fb + 1, color: 0xa5a5a5)
        #expect(m.perform(d, show(fb)) == 0)
        let before = d.flipsDone.count
        #expect(m.perform(d, .pageFlip(fbCookie: fb + 1)) == 0)
        #expect(m.run { d.flipsDone.count == before + 1 })
        #expect(frameShows(m.console.frame, b))
        _ = a
    }

    @Test func badRequestsAreAnsweredWithTheirErrnoAndChangeNothing() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        let good = try m.framebuffer(d, fb: 1, color: 0x102030)
        let raw = try d.allocateBuffer(width: 64, height: 64)
        func create(_ cookie: UInt64 = 77, width: UInt32 = 64, height: UInt32 = 64, bpp: UInt32 = 32, size: UInt32 = 64 * 64 * 4,
                    flags: UInt32 = 0, dir: UInt32? = nil, offset: UInt32 = 0) -> DisplifRequest {
            .dbufCreate(DisplifDbufCreate(dbufCookie: cookie, width: width, height: height, bpp: bpp, bufferSize: size,
                                          flags: flags, directoryRef: dir ?? raw.directoryRefs[0], dataOffset: offset))
        }
        let einval = XenErrno.inval.status, enoent = XenErrno.noent.status, eexist = XenErrno.exist.status
        let cases: [(String, DisplifRequest, Int32)] = [
            ("cookie 0", create(0), einval),
            ("existing cookie", create(good.cookie), eexist),
            ("backend allocation", create(flags: DisplifLayout.flagRequestAlloc), XenErrno.opnotsupp.status),
            ("bpp 12", create(bpp: 12), einval),
            ("bpp 0", create(bpp: 0), einval),
            ("width 0", create(width: 0), einval),
            ("height 20000", create(height: 20000), einval),
            ("width 2^32-1", create(width: .max, height: .max), einval),
            ("size below the rows", create(size: 64 * 64 * 4 - 1), einval),
            ("data_ofs past the size", create(offset: 1), einval),
            ("data_ofs 2^32-1", create(size: .max, offset: .max), einval),
            ("size over the mapping limit", create(size: .max), XenErrno.nomem.status),
            ("directory not granted", create(dir: 7), XenErrno.fault.status),
            ("directory 2^32-1", create(dir: .max), XenErrno.fault.status),
            ("destroy unknown", .dbufDestroy(dbufCookie: 12345), enoent),
            ("attach to unknown buffer", .fbAttach(dbufCookie: 999, fbCookie: 50, width: 8, height: 8, pixelFormat: xr24), enoent),
            ("attach cookie 0", .fbAttach(dbufCookie: good.cookie, fbCookie: 0, width: 8, height: 8, pixelFormat: xr24), einval),
            ("attach existing fb", .fbAttach(dbufCookie: good.cookie, fbCookie: 1, width: 8, height: 8, pixelFormat: xr24), eexist),
            ("attach unknown format", .fbAttach(dbufCookie: good.cookie, fbCookie: 50, width: 8, height: 8, pixelFormat: 0x3231_564e), einval),
            ("attach wider than the buffer", .fbAttach(dbufCookie: good.cookie, fbCookie: 50, width: 321, height: 8, pixelFormat: xr24), einval),
            ("attach taller than the buffer", .fbAttach(dbufCookie: good.cookie, fbCookie: 50, width: 8, height: 201, pixelFormat: xr24), einval),
            ("attach 2^32-1 wide", .fbAttach(dbufCookie: good.cookie, fbCookie: 50, width: .max, height: 1, pixelFormat: xr24), einval),
            ("attach YUYV odd width", .fbAttach(dbufCookie: good.cookie, fbCookie: 50, width: 7, height: 8,
                                                pixelFormat: DisplifPixelFormat.yuyv.rawValue), einval),
            ("detach unknown", .fbDetach(fbCookie: 4242), enoent),
            ("configure unknown fb", show(4242), enoent),
            ("configure wrong bpp", show(1, bpp: 16), einval),
            ("configure off screen", show(1, x: 320), einval),
            ("configure 0 wide", show(1, width: 0), einval),
            ("flip unknown fb", .pageFlip(fbCookie: 4242), enoent),
            ("flip before configure", .pageFlip(fbCookie: 1), einval),
            ("EDID", .getEDID(bufferSize: 32768, directoryRef: raw.directoryRefs[0]), XenErrno.opnotsupp.status),
            ("unknown operation", .unknown(operation: 0x7f), XenErrno.opnotsupp.status),
            ("reserved operation", .unknown(operation: 0), XenErrno.opnotsupp.status),
        ]
        for (what, request, errno) in cases {
            #expect(m.perform(d, request) == errno, "\(what)")
        }
        #expect(m.vdisplDevice?.bufferCount == 1 && m.vdisplDevice?.framebufferCount == 1)
        #expect(m.vdisplDevice?.requestsRefused == cases.count)
        try stillWorks(m, d)
    }

    @Test func aDirectoryCanOnlyNameWhatWasGrantedToTheBackend() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        let grants = m.guest.grants
        let mem = m.guest.memory
        // A directory page the guest granted, listing references it did not
        // grant, granted to another domain, or naming frames it does not own.
        let dirFrame = try mem.allocate(frames: 1)
        let dirRef = try grants.grantAccess(frame: dirFrame, to: 0, readonly: false)
        let page = try mem.allocate(frames: 1)
        let mine = try grants.grantAccess(frame: page, to: 0, readonly: false)
        let elsewhere = try grants.grantAccess(frame: page, to: 3, readonly: false)
        let beyond: UInt32 = 5000
        grants.setEntry(beyond, flags: SimGrantTable.permitAccess, domid: 0, frame: UInt32(mem.frameCount + 10))
        func directory(_ refs: [UInt32], next: UInt32 = 0) {
            var bytes = [UInt8](repeating: 0, count: 4096)
            bytes.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: next, toByteOffset: 0, as: UInt32.self)
                for (i, r) in refs.enumerated() { raw.storeBytes(of: r, toByteOffset: 4 + 4 * i, as: UInt32.self) }
            }
            bytes.withUnsafeBytes { _ = mem.mapping.write($0, at: mem.offset(ofFrame: dirFrame)) }
        }
        func create(_ cookie: UInt64, pages: Int) -> DisplifRequest {
            .dbufCreate(DisplifDbufCreate(dbufCookie: cookie, width: 1024, height: UInt32(pages), bpp: 32,
                                          bufferSize: UInt32(pages * 4096), directoryRef: dirRef))
        }
        for (i, list) in [[mine, 4242], [elsewhere], [beyond], [mine, 0]].enumerated() {
            directory(list)
            #expect(m.perform(d, create(UInt64(100 + i), pages: list.count)) == XenErrno.fault.status, "\(list)")
        }
        // 1024 pages need a second directory page: next = 0 ends the list too soon.
        directory(Array(repeating: mine, count: 1023), next: 0)
        #expect(m.perform(d, create(200, pages: 1024)) == XenErrno.inval.status)
        // A directory whose next page is itself is read exactly twice (no
        // loop), and its entries, all one granted page, map.
        directory(Array(repeating: mine, count: 1023), next: dirRef)
        #expect(m.perform(d, create(201, pages: 1024)) == 0)
        #expect(m.vdisplDevice?.mappedPages == 1024)
        #expect(m.perform(d, .dbufDestroy(dbufCookie: 201)) == 0)
        directory([mine])
        #expect(m.perform(d, create(202, pages: 1)) == 0, "the same page, listed properly, is fine")
        #expect(m.vdisplDevice?.bufferCount == 1 && m.vdisplDevice?.mappedPages == 1)
        try stillWorks(m, d)
    }

    @Test func theLimitsOnBuffersFramebuffersAndMappedMemoryHold() throws {
        var config = BackendConfig()
        config.vdisplMaxBuffers = 3
        config.vdisplMaxFramebuffers = 4
        config.vdisplMaxMappedBytes = 600 << 10   // 150 pages: two 320x200 buffers (63 pages each) and change
        let m = try Machine(config: config)
        let d = try m.connectDisplay()
        let a = try m.framebuffer(d, fb: 1, color: 1)
        _ = try m.framebuffer(d, fb: 2, color: 2)
        let third = try d.allocateBuffer(width: 320, height: 200)
        #expect(m.perform(d, d.createRequest(third)) == XenErrno.nomem.status, "over the mapped-memory limit")
        let small = try d.allocateBuffer(width: 16, height: 16)
        #expect(m.perform(d, d.createRequest(small)) == 0)
        let fourth = try d.allocateBuffer(width: 16, height: 16)
        #expect(m.perform(d, d.createRequest(fourth)) == XenErrno.nospc.status, "over the buffer limit")
        for fb: UInt64 in 3...4 {
            #expect(m.perform(d, .fbAttach(dbufCookie: small.cookie, fbCookie: fb, width: 16, height: 16, pixelFormat: xr24)) == 0)
        }
        #expect(m.perform(d, .fbAttach(dbufCookie: small.cookie, fbCookie: 5, width: 16, height: 16, pixelFormat: xr24)) == XenErrno.nospc.status)
        // Destroying a buffer frees its framebuffers and its pages.
        #expect(m.perform(d, .dbufDestroy(dbufCookie: small.cookie)) == 0)
        #expect(m.vdisplDevice?.framebufferCount == 2)
        #expect(m.perform(d, .pageFlip(fbCookie: 3)) == XenErrno.noent.status, "its framebuffers went with it")
        #expect(m.perform(d, d.createRequest(fourth)) == 0)
        #expect(m.perform(d, show(1)) == 0)
        #expect(m.run { frameShows(m.console.frame, a) })
    }

    @Test func aFlipToADetachedOrDestroyedFramebufferIsRefusedAndTheScreenKeepsItsPicture() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        let a = try m.framebuffer(d, fb: 1, color: 0x00aa00)
        _ = try m.framebuffer(d, fb: 2, color: 0xaa0000)
        #expect(m.perform(d, show(1)) == 0)
        #expect(m.run { frameShows(m.console.frame, a) })
        #expect(m.perform(d, .fbDetach(fbCookie: 2)) == 0)
        #expect(m.perform(d, .pageFlip(fbCookie: 2)) == XenErrno.noent.status)
        // Detaching or destroying what is shown stops the copying; the picture stays.
        #expect(m.perform(d, .dbufDestroy(dbufCookie: a.cookie)) == 0)
        #expect(m.perform(d, .pageFlip(fbCookie: 1)) == XenErrno.noent.status)
        m.vdisplDevice?.refreshNow()
        #expect(frameShows(m.console.frame, a))
        try stillWorks(m, d)
    }

    @Test func aProducerIndexFarAheadIsIgnoredUntilRepaired() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        let page = try #require(d.requestPageForTests())
        let prod = page.load(UInt32.self, at: SharedRingLayout.reqProd) ?? 0
        let before = m.vdisplDevice?.requestsHandled ?? 0
        for lie: UInt32 in [prod &+ 33, prod &+ 0x8000_0000, prod &- 1] {
            page.store(lie, at: SharedRingLayout.reqProd)
            m.vdisplDevice?.connectors.first.map { m.vdisplDevice?.processRequests($0) }
            m.idle(ms: 20)
            #expect(m.vdisplDevice?.requestsHandled == before, "req_prod \(lie)")
        }
        page.store(prod, at: SharedRingLayout.reqProd)
        try stillWorks(m, d)
    }

    @Test func aGuestThatNeverConsumesFlipEventsCostsItOnlyItsEvents() throws {
        let m = try Machine()
        let d = try m.connectDisplay()
        _ = try m.framebuffer(d, fb: 1, color: 0x111111)
        _ = try m.framebuffer(d, fb: 2, color: 0x222222)
        #expect(m.perform(d, show(1)) == 0)
        let events = try #require(d.eventPageForTests())
        // in_cons far from in_prod (corrupt), then stuck (full).
        events.store(UInt32(0x4000_0000), at: DisplifLayout.eventInCons)
        for i in 0..<80 {
            #expect(m.perform(d, .pageFlip(fbCookie: UInt64(1 + i % 2))) == 0)
            #expect(m.run { m.vdisplDevice?.connectors.first?.pendingFlipCount == 0 })
        }
        m.idle(ms: 50)
        #expect(m.vdisplDevice?.connectors.first?.flipsCompleted == 0, "no event goes into a ring it cannot trust")
        events.store(UInt32(0), at: DisplifLayout.eventInCons)
        #expect(m.perform(d, .pageFlip(fbCookie: 2)) == 0)
        #expect(m.run { (m.vdisplDevice?.connectors.first?.flipsCompleted ?? 0) >= 1 })
        #expect(m.backendState("vdispl") == .connected)
    }

    @Test func flipsFasterThanTheScreenWaitInABoundedQueue() throws {
        var config = BackendConfig()
        config.updateDelay = .milliseconds(500)   // a slow screen
        let m = try Machine(config: config)
        let d = try m.connectDisplay()
        _ = try m.framebuffer(d, fb: 1, color: 0x111111)
        #expect(m.perform(d, show(1)) == 0)
        m.idle(ms: 20)
        // Without waiting for completions: one ring's worth of events waits, the rest is refused.
        var statuses: [Int32] = []
        for _ in 0..<100 { statuses.append(m.perform(d, .pageFlip(fbCookie: 1)) ?? 1) }
        #expect(statuses.filter { $0 == 0 }.count >= DisplifLayout.eventRingLength)
        #expect(Set(statuses).isSubset(of: [0, XenErrno.busy.status]))
        #expect((m.vdisplDevice?.connectors.first?.pendingFlipCount ?? 99) <= DisplifLayout.eventRingLength)
        #expect(m.run { d.flipsDone.count == statuses.filter { $0 == 0 }.count })
    }

    @Test func bufferContentChangingWhileItIsCopiedNeverLeavesTheBuffer() throws {
        // The guest rewrites its buffer (and the ring) as fast as it can while
        // the backend copies: the copy may tear, but every read stays in the mapping.
        let m = try Machine()
        let d = try m.connectDisplay()
        let a = try m.framebuffer(d, fb: 1, color: 0)
        #expect(m.perform(d, show(1)) == 0)
        let base = try #require(m.guest.memory.mapping.baseAddress) + m.guest.memory.offset(ofFrame: a.firstFrame)
        let scribbler = Scribbler(base: base, bytes: a.size)
        try scribbler.start()
        for i in 0..<100 {
            #expect(m.perform(d, .pageFlip(fbCookie: 1)) == 0, "flip \(i)")
            #expect(m.run { d.flipsDone.count == i + 1 })
        }
        #expect(scribbler.stop() > 0)
        try stillWorks(m, d)
    }
}

/// A thread that keeps writing a buffer in guest memory (the guest's own
/// memory: racing the backend on it is the point).
final class Scribbler: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let bytes: Int
    private let lock = NSLockLike()
    private var stopping = false
    private var rounds = -1

    init(base: UnsafeMutableRawPointer, bytes: Int) {
        self.base = base
        self.bytes = bytes
    }

    func start() throws {
        var t = pthread_t()
        let box = Unmanaged.passRetained(self)
        let rc = pthread_create(&t, nil, { arg in
            let me = Unmanaged<Scribbler>.fromOpaque(arg!).takeRetainedValue()
            me.run()
            return nil
        }, box.toOpaque())
        guard rc == 0 else { box.release(); throw ThreadError(code: rc) }
        pthread_detach(t)
    }

    private func run() {
        var i: UInt32 = 0
        while !lock.withLock({ stopping }) {
            for o in stride(from: 0, to: bytes, by: 4) { base.storeBytes(of: i &* 2654435761 &+ UInt32(o), toByteOffset: o, as: UInt32.self) }
            i &+= 1
        }
        lock.withLock { rounds = Int(i) }
    }

    /// Stops the thread; returns how many times it rewrote the buffer.
    func stop() -> Int {
        lock.withLock { stopping = true }
        while lock.withLock({ rounds }) < 0 { sched_yield() }
        return lock.withLock { rounds }
    }
}

struct ThreadError: Error { let code: Int32 }

/// A pthread mutex (Foundation is not imported by these tests).
final class NSLockLike: @unchecked Sendable {
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    func withLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return body()
    }
}
