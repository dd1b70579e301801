#if canImport(Glibc)
import Glibc
#endif
import Damage
import WriteFault

/// `xenvfb-testtool write-fault-crash <mode>`: a helper for DamageTests. It
/// tracks a region with the write-fault handler installed, proves a tracked
/// write is handled, then dereferences a bad pointer. The process must die
/// with the Swift runtime's crash report (or SIGSEGV), not hang: faults
/// outside tracked regions are passed on to the previous handler.
enum WriteFaultCrashCommand {
    static func main(_ args: [String]) -> Int32 {
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

    private static func say(_ line: String) {
        let text = line + "\n"
        _ = text.withCString { write(2, $0, strlen($0)) }
    }
}
