#if canImport(Glibc)
import Glibc
#endif
import CShims
import EventLoop
import Logging
import Support

/// The QMP monitor: serves QEMU's machine protocol on every configured
/// socket, on the event loop, to any number of clients at once.
///
/// Each client gets the greeting, must negotiate with `qmp_capabilities`,
/// and then runs commands one at a time in the order sent (a command that
/// answers later holds back the client's next one, as QEMU does). Other
/// modules add commands with `registerCommand`. Input is bounded per message
/// and output per client: a client that floods or stops reading is
/// disconnected without affecting the others.
public final class QMPServer {
    /// Limits per client.
    public struct Limits: Sendable {
        /// Longest message (or stray line) accepted; longer input gets an
        /// error and the connection is closed.
        public var maxMessageBytes = 64 * 1024
        /// Most output queued for a client that does not read; beyond it the
        /// client is disconnected.
        public var maxQueuedOutputBytes = 1 << 20
        /// Most clients connected at once over all sockets.
        public var maxClients = 32
        public init() {}
    }

    public let loop: EventLoop
    public let limits: Limits
    /// Runs when a client sends `quit`, after its reply is sent. The device
    /// model sets it to its shutdown; by default the loop stops.
    public var onQuit: (() -> Void)?
    /// Called after every run-state change (`cont`, `stop`).
    public var runStateObservers: [(RunState) -> Void] = []
    public private(set) var runState: RunState
    /// The guest's name for `query-name`.
    public var guestName: String?
    /// What `query-display-options` reports (`none` or `sdl`).
    public var displayType = "none"

    /// Where `query-vnc` and VNC passwords go. A password set before the
    /// provider registers is handed to it on registration.
    public var vncProvider: QMPVNCProvider? {
        didSet {
            guard let provider = vncProvider, let password = vncPassword else { return }
            do throws(QMPError) {
                try provider.setVNCPassword(password)
            } catch {
                log.warning("the VNC display refused the stored password: \(error.desc)")
            }
        }
    }
    /// The last VNC password set over QMP. Never logged.
    public private(set) var vncPassword: String?

    private var commands: [String: QMPCommandHandler] = [:]
    private var listeners: [Listener] = []
    private var clients: [Int32: Client] = [:]
    private var nextClientNumber = 1
    private let log: Logger

    private struct Listener {
        var id: String
        var fd: Int32
        var pretty: Bool
        /// The socket this process bound (nil for an inherited fd).
        var unix: UnixListener?
        /// For query-chardev.
        var address: String
    }

    /// Creates a server with the built-in commands. `runState` is the initial
    /// state: `prelaunch` under `-S`.
    public init(loop: EventLoop, runState: RunState = .running, limits: Limits = Limits(),
                logger: Logger = Log.logger("qmp")) {
        self.loop = loop
        self.runState = runState
        self.limits = limits
        self.log = logger
        registerBuiltins()
    }

    deinit {
        for c in clients.values { Glibc.close(c.fd) }
        for l in listeners { Glibc.close(l.fd) }
    }

    // MARK: Commands

    /// Adds (or replaces) the command `name`. The handler runs on the loop
    /// with the command's arguments (`{}` when none were sent) and must call
    /// `reply` once, now or later.
    public func registerCommand(_ name: String, _ handler: @escaping QMPCommandHandler) {
        commands[name] = handler
    }

    /// The names `query-commands` reports, sorted.
    public var commandNames: [String] { commands.keys.sorted() }

