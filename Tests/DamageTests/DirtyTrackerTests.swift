import Testing
import Glibc
import CShims
import Damage
import WriteFault
import Synchronization

/// Every tracking technique and kind of memory the engine supports.
let trackedModes: [DirtyTrackingMode] = [.uffd, .mprotect]
let allModes: [DirtyTrackingMode] = [.uffd, .mprotect, .compare]

func pollReadable(_ fd: Int32, timeoutMilliseconds: Int32 = 0) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, timeoutMilliseconds) == 1
}

@Suite struct DirtyTrackerTests {
    @Test(arguments: allModes, [false, true])
    func writtenPagesAreReportedAsRunsAndProtectedAgain(mode: DirtyTrackingMode, memfd: Bool) throws {
        let region = Region(bytes: 64 * 4096, memfd: memfd)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        #expect(tracker.mode == mode)
        #expect(try tracker.collect() == [])
        let page = tracker.pageSize
        region.store(1, at: 3 * page + 5)
        region.store(2, at: 4 * page)
        region.store(3, at: 40 * page + page - 1)
        #expect(try tracker.collect() == [PageRun(first: 3, count: 2), PageRun(first: 40, count: 1)])
        #expect(try tracker.collect() == [])
        region.store(9, at: 4 * page + 100)
        #expect(try tracker.collect() == [PageRun(first: 4, count: 1)])
    }

    @Test(arguments: allModes)
    func peekReportsWithoutProtectingAndCollectStillSeesThePages(mode: DirtyTrackingMode) throws {
        let region = Region(bytes: 16 * 4096)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        region.store(1, at: 2 * tracker.pageSize)
        #expect(try tracker.peek() == [PageRun(first: 2, count: 1)])
        region.store(2, at: 2 * tracker.pageSize + 1)
        region.store(3, at: 7 * tracker.pageSize)
        #expect(try tracker.collect() == [PageRun(first: 2, count: 1), PageRun(first: 7, count: 1)])
        #expect(try tracker.peek() == [])
    }

    /// Property: a consumer that copies only the reported pages after each
    /// collect always ends up with the same bytes as the region.
    @Test(arguments: allModes, [UInt64(1), 2, 3])
    func randomWritesAreNeverLost(mode: DirtyTrackingMode, seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        let region = Region(bytes: 96 * 4096, memfd: seed % 2 == 0)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        let mirror = Mirror(of: region)
        for round in 0 ..< 150 {
            let writes = Int.random(in: 0 ... 24, using: &rng)
            for _ in 0 ..< writes {
                // Clustered and scattered writes alike.
                let offset = rng.next() % 4 == 0
                    ? Int.random(in: 0 ..< 4096, using: &rng)
                    : Int.random(in: 0 ..< region.byteCount, using: &rng)
                region.store(UInt8.random(in: 1 ... 255, using: &rng), at: offset)
            }
            if round % 7 == 3 { _ = try tracker.arm() }
            mirror.apply(try tracker.collect(), from: region, pageSize: tracker.pageSize)
            let diff = mirror.firstDifference(from: region)
            #expect(diff == nil, "round \(round): byte \(diff ?? -1) written but not reported")
            if diff != nil { break }
        }
    }

    /// Writers on several threads keep writing while the collector runs;
    /// whatever lands during a collect must show up in that or the next one.
    @Test(arguments: allModes)
    func concurrentWritersDuringCollectsLoseNothing(mode: DirtyTrackingMode) throws {
        let region = Region(bytes: 256 * 4096)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        let mirror = Mirror(of: region)
        let done = AtomicFlag()
        let address = Int(bitPattern: region.base), size = region.byteCount
        let writers = 3
        let finished = Counter()
        let shared = Unchecked(value: (tracker, mirror, region))
        // The collector runs on its own thread too, as the event loop would.
        onThreads(writers + 1) { i in
            if i == writers {
                let (tracker, mirror, region) = shared.value
                var n = 0
                while !done.isSet {
                    if let runs = try? tracker.collect() { mirror.apply(runs, from: region, pageSize: tracker.pageSize) }
                    // Arm now and then, as the engine does when a tick is idle:
                    // writers then fault on a read-only region all at once.
                    n += 1
                    if n % 5 == 0 { _ = try? tracker.arm() }
                }
                return
            }
            var rng = SeededRandom(seed: UInt64(100 + i))
            let base = UnsafeMutableRawPointer(bitPattern: address)!
            for n in 0 ..< 40_000 {
                let offset = Int.random(in: 0 ..< size, using: &rng)
                base.storeBytes(of: UInt8(truncatingIfNeeded: n | 1), toByteOffset: offset, as: UInt8.self)
            }
            if finished.increment() == writers { done.set() }
        }
        mirror.apply(try tracker.collect(), from: region, pageSize: tracker.pageSize)
        #expect(mirror.firstDifference(from: region) == nil)
    }

