#if canImport(Glibc)
import Glibc
#endif
import CShims
import Control
import Support

/// `xenvfb screenshot (--domid N | --qmp PATH) [-o FILE] [--format png|ppm]
/// [--wait-still MS] [--timeout S]`: asks a running device model (xenvfb,
/// or QEMU) for a picture of the guest's screen over QMP, as a small QMP
/// client of its own.
///
/// The device model writes the file (QMP `screendump`), so FILE is made
/// absolute; it is written under a temporary name next to FILE and renamed,
/// so FILE is always a complete picture. With `--wait-still MS` it first
/// waits until the screen has not changed for MS milliseconds: with xenvfb it
/// polls `x-xenvfb-query-frame`; with another device model it compares
/// successive screendumps.
enum ScreenshotCommand {
    static let usage = """
    usage: xenvfb screenshot (--domid N | --qmp PATH) [-o FILE] [--format png|ppm]
                             [--wait-still MS] [--timeout SECONDS]
      --domid N          the guest whose device model libxl started (/var/run/xen/qmp-libxl-N)
      --qmp PATH         the device model's QMP socket
      -o, --output FILE  where the picture goes (default: screenshot.png)
      --format png|ppm   the file format (default: from FILE's extension, else png)
      --wait-still MS    first wait until the screen has been still for MS milliseconds
      --timeout SECONDS  give up after this long (default 30)
    """

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    static func main(_ args: [String]) -> Int32 {
        let log = Log.logger("screenshot")
        var socketPath: String?, output: String?, format: String?
        var stillMs: Int?, timeoutSeconds = 30
        let parsed: [ParsedOption]
        do throws(UsageError) {
            parsed = try SubcommandArguments.parse(args, valued: ["--domid", "--qmp", "-o", "--output", "--format", "--wait-still", "--timeout"],
                                                   flags: ["-h", "--help"])
        } catch {
            log.error("\(error)\n\(usage)")
            return 2
        }
        for option in parsed {
            let v = option.value ?? ""
            switch option.name {
            case "--domid":
                guard let d = UInt32(v), d > 0, d < 0x7ff0 else {
                    log.error("--domid needs a guest domain id (1 to 32751)\n\(usage)")
                    return 2
                }
                socketPath = "/var/run/xen/qmp-libxl-\(d)"
            case "--qmp":
                guard !v.isEmpty else { log.error("--qmp needs a socket path\n\(usage)"); return 2 }
                socketPath = v.hasPrefix("unix:") ? String(v.dropFirst(5)) : v
            case "-o", "--output":
                guard !v.isEmpty else { log.error("\(option.name) needs a file name\n\(usage)"); return 2 }
                output = v
            case "--format":
                guard v == "png" || v == "ppm" else { log.error("--format is png or ppm\n\(usage)"); return 2 }
                format = v
            case "--wait-still":
                guard let ms = Int(v), ms >= 0, ms <= 3_600_000 else {
                    log.error("--wait-still needs milliseconds (0 to 3600000)\n\(usage)")
                    return 2
                }
                stillMs = ms
            case "--timeout":
                guard let s = Int(v), s > 0, s <= 86_400 else {
                    log.error("--timeout needs seconds (1 to 86400)\n\(usage)")
                    return 2
                }
                timeoutSeconds = s
            default: // -h, --help
                print(usage)
                return 0
            }
        }
        guard let socketPath else {
            log.error("say which device model: --domid N or --qmp PATH\n\(usage)")
            return 2
        }
        let fmt = format ?? (output.map { $0.lowercased().hasSuffix(".ppm") ? "ppm" : "png" } ?? "png")
        let file = absolute(output ?? "screenshot.\(fmt)")
        let deadline = MonotonicClock.now() + UInt64(timeoutSeconds) * 1_000_000_000
        do {
            // Answers get a little longer than the timeout, so a command sent
            // just before it can still be answered.
            let client = try QMPClient(path: socketPath, deadline: deadline + 5_000_000_000)
            defer { client.close() }
            if let stillMs { try waitStill(client, milliseconds: stillMs, deadline: deadline, scratch: file) }
            // Made here, exclusively and with an unpredictable name, by this
            // user: the device model (perhaps root) only truncates and writes
            // it, and refuses a symbolic link in its place.
            let temporary = try makeTemporary(next: file)
            do {
                _ = try client.execute("screendump", ["filename": .string(temporary), "format": .string(fmt)])
            } catch {
                unlink(temporary)
                throw error
            }
            guard rename(temporary, file) == 0 else {
                let e = SystemError("rename")
                unlink(temporary)
                throw Failure("cannot rename \(temporary) to \(file): \(e)")
            }
            log.info("wrote \(file)")
            return 0
        } catch {
            log.error("\(error)")
            return 1
        }
    }

    static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/") else { return path }
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return path }
        let cwd = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return cwd + "/" + path
    }

    /// Waits until the screen has not changed for `milliseconds`.
    static func waitStill(_ client: QMPClient, milliseconds: Int, deadline: UInt64, scratch: String) throws {
        let still = UInt64(milliseconds) * 1_000_000
        let pollMs = max(10, min(100, milliseconds / 4))
        var useFrameQuery = true
        var lastChanges: Int64?
        var lastDump: [UInt8]?
        var stableSince = MonotonicClock.now()
        let dumpPath = try makeTemporary(next: scratch)
        defer { unlink(dumpPath) }
        while true {
            if MonotonicClock.now() >= deadline {
                throw Failure("the screen did not stay still for \(milliseconds) ms before the timeout")
            }
            let now = MonotonicClock.now()
            if useFrameQuery {
                do {
                    let frame = try client.execute("x-xenvfb-query-frame", [:])
                    guard let changes = frame["changes"]?.intValue, let idle = frame["idle-ms"]?.intValue else {
                        throw Failure("x-xenvfb-query-frame answered \(frame.serialized)")
                    }
                    if changes != lastChanges {
                        lastChanges = changes
                        // The device model knows when the picture last changed.
                        stableSince = now &- UInt64(max(idle, 0)) * 1_000_000
                    }
                } catch let error as QMPClient.CommandError where error.errorClass == "CommandNotFound" {
                    useFrameQuery = false // not xenvfb: compare pictures instead
                    continue
                }
            } else {
                _ = try client.execute("screendump", ["filename": .string(dumpPath), "format": "ppm"])
                let bytes = readFile(dumpPath)
                if bytes != lastDump {
                    lastDump = bytes
                    stableSince = now
                }
            }
            if now &- stableSince >= still { return }
            usleep(UInt32(pollMs) * 1000)
        }
    }

    /// A new empty file next to `path` (`mkstemp`: exclusive, unpredictable).
    static func makeTemporary(next path: String) throws -> String {
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        var template = Array((dir + "/.xenvfb-screenshot-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw Failure("cannot create a temporary file in \(dir): \(SystemError("mkstemp"))") }
        close(fd)
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += chunk[..<n]
        }
        return out
    }
}

