#if canImport(Glibc)
import Glibc
#endif
import Support

/// Why a QMP client could not talk to its device model.
public struct QMPClientError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A blocking QMP client on a Unix socket: greeting, `qmp_capabilities`,
/// then one command at a time; events are skipped. Every wait is bounded by
/// the deadline. For tools that talk to a device model (xenvfb or QEMU):
/// `xenvfb screenshot`.
public final class QMPClient {
    /// The device model answered with an error.
    public struct CommandError: Error, CustomStringConvertible {
        public let command: String
        public let errorClass: String
        public let desc: String
        public var description: String { "QMP \(command): \(errorClass): \(desc)" }
    }

    private let fd: Int32
    private let deadline: UInt64
    private var buffer: [UInt8] = []
    private var nextID: Int64 = 1
    public let path: String

    /// Connects to `path`, reads the greeting and sends `qmp_capabilities`;
    /// `deadline` is a `MonotonicClock`-style nanosecond time for every wait.
    public init(path: String, deadline: UInt64) throws {
        self.path = path
        self.deadline = deadline
        do throws(SocketError) {
            fd = try UnixSocket.connect(to: path)
        } catch {
            throw QMPClientError("cannot connect to the QMP socket: \(error) (is the device model running?)")
        }
        let greeting = try readMessage()
        guard greeting["QMP"] != nil else { throw QMPClientError("\(path) did not greet like QMP: \(greeting.serialized)") }
        _ = try execute("qmp_capabilities", [:])
    }

    public func close() { Glibc.close(fd) }

    /// Runs `command`; returns its `return` value or throws its error.
    public func execute(_ command: String, _ arguments: JSONObject) throws -> JSON {
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
            guard n > 0 else { throw QMPClientError("QMP \(command): \(SystemError("send"))") }
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
                    throw QMPClientError("QMP: unreadable message from \(path): \(error)")
                }
            }
            guard buffer.count < 16 << 20 else { throw QMPClientError("QMP: message too long") }
            let now = MonotonicClock.now()
            guard now < deadline else { throw QMPClientError("QMP: no answer from \(path) before the timeout") }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let waitMs = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
            let r = poll(&p, 1, waitMs)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw QMPClientError("QMP: \(path) closed the connection") }
            buffer += chunk[..<n]
        }
    }
}