    /// Sends an event to every client past capabilities negotiation.
    public func emitEvent(_ name: String, data: JSON? = nil) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var event: JSONObject = ["event": .string(name)]
        if let data { event["data"] = data }
        event["timestamp"] = ["seconds": .int(Int64(ts.tv_sec)), "microseconds": .int(Int64(ts.tv_nsec / 1000))]
        for client in Array(clients.values) where client.negotiated {
            send(.object(event), to: client)
        }
    }

    /// Moves to `state`, emitting `STOP` or `RESUME` as QEMU does.
    public func setRunState(_ state: RunState) {
        guard state != runState else { return }
        let wasRunning = runState == .running
        runState = state
        if wasRunning && state != .running { emitEvent("STOP") }
        if !wasRunning && state == .running { emitEvent("RESUME") }
        for o in runStateObservers { o(state) }
    }

    // MARK: Sockets

    /// Starts serving `endpoint`: binds and listens on its path (removing a
    /// stale socket left there), or adopts its inherited listening fd.
    public func listen(_ endpoint: QMPEndpoint) throws(QMPSocketError) {
        var listener: Listener
        switch endpoint.socket {
        case .path(let path):
            let unix: UnixListener
            do throws(SocketError) {
                unix = try UnixListener(path: path, mode: 0o600)
            } catch {
                throw QMPSocketError(id: endpoint.id, what: "\(error)")
            }
            listener = Listener(id: endpoint.id, fd: unix.fd, pretty: endpoint.pretty, unix: unix,
                                address: "unix:\(path),server=on")
        case .fd(let fd):
            try Self.adoptListening(fd: fd, id: endpoint.id)
            listener = Listener(id: endpoint.id, fd: fd, pretty: endpoint.pretty, unix: nil,
                                address: "unix:\(UnixSocketAddress.localPath(of: fd) ?? ""),server=on")
        }
        let fd = listener.fd
        do {
            try loop.watch(fd: fd) { [unowned self] _ in self.acceptClients(listenerFD: fd) }
        } catch {
            if let unix = listener.unix { unix.close() } else { Glibc.close(fd) }
            throw QMPSocketError(id: endpoint.id, what: "cannot watch the socket: \(error)")
        }
        listeners.append(listener)
        log.info("QMP monitor listening", metadata: ["chardev": "\(listener.id)", "address": "\(listener.address)"])
    }

    /// Closes every client and listener, and removes the socket files this
    /// process created (if they are still the ones it created).
    public func close() {
        for c in Array(clients.values) { drop(c, reason: nil) }
        for l in listeners {
            loop.unwatch(fd: l.fd)
            // Removes the socket file only if it is still the one made here.
            if let unix = l.unix { unix.close() } else { Glibc.close(l.fd) }
        }
        listeners.removeAll()
    }

    /// How many clients are connected (for tests and logs).
    public var clientCount: Int { clients.count }

    static func adoptListening(fd: Int32, id: String) throws(QMPSocketError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw QMPSocketError(id: id, what: "fd=\(fd) is not open") }
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw QMPSocketError(id: id, what: "fd=\(fd) is not a socket") }
        var accepting: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0, accepting != 0 else {
            throw QMPSocketError(id: id, what: "fd=\(fd) is not a listening socket")
        }
        _ = cshims_set_nonblocking(fd)
        _ = cshims_set_cloexec(fd)
    }

    // MARK: Clients

    private final class Client {
        let fd: Int32
        let number: Int
        let monitor: String
        let pretty: Bool
        var splitter: JSONStreamSplitter
        var output: [UInt8] = []
        var outputStart = 0
        var negotiated = false
        /// A command is running; further input waits.
        var busy = false
        /// Flush what is queued, then close (after a fatal input error).
        var closing = false
        /// The peer hung up while a command was running: the fd is no
        /// longer watched, and the client is dropped once it is answered.
        var hungUp = false
        var closed = false

        init(fd: Int32, number: Int, monitor: String, pretty: Bool, maxMessageBytes: Int) {
            self.fd = fd
            self.number = number
            self.monitor = monitor
            self.pretty = pretty
            self.splitter = JSONStreamSplitter(maxBytes: maxMessageBytes)
        }

        var queued: Int { output.count - outputStart }
    }

    private func acceptClients(listenerFD: Int32) {
        guard let listener = listeners.first(where: { $0.fd == listenerFD }) else { return }
        for _ in 0..<16 {
            guard let fd = UnixSocket.accept(on: listenerFD) else { return } // none left, or retried at the next wake-up
            guard clients.count < limits.maxClients else {
                log.warning("QMP client refused: too many clients", metadata: ["chardev": "\(listener.id)"])
                Glibc.close(fd)
                continue
            }
            let client = Client(fd: fd, number: nextClientNumber, monitor: listener.id, pretty: listener.pretty,
                                maxMessageBytes: limits.maxMessageBytes)
            nextClientNumber += 1
            do {
                try loop.watch(fd: fd) { [unowned self, unowned client] events in self.clientEvent(client, events) }
            } catch {
                Glibc.close(fd)
                continue
            }
            clients[fd] = client
            log.debug("QMP client connected", metadata: ["chardev": "\(listener.id)", "client": "\(client.number)"])
            let greeting: JSON = [
                "QMP": [
                    "version": [
                        "qemu": ["micro": .int(XenvfbVersion.qemu.micro), "minor": .int(XenvfbVersion.qemu.minor),
                                 "major": .int(XenvfbVersion.qemu.major)],
                        "package": .string(XenvfbVersion.package),
                    ],
                    "capabilities": [],
                ],
            ]
            send(greeting, to: client)
        }
    }

    private func clientEvent(_ client: Client, _ events: EventLoop.Events) {
        if events.contains(.writable) { flush(client) }
        guard !client.closed else { return }
        if !client.busy && !client.closing && events.contains(.readable) {
            readInput(client) // reads the end of input too, and drops the client there
        } else if !events.isDisjoint(with: .hangup) {
            // Hang-ups are level-triggered and cannot be masked. A peer that
            // only shut down its sending side may still read the answer to
            // a running command: stop watching it rather than spin until
            // then. A peer that is gone entirely is dropped now.
            let gone = events.rawValue & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0
            if client.busy && !gone {
                client.hungUp = true
                loop.unwatch(fd: client.fd)
            } else {
                drop(client, reason: nil)
            }
        }
    }

    private func readInput(_ client: Client) {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        // A few reads per wake-up, so one busy client cannot starve the rest.
        for _ in 0..<4 {
            let n = chunk.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                client.splitter.append(chunk[..<n])
                processInput(client)
                if client.closed || client.busy || client.closing { return }
                if n < chunk.count { return }
            } else if n == 0 {
                drop(client, reason: nil)
                return
            } else {
                if errno == EAGAIN || errno == EINTR { return }
                drop(client, reason: "\(SystemError("recv"))")
                return
            }
        }
    }

    /// Handles complete messages until the input runs out or a command is
    /// still answering.
    private func processInput(_ client: Client) {
        while !client.busy && !client.closing && !client.closed, let piece = client.splitter.next() {
            switch piece {
            case .tooLong:
                log.warning("QMP client sent an over-long message; disconnecting",
                            metadata: ["chardev": "\(client.monitor)", "client": "\(client.number)"])
                send(["error": QMPError.generic("JSON message too long (limit \(limits.maxMessageBytes) bytes)").json], to: client)
                client.closing = true
                updateInterest(client)
                if client.queued == 0 { drop(client, reason: nil) }
                return
            case .stray(let bytes):
                // A scalar is valid JSON but not a QMP message; anything else is a parse error.
                if (try? JSON.parse(bytes)) != nil {
                    send(["error": QMPError.generic("QMP input must be a JSON object").json], to: client)
                } else {
                    send(["error": QMPError.generic("JSON parse error, invalid input").json], to: client)
                }
            case .message(let bytes):
                let request: JSON
                do throws(JSONError) {
                    request = try JSON.parse(bytes, limits: .init(maxBytes: limits.maxMessageBytes, maxDepth: 64))
                } catch {
                    send(["error": QMPError.generic("JSON parse error, \(error)").json], to: client)
                    continue
                }
                dispatch(request, from: client)
            }
        }
        updateInterest(client)
    }

    private func dispatch(_ request: JSON, from client: Client) {
        guard case .object(let message) = request else {
            send(["error": QMPError.generic("QMP input must be a JSON object").json], to: client)
            return
        }
        let id = message["id"]
        func answer(_ result: Result<JSON, QMPError>) {
            var response: JSONObject
            switch result {
            case .success(let value): response = ["return": value]
            case .failure(let error): response = ["error": error.json]
            }
            if let id { response["id"] = id }
            send(.object(response), to: client)
        }
        // QEMU's qmp_dispatch_check_obj, in its order and words.
        var command: String?
        for (key, value) in message {
            switch key {
            case "execute":
                guard case .string(let name) = value else {
                    return answer(.failure(.generic("QMP input member 'execute' must be a string")))
                }
                command = name
            case "arguments":
                guard case .object = value else {
                    return answer(.failure(.generic("QMP input member 'arguments' must be an object")))
                }
            case "id":
                continue
            default:
                return answer(.failure(.generic("QMP input member '\(key)' is unexpected")))
            }
        }
        guard let command else { return answer(.failure(.generic("QMP input lacks member 'execute'"))) }
        let arguments = message["arguments"]?.objectValue ?? JSONObject()

        if !client.negotiated {
            guard command == "qmp_capabilities" else {
                return answer(.failure(.commandNotFound("Expecting capabilities negotiation with 'qmp_capabilities'")))
            }
            do throws(QMPError) {
                try arguments.onlyKeys(["enable"])
                if let enable = arguments["enable"] {
                    guard case .array(let caps) = enable else {
                        throw .generic("Invalid parameter type for 'enable', expected: array")
                    }
                    for cap in caps {
                        guard case .string(let name) = cap else { throw .generic("Invalid parameter type for 'enable[0]', expected: string") }
                        guard name == "oob" else { throw .generic("Parameter 'enable[0]' does not accept value '\(name)'") }
                        throw .generic("Capability 'oob' not available")
                    }
                }
            } catch {
                return answer(.failure(error))
            }
            client.negotiated = true
            return answer(.success([:]))
        }
        if command == "qmp_capabilities" {
            return answer(.failure(.commandNotFound("Capabilities negotiation is already complete, command ignored")))
        }
        guard let handler = commands[command] else {
            return answer(.failure(.commandNotFound("The command \(command) has not been found")))
        }
        // Only the command's name is logged: arguments may hold passwords.
        log.debug("QMP command", metadata: ["command": "\(command)", "client": "\(client.number)"])
        client.busy = true
        var answered = false
        var inHandler = true
        let reply = QMPReply { [weak self, weak client] result in
            guard !answered else { return }
            answered = true
            guard let self, let client, !client.closed else { return }
            client.busy = false
            answer(result)
            if client.hungUp {
                self.drop(client, reason: nil)
            } else if !inHandler && !client.closed {
                // A late answer: input that arrived meanwhile is handled
                // now, on the loop but outside the code that answered.
                self.loop.addTimer(after: .zero) { [weak self, weak client] in
                    guard let self, let client, !client.closed else { return }
                    self.processInput(client)
                }
            }
        }
        handler(arguments, reply)
        inHandler = false
        if !answered { updateInterest(client) }
    }

    // MARK: Output

    private func send(_ message: JSON, to client: Client) {
        guard !client.closed else { return }
        var bytes = client.pretty ? Array(message.prettySerialized.utf8) : message.serializedBytes
        bytes.append(0x0D)
        bytes.append(0x0A)
        guard client.queued + bytes.count <= limits.maxQueuedOutputBytes else {
            drop(client, reason: "it does not read its replies (\(client.queued) bytes queued)")
            return
        }
        compactOutput(client)
        client.output.append(contentsOf: bytes)
        flush(client)
    }

    /// Drops already-sent bytes from the front of the queue once they are
    /// the larger part of it.
    private func compactOutput(_ client: Client) {
        guard client.outputStart > 0, client.outputStart * 2 >= client.output.count else { return }
        client.output.removeFirst(client.outputStart)
        client.outputStart = 0
    }

    private func flush(_ client: Client) {
        while client.queued > 0 {
            let n = client.output.withUnsafeBytes { raw in
                Glibc.send(client.fd, raw.baseAddress! + client.outputStart, client.queued, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if n > 0 {
                client.outputStart += n
            } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                break
            } else {
                drop(client, reason: n < 0 ? "\(SystemError("send"))" : nil)
                return
            }
        }
        if client.queued == 0 {
            client.output.removeAll(keepingCapacity: client.output.count <= 64 * 1024)
            client.outputStart = 0
            if client.closing {
                drop(client, reason: nil)
                return
            }
        }
        updateInterest(client)
    }

    private func updateInterest(_ client: Client) {
        guard !client.closed else { return }
        var events: EventLoop.Events = []
        if !client.busy && !client.closing { events.insert(.readable) }
        if client.queued > 0 { events.insert(.writable) }
        loop.setEvents(fd: client.fd, events)
    }

    private func drop(_ client: Client, reason: String?) {
        guard !client.closed else { return }
        client.closed = true
        loop.unwatch(fd: client.fd)
        Glibc.close(client.fd)
        clients.removeValue(forKey: client.fd)
        if let reason {
            log.warning("QMP client disconnected: \(reason)", metadata: ["chardev": "\(client.monitor)", "client": "\(client.number)"])
        } else {
            log.debug("QMP client disconnected", metadata: ["chardev": "\(client.monitor)", "client": "\(client.number)"])
        }
    }

    // MARK: Built-in commands

    /// What `query-chardev` reports: each monitor socket.
    private var chardevInfo: JSON {
        .array(listeners.map { l in
            let connected = clients.values.contains { $0.monitor == l.id }
            return [
                "frame-opened": .bool(connected),
                "filename": .string(connected ? l.address : "disconnected:" + l.address),
                "label": .string(l.id),
            ]
        })
    }

    private func registerBuiltins() {
        registerCommand("query-status") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success(["status": .string(runState.rawValue), "singlestep": false,
                           "running": .bool(runState == .running)])
        }
        registerCommand("cont") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            setRunState(.running)
            reply.success()
        }
        registerCommand("stop") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            // As in QEMU, stopping a VM that is not running changes nothing.
            if runState == .running { setRunState(.paused) }
            reply.success()
        }
        registerCommand("quit") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success()
            emitEvent("SHUTDOWN", data: ["guest": false, "reason": "host-qmp-quit"])
            log.info("quit requested over QMP")
            // After this handler returns, so the reply and event go out first.
            loop.addTimer(after: .zero) { [weak self] in
                guard let self else { return }
                if let onQuit = self.onQuit { onQuit() } else { self.loop.stop() }
            }
        }
        registerCommand("query-version") { args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success([
                "qemu": ["micro": .int(XenvfbVersion.qemu.micro), "minor": .int(XenvfbVersion.qemu.minor),
                         "major": .int(XenvfbVersion.qemu.major)],
                "package": .string(XenvfbVersion.package),
            ])
        }
        registerCommand("query-commands") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success(.array((commandNames + ["qmp_capabilities"]).sorted().map { ["name": .string($0)] }))
        }
        registerCommand("query-name") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success(guestName.map { ["name": .string($0)] } ?? [:])
        }
        registerCommand("query-chardev") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success(chardevInfo)
        }
        registerCommand("query-vnc") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success(vncProvider?.queryVNC() ?? ["enabled": false])
        }
        registerCommand("change-vnc-password") { [unowned self] args, reply in
            do throws(QMPError) {
                try args.onlyKeys(["password"])
                try setVNCPassword(args.string("password")!)
                reply.success()
            } catch {
                reply.failure(error)
            }
        }
        registerCommand("set_password") { [unowned self] args, reply in
            do throws(QMPError) {
                try args.onlyKeys(["protocol", "password", "connected", "display"])
                let proto = try args.string("protocol")!
                let password = try args.string("password")!
                if let connected = try args.string("connected", required: false),
                   !["keep", "fail", "disconnect"].contains(connected) {
                    throw .generic("Parameter 'connected' does not accept value '\(connected)'")
                }
                _ = try args.string("display", required: false)
                switch proto {
                case "vnc": try setVNCPassword(password)
                case "spice": throw .generic("SPICE is not in use")
                default: throw .generic("Parameter 'protocol' does not accept value '\(proto)'")
                }
                reply.success()
            } catch {
                reply.failure(error)
            }
        }
        registerCommand("query-display-options") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success(["type": .string(displayType)])
        }
    }

    private func setVNCPassword(_ password: String) throws(QMPError) {
        vncPassword = password
        try vncProvider?.setVNCPassword(password)
        log.info("VNC password changed over QMP")
    }
}

/// A QMP socket could not be set up.
public struct QMPSocketError: Error, CustomStringConvertible {
    /// The chardev id of the socket.
    public let id: String
    public let what: String
    public var description: String { "QMP chardev '\(id)': \(what)" }
}
