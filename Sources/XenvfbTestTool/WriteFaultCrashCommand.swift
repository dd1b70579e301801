#if canImport(Glibc)
import Glibc
#endif
import Damage
import WriteFault
import Support
import Synchronization

/// `xenvfb-testtool write-fault-crash <mode>`: a helper for DamageTests. It
/// tracks a region with the write-fault handler installed, proves a tracked
/// write is handled, then dereferences a bad pointer. The process must die
/// with the Swift runtime's crash report (or SIGSEGV), not hang: faults
/// outside tracked regions are passed on to the previous handler.
///
/// `xenvfb-testtool write-fault-crash race <mode> [seconds]`: a thread writes into
/// a region without pause while the main thread starts and stops tracking
/// it, again and again; a fault raised just before the region's removal must
/// not kill the process. Exits 0 after the time (default 3 s).
enum WriteFaultCrashCommand {
    static func main(_ args: [String]) -> Int32 {
        if args.first == "race" {
            return race(mode: args.dropFirst().first.flatMap(DirtyTrackingMode.init(rawValue:)) ?? .mprotect,
                        seconds: args.dropFirst(2).first.flatMap(Double.init) ?? 3)
        }
        let mode = args.first.flatMap(DirtyTrackingMode.init(rawValue:)) ?? .mprotect
        let size = 16 * Int(getpagesize())
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              base != MAP_FAILED else { return 2 }
        do {
            let tracker = try makeDirtyTracker(base: base, byteCount: size, mode: mode)
            _ = try tracker.arm()
            base.storeBytes(of: 0x5a, toByteOffset: 3 * Int(getpagesize()) + 7, as: UInt8.self)
            let runs = try tracker.collect()
            say("tracked write handled: \(runs)")
            withExtendedLifetime(tracker) {
                let bad = UnsafeMutablePointer<Int>(bitPattern: 0x10)!
                bad.pointee = 1
            }
        } catch {
            say("error: \(error)")
            return 2
        }
        return 3 // not reached unless the bad store did not fault
    }

    /// What the writer thread and the main thread share.
    private final class RaceState: Sendable {
        let stop = Atomic<Bool>(false)
        let done = Atomic<Bool>(false)
        let writes = Atomic<Int>(0)
    }

    private static func race(mode: DirtyTrackingMode, seconds: Double) -> Int32 {
        let page = Int(getpagesize()), pages = 16
        guard let base = mmap(nil, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              base != MAP_FAILED else { return 2 }
        let region = UInt(bitPattern: base)
        let state = RaceState()
        do {
            try spawnThread {
                let base = UnsafeMutableRawPointer(bitPattern: region)!
                var n = 0
                while !state.stop.load(ordering: .relaxed) {
                    for p in 0..<pages { base.storeBytes(of: UInt8(truncatingIfNeeded: n), toByteOffset: p * page + n % page, as: UInt8.self) }
                    n += 1
                }
                state.writes.store(n * pages, ordering: .relaxed)
                state.done.store(true, ordering: .releasing)
            }
        } catch {
            say("error: \(error)")
            return 2
        }
        var start = timespec(), now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        var cycles = 0
        repeat {
            do {
                let tracker = try makeDirtyTracker(base: base, byteCount: pages * page, mode: mode)
                if mode == .uffd { _ = try tracker.arm() }   // the handler's part: mprotect of the whole region
                _ = try tracker.collect()
                tracker.close()
            } catch {
                say("error: \(error)")
                return 2
            }
            cycles += 1
            clock_gettime(CLOCK_MONOTONIC, &now)
        } while Double(now.tv_sec - start.tv_sec) + Double(now.tv_nsec - start.tv_nsec) / 1e9 < seconds
        state.stop.store(true, ordering: .relaxed)
        while !state.done.load(ordering: .acquiring) { usleep(1000) }
        say("race survived: \(cycles) trackers started and stopped under \(state.writes.load(ordering: .relaxed)) writes")
        return 0
    }

    private static func say(_ line: String) {
        let text = line + "\n"
        _ = text.withCString { write(2, $0, strlen($0)) }
    }
}