    @Test(arguments: trackedModes)
    func armedTrackerNotifiesOnTheFirstWriteOnly(mode: DirtyTrackingMode) throws {
        let region = Region(bytes: 32 * 4096)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        let fd = try #require(tracker.notificationFD)
        #expect(try tracker.arm())
        #expect(!pollReadable(fd))
        region.store(7, at: 5 * tracker.pageSize)
        #expect(pollReadable(fd))
        tracker.drainNotification()
        region.store(8, at: 9 * tracker.pageSize)
        #expect(!pollReadable(fd))
        #expect(try tracker.collect() == [PageRun(first: 5, count: 1), PageRun(first: 9, count: 1)])
    }

    @Test(arguments: trackedModes)
    func armingAfterAnUncollectedWriteSaysSo(mode: DirtyTrackingMode) throws {
        let region = Region(bytes: 8 * 4096)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
        defer { tracker.close() }
        region.store(1, at: 0)
        #expect(try tracker.arm() == false)
        #expect(try tracker.collect() == [PageRun(first: 0, count: 1)])
        #expect(try tracker.arm() == true)
    }

    /// Tests run in parallel in one process, so the handler serves many
    /// regions at once; each sees only its own writes.
    @Test func manyRegionsAreTrackedAtOnceWithoutCrosstalk() throws {
        let regions = (0 ..< 12).map { _ in Region(bytes: 8 * 4096) }
        let trackers = try regions.map { try MprotectTracker(base: $0.base, byteCount: $0.byteCount) }
        defer { trackers.forEach { $0.close() } }
        let addresses = regions.map { Int(bitPattern: $0.base) }
        onThreads(regions.count) { i in
            let base = UnsafeMutableRawPointer(bitPattern: addresses[i])!
            base.storeBytes(of: 1, toByteOffset: (i % 8) * 4096 + 9, as: UInt8.self)
        }
        for (i, t) in trackers.enumerated() {
            #expect(try t.collect() == [PageRun(first: i % 8, count: 1)])
        }
    }

    @Test func closedTrackerLeavesTheRegionWritable() throws {
        let region = Region(bytes: 4 * 4096)
        for mode in allModes {
            let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: mode)
            _ = try tracker.arm()
            tracker.close()
            // A read(2) into a protected page would fail with EFAULT.
            var fds: [Int32] = [0, 0]
            #expect(pipe(&fds) == 0)
            #expect(write(fds[1], "abc", 3) == 3)
            #expect(read(fds[0], region.base + 4096, 3) == 3, "\(mode): region still protected")
            close(fds[0]); close(fds[1])
        }
    }

    @Test func misalignedRegionsAreRefused() throws {
        let region = Region(bytes: 4 * 4096)
        #expect(throws: DirtyTrackingError.self) {
            _ = try makeDirtyTracker(base: region.base + 1, byteCount: 4096, mode: .mprotect)
        }
        #expect(throws: DirtyTrackingError.self) {
            _ = try makeDirtyTracker(base: region.base, byteCount: 100, mode: .uffd)
        }
    }

    @Test func autoPicksUffdOnThisKernel() throws {
        // The reference machine (Linux 6.18, root) has WP_ASYNC + PAGEMAP_SCAN.
        let region = Region(bytes: 4 * 4096)
        let tracker = try makeDirtyTracker(base: region.base, byteCount: region.byteCount, mode: .auto)
        defer { tracker.close() }
        #expect(tracker.mode == .uffd)
    }
}

final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func increment() -> Int { value.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue }
}

/// Hands non-Sendable test objects to helper threads the test joins.
struct Unchecked<T>: @unchecked Sendable { let value: T }
