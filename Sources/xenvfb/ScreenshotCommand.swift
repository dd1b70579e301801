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
        var i = 0
        while i < args.count {
            var arg = args[i]
            var inline: String?
            if arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") {
                inline = String(arg[arg.index(after: eq)...])
                arg = String(arg[..<eq])
            }
            func value() -> String? {
                if let inline { return inline }
                i += 1
                return i < args.count ? args[i] : nil
            }
            switch arg {
            case "--domid":
                guard let v = value(), let d = UInt32(v), d > 0, d < 0x7ff0 else {
                    log.error("--domid needs a guest domain id (1 to 32751)\n\(usage)")
                    return 2
                }
                socketPath = "/var/run/xen/qmp-libxl-\(d)"
            case "--qmp":
                guard let v = value(), !v.isEmpty else { log.error("--qmp needs a socket path\n\(usage)"); return 2 }
                socketPath = v.hasPrefix("unix:") ? String(v.dropFirst(5)) : v
            case "-o", "--output":
                guard let v = value(), !v.isEmpty else { log.error("\(arg) needs a file name\n\(usage)"); return 2 }
                output = v
            case "--format":
                guard let v = value(), v == "png" || v == "ppm" else { log.error("--format is png or ppm\n\(usage)"); return 2 }
                format = v
            case "--wait-still":
                guard let v = value(), let ms = Int(v), ms >= 0, ms <= 3_600_000 else {
                    log.error("--wait-still needs milliseconds (0 to 3600000)\n\(usage)")
                    return 2
                }
                stillMs = ms
            case "--timeout":
                guard let v = value(), let s = Int(v), s > 0, s <= 86_400 else {
                    log.error("--timeout needs seconds (1 to 86400)\n\(usage)")
                    return 2
                }
                timeoutSeconds = s
            case "-h", "--help":
                print(usage)
                return 0
            default:
                log.error("unknown argument '\(args[i])'\n\(usage)")
                return 2
            }
            i += 1
        }
        guard let socketPath else {
            log.error("say which device model: --domid N or --qmp PATH\n\(usage)")
            return 2
        }
        let fmt = format ?? (output.map { $0.lowercased().hasSuffix(".ppm") ? "ppm" : "png" } ?? "png")
        let file = absolute(output ?? "screenshot.\(fmt)")
        let deadline = EventLoopClock.now() + UInt64(timeoutSeconds) * 1_000_000_000
        do {
            // Answers get a little longer than the timeout, so a command sent
            // just before it can still be answered.
            let client = try QMPClientConnection(path: socketPath, deadline: deadline + 5_000_000_000)
            defer { client.close() }
            if let stillMs { try waitStill(client, milliseconds: stillMs, deadline: deadline, scratch: file) }
            let temporary = file + ".tmp-\(getpid())"
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
    static func waitStill(_ client: QMPClientConnection, milliseconds: Int, deadline: UInt64, scratch: String) throws {
        let still = UInt64(milliseconds) * 1_000_000
        let pollMs = max(10, min(100, milliseconds / 4))
        var useFrameQuery = true
        var lastChanges: Int64?
        var lastDump: [UInt8]?
        var stableSince = EventLoopClock.now()
        let dumpPath = scratch + ".still-\(getpid()).ppm"
        defer { unlink(dumpPath) }
        while true {
            if EventLoopClock.now() >= deadline {
                throw Failure("the screen did not stay still for \(milliseconds) ms before the timeout")
            }
            let now = EventLoopClock.now()
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
                } catch let error as QMPClientConnection.CommandError where error.errorClass == "CommandNotFound" {
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

/// Monotonic nanoseconds (the event loop's clock, without a loop).
enum EventLoopClock {
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// A blocking QMP client on a Unix socket: greeting, `qmp_capabilities`,
/// then one command at a time; events are skipped. Every wait is bounded by
/// the deadline.
final class QMPClientConnection {
    struct CommandError: Error, CustomStringConvertible {
        let command: String
        let errorClass: String
        let desc: String
        var description: String { "QMP \(command): \(errorClass): \(desc)" }
    }

    private let fd: Int32
    private let deadline: UInt64
    private var buffer: [UInt8] = []
    private var nextID: Int64 = 1
    let path: String

    init(path: String, deadline: UInt64) throws {
        self.path = path
        self.deadline = deadline
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw ScreenshotCommand.Failure("QMP socket path '\(path)' is too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ScreenshotCommand.Failure("\(SystemError("socket"))") }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = SystemError("connect")
            Glibc.close(fd)
            throw ScreenshotCommand.Failure("cannot connect to the QMP socket \(path): \(e) (is the device model running?)")
        }
        let greeting = try readMessage()
        guard greeting["QMP"] != nil else { throw ScreenshotCommand.Failure("\(path) did not greet like QMP: \(greeting.serialized)") }
        _ = try execute("qmp_capabilities", [:])
    }

    func close() { Glibc.close(fd) }

    /// Runs `command`; returns its `return` value or throws its error.
    func execute(_ command: String, _ arguments: JSONObject) throws -> JSON {
        let id = nextID
        nextID += 1
        var request: JSONObject = ["execute": .string(command), "id": .int(id)]
        if !arguments.isEmpty { request["arguments"] = .object(arguments) }
        var bytes = JSON.object(request).serializedBytes
        bytes.append(10)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ScreenshotCommand.Failure("QMP \(command): \(SystemError("send"))") }
            sent += n
        }
        while true {
            let reply = try readMessage()
            if reply["event"] != nil { continue }
            guard reply["id"]?.intValue == id else { continue }
            if let error = reply["error"] {
                throw CommandError(command: command, errorClass: error["class"]?.stringValue ?? "?",
                                   desc: error["desc"]?.stringValue ?? error.serialized)
            }
            return reply["return"] ?? [:]
        }
    }

    /// The next JSON message (one per line, as QEMU and xenvfb send them).
    private func readMessage() throws -> JSON {
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = buffer[..<nl]
                buffer.removeSubrange(...nl)
                if line.allSatisfy({ $0 == 13 || $0 == 32 }) { continue }
                do throws(JSONError) {
                    return try JSON.parse(line)
                } catch {
                    throw ScreenshotCommand.Failure("QMP: unreadable message from \(path): \(error)")
                }
            }
            guard buffer.count < 16 << 20 else { throw ScreenshotCommand.Failure("QMP: message too long") }
            let now = EventLoopClock.now()
            guard now < deadline else { throw ScreenshotCommand.Failure("QMP: no answer from \(path) before the timeout") }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let waitMs = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
            let r = poll(&p, 1, waitMs)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ScreenshotCommand.Failure("QMP: \(path) closed the connection") }
            buffer += chunk[..<n]
        }
    }
}
