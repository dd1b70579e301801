#if canImport(Glibc)
import Glibc
#endif
import XenProtocol
import EventLoop
import Host
import Support
import Synchronization

/// A guest that attacks the vfb backend through its shared page (the
/// double fetches of XSA-155, the geometry of CVE-2008-1943/1944), for tests. It works on a connected `FramebufferFrontend`'s page;
/// the checks that it cannot hurt the backend live in GuestKitTests
/// (HostileGuestTests) and in the fuzz targets (Fuzz/).
public final class HostileGuest {
    public let fb: FramebufferFrontend
    private let page: GuestMapping
    private var flipper: Flipper?

    public init(fb: FramebufferFrontend) {
        self.fb = fb
        page = fb.pageMappingForTests()
    }

    /// The OUT ring indices as the guest sees them.
    public var outIndices: (prod: UInt32, cons: UInt32) {
        (page.load(UInt32.self, at: XenfbLayout.outProd) ?? 0, page.load(UInt32.self, at: XenfbLayout.outCons) ?? 0)
    }

    /// Writes `out_prod` directly (far ahead of, or behind, the consumer).
    public func setOutProd(_ value: UInt32) { page.store(value, at: XenfbLayout.outProd) }

    /// Room in the OUT ring as an honest frontend would compute it.
    public var outRoom: Int { XenfbLayout.outRingLength - Int(outIndices.prod &- outIndices.cons) }

    /// Makes the ring consistent again (prod = cons), as a guest repairing itself.
    public func repairOutRing() { setOutProd(outIndices.cons) }

    /// A RESIZE event with any values.
    public static func resize(width: Int32, height: Int32, stride: Int32, depth: Int32, offset: Int32) -> RingSlot {
        XenfbOutEvent.resize(width: width, height: height, stride: stride, depth: depth, offset: offset).slot
    }

    /// An UPDATE event with any values.
    public static func update(x: Int32, y: Int32, width: Int32, height: Int32) -> RingSlot {
        XenfbOutEvent.update(x: x, y: y, width: width, height: height).slot
    }

    /// Starts a thread that rewrites every OUT ring slot and `out_prod`
    /// without pause: each slot flips between a valid UPDATE and a RESIZE or
    /// UPDATE with absurd values, so two reads of one field by the backend
    /// would see different values (the XSA-155 double fetch); `out_prod`
    /// flips between just ahead of, far ahead of and behind the consumer.
    public func startFlipping() throws {
        guard flipper == nil, let base = page.baseAddress else { return }
        let f = Flipper(base: base)
        flipper = f
        try spawnThread { f.run() }
        // Return only once the thread is flipping, so what the caller does
        // next really races it (on a loaded machine a new thread can wait
        // a long time for a CPU). Bounded: 10 s.
        let deadline = EventLoop.now() + 10_000_000_000
        while f.progress.load(ordering: .acquiring) == 0 && EventLoop.now() < deadline { sched_yield() }
    }

    /// Stops the flipping thread; returns how many rounds of flips it made.
    @discardableResult
    public func stopFlipping() -> Int {
        guard let f = flipper else { return 0 }
        flipper = nil
        return f.stop()
    }
}

/// The flipping thread's state: raw guest memory (the page is the guest's
/// own; racing the backend on it is the point).
private final class Flipper: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    private let stopping = Atomic<Bool>(false)
    private let rounds = Atomic<Int>(-1)
    /// Rounds done so far, for `startFlipping` to see the thread is running.
    let progress = Atomic<Int>(0)

    init(base: UnsafeMutableRawPointer) { self.base = base }

    func run() {
        let good = HostileGuest.update(x: 1, y: 1, width: 8, height: 8)
        let bad = [HostileGuest.resize(width: .max, height: .max, stride: -4, depth: 12, offset: .min),
                   HostileGuest.update(x: .min, y: .max, width: .max, height: .min),
                   HostileGuest.resize(width: 100, height: 100, stride: 400, depth: 32, offset: 0x7fff_0000)]
        var i = 0
        while !stopping.load(ordering: .acquiring) {
            let cons = base.loadUnaligned(fromByteOffset: XenfbLayout.outCons, as: UInt32.self)
            for slot in 0..<XenfbLayout.outRingLength {
                let e = (slot + i) % 2 == 0 ? good : bad[(slot + i) % bad.count]
                e.withUnsafeBytes { (base + XenfbLayout.outRingOffset + slot * XenfbLayout.eventSize).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
            let prods: [UInt32] = [cons &+ 1, cons &+ 5000, cons &- 3, cons &+ UInt32(XenfbLayout.outRingLength)]
            base.storeBytes(of: prods[i % prods.count], toByteOffset: XenfbLayout.outProd, as: UInt32.self)
            i += 1
            progress.store(i, ordering: .releasing)
        }
        rounds.store(i, ordering: .releasing)
    }

    /// Ends `run` and waits for it; returns its rounds.
    func stop() -> Int {
        stopping.store(true, ordering: .releasing)
        while rounds.load(ordering: .acquiring) < 0 { sched_yield() }
        return rounds.load(ordering: .acquiring)
    }
}
