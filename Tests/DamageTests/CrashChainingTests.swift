import Testing
import Glibc
import Damage
import WriteFault

/// The SIGSEGV handler must pass faults outside tracked regions on: a child
/// process (`xenvfb-testtool write-fault-crash`) tracks a region, writes into it,
/// then dereferences a bad pointer, and must die of SIGSEGV with the Swift
/// runtime's crash report (or the default action), not hang or exit cleanly.
@Suite struct CrashChainingTests {
    static var testToolPath: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = n > 0 ? String(decoding: buffer[0 ..< n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return dir + "/xenvfb-testtool"
    }

    /// Spawns the helper; returns (wait status, stderr) or nil on timeout.
    func runCrashHelper(mode: String, backtrace: Bool, extra: [String] = []) throws -> (Int32, String)? {
        var template = Array("/tmp/wfcrash.XXXXXX".utf8CString)
        let dirPtr = try #require(mkdtemp(&template))
        let dir = String(cString: dirPtr)
        let errPath = dir + "/stderr"
        defer { unlink(errPath); rmdir(dir) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)

        let path = Self.testToolPath
        let args = [path, "write-fault-crash"] + extra + [mode] + (extra.isEmpty ? [] : ["3"])
        var env: [String] = []
        var e = environ
        while let p = e.pointee { let s = String(cString: p); if !s.hasPrefix("SWIFT_BACKTRACE=") { env.append(s) }; e += 1 }
        env.append(backtrace ? "SWIFT_BACKTRACE=enable=yes,interactive=no,symbolicate=fast" : "SWIFT_BACKTRACE=enable=no")
        let cArgs = args.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, cArgs, cEnv)
        #expect(rc == 0, "cannot run \(path) (build it: swift build): \(String(cString: strerror(rc)))")
        guard rc == 0 else { return nil }
        var status: Int32 = 0
        for _ in 0 ..< 1200 { // 120 s: symbolication of a debug build can be slow
            if waitpid(pid, &status, WNOHANG) == pid {
                let fd = open(errPath, O_RDONLY)
                var text = [UInt8](repeating: 0, count: 65536)
                let n = fd >= 0 ? read(fd, &text, text.count) : 0
                if fd >= 0 { close(fd) }
                return (status, String(decoding: text[0 ..< max(0, n)], as: UTF8.self))
            }
            usleep(100_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
        return nil
    }

    // One handler serves both modes; the Swift backtracer (CPU-heavy in a
    // debug build) is exercised once, the default action for each mode.
    @Test(arguments: [("mprotect", true), ("mprotect", false), ("uffd", false)])
    func aRealCrashOutsideTrackedRegionsIsStillReported(mode: String, backtrace: Bool) throws {
        let result = try runCrashHelper(mode: mode, backtrace: backtrace)
        let (status, stderr) = try #require(result, "helper hung instead of crashing")
        #expect(stderr.contains("tracked write handled: [[3+1]]"), "\(stderr)")
        let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
        // Under --sanitize=address the previous handler is ASan's: it reports
        // the SEGV and exits 1 instead of dying by the signal.
        let asan = stderr.contains("AddressSanitizer: SEGV on unknown address 0x000000000010")
        #expect((signaled && (status & 0x7f) == SIGSEGV) || (asan && !signaled && (status >> 8) & 0xff == 1),
                "wait status \(status), stderr: \(stderr)")
        if backtrace && !asan {
            #expect(stderr.contains("Program crashed: Bad pointer dereference"), "\(stderr)")
        }
    }

    // A thread writes into a region without pause while the main thread
    // tracks it and stops tracking it, 40,000-300,000 times in 3 s: a write
    // that faulted just before wf_region_remove reaches the handler after it.
    // Before the handler retried such faults, the helper died of SIGSEGV
    // within 50 ms in both modes.
    @Test(arguments: ["mprotect", "uffd"])
    func aWriteFaultingAsItsRegionIsRemovedIsRetriedNotACrash(mode: String) throws {
        let result = try runCrashHelper(mode: mode, backtrace: false, extra: ["race"])
        let (status, stderr) = try #require(result, "helper hung")
        #expect(status == 0, "wait status \(status), stderr: \(stderr)")
        #expect(stderr.contains("race survived"), "\(stderr)")
    }
}
