#if canImport(Glibc)
import Glibc
#endif
import Control
import Console
import Displays
import EventLoop
import Logging
import Support

// The QMP commands over a session's displays and input, with QEMU 7.2's
// names, arguments and error wording.

extension Session {
    /// Adds the display and input commands to `qmp`, and the VNC display as
    /// its `vncProvider` when there is one.
    func registerCommands(_ qmp: QMPServer) {
        if let vncProvider { qmp.vncProvider = vncProvider }
        qmp.displayType = sdl != nil ? "sdl" : "none"

        qmp.registerCommand("screendump") { [unowned self] args, reply in
            do throws(QMPError) {
                try args.onlyKeys(["filename", "device", "head", "format"])
                let filename = try args.string("filename")!
                let device = try args.string("device", required: false)
                let head = try args.int("head", required: false)
                let format: CaptureFormat
                switch try args.string("format", required: false) ?? "ppm" {
                case "ppm": format = .ppm
                case "png": format = .png
                case let other: throw .generic("Parameter 'format' does not accept value '\(other)'")
                }
                // QEMU's console lookup (ui/console.c): by device id and head,
                // or console 0; `head` alone is an error.
                let target: Console
                if let device {
                    let h = head ?? 0
                    guard let found = consoles.lookup(device: device, head: Int(clamping: h)) else {
                        if (0..<consoles.all.count).contains(where: { consoles.owner(of: $0)?.device == device }) {
                            throw .generic("Device \(device) (head \(h)) is not bound to a QemuConsole")
                        }
                        throw .deviceNotFound("Device '\(device)' not found")
                    }
                    target = found
                } else {
                    guard head == nil else { throw .generic("'head' must be specified together with 'device'") }
                    target = console
                }
                // As QEMU's screendump: refresh first, then write what is
                // current. The capture thread reads the console row by row (no
                // copy of the frame), encodes and writes; the reply follows.
                refresh()
                let accepted = captures.submit({ () -> CaptureError? in
                    do throws(CaptureError) { try capture(target, to: filename, format: format); return nil } catch { return error }
                }) { failure in
                    if let failure { reply.failure(.generic("\(failure)")) } else { reply.success() }
                }
                guard accepted else { throw .generic("too many screendumps in progress; try again") }
            } catch {
                reply.failure(error)
            }
        }

        qmp.registerCommand("send-key") { [unowned self] args, reply in
            do throws(QMPError) {
                try args.onlyKeys(["keys", "hold-time"])
                guard case .array(let list)? = args["keys"] else {
                    throw args["keys"] == nil ? .generic("Parameter 'keys' is missing")
                                              : .generic("Invalid parameter type for 'keys', expected: array")
                }
                let hold = try args.int("hold-time", required: false) ?? 100
                guard hold >= 0, hold <= 60_000 else { throw .generic("Parameter 'hold-time' expects a time from 0 to 60000 ms") }
                let codes = try list.enumerated().map { (i, v) throws(QMPError) in try Self.keyCode(v, name: "keys[\(i)]") }
                guard !codes.isEmpty else { throw .generic("Parameter 'keys' expects a non-empty list") }
                // QEMU's order: press each key in turn, then release them in reverse,
                // with the hold time after every event.
                let pause = Duration.milliseconds(hold)
                var batch: [InputQueue.Item] = []
                for code in codes { batch += [.event(.key(code: code, pressed: true)), .pause(pause)] }
                for code in codes.reversed() { batch += [.event(.key(code: code, pressed: false)), .pause(pause)] }
                // All of it or none: a half-pressed chord would stick in the guest.
                do throws(InputQueue.Refusal) {
                    try input.submit(batch)
                } catch {
                    throw .generic("\(error); try again later")
                }
                reply.success()
            } catch {
                reply.failure(error)
            }
        }

        qmp.registerCommand("input-send-event") { [unowned self] args, reply in
            do throws(QMPError) {
                try args.onlyKeys(["events", "device", "head"])
                _ = try args.string("device", required: false)
                _ = try args.int("head", required: false)
                guard case .array(let list)? = args["events"] else {
                    throw args["events"] == nil ? .generic("Parameter 'events' is missing")
                                                : .generic("Invalid parameter type for 'events', expected: array")
                }
                // Check everything before sending anything, as QEMU does.
                let events = try list.enumerated().map { (i, v) throws(QMPError) in try Self.inputEvent(v, name: "events[\(i)]") }
                send(events)
                reply.success()
            } catch {
                reply.failure(error)
            }
        }

        qmp.registerCommand("query-vnc-servers") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            reply.success(vncProvider?.queryVNCServers() ?? [])
        }

        qmp.registerCommand("expire_password") { [unowned self] args, reply in
            do throws(QMPError) {
                try args.onlyKeys(["protocol", "time", "display"])
                let proto = try args.string("protocol")!
                let time = try args.string("time")!
                _ = try args.string("display", required: false)
                switch proto {
                case "vnc":
                    guard let vncProvider else { throw .generic("Could not set password") }
                    try vncProvider.expirePassword(time)
                case "spice": throw .generic("SPICE is not in use")
                default: throw .generic("Parameter 'protocol' does not accept value '\(proto)'")
                }
                reply.success()
            } catch {
                reply.failure(error)
            }
        }

        qmp.registerCommand("query-command-line-options") { args, reply in
            do throws(QMPError) {
                try args.onlyKeys(["option"])
                let wanted = try args.string("option", required: false)
                let all = Self.commandLineOptions
                if let wanted {
                    guard let one = all.first(where: { $0.option == wanted }) else {
                        throw .generic("invalid option name: \(wanted)")
                    }
                    reply.success([Self.describe(one)])
                } else {
                    reply.success(.array(all.map(Self.describe)))
                }
            } catch {
                reply.failure(error)
            }
        }

        // xenvfb's own: how often the picture changed, for clients that wait
        // for a still screen (`xenvfb screenshot --wait-still`).
        qmp.registerCommand("x-xenvfb-query-frame") { [unowned self] args, reply in
            do throws(QMPError) { try args.onlyKeys([]) } catch { return reply.failure(error) }
            refresh()
            let idle = (EventLoop.now() &- frameWatch.lastChange) / 1_000_000
            let connected = !(backends?.vfbDevices.isEmpty ?? true)
            reply.success([
                "width": .int(Int64(console.frame.width)), "height": .int(Int64(console.frame.height)),
                "changes": .int(frameWatch.changes), "idle-ms": .int(Int64(clamping: idle)),
                "vfb": .bool(connected),
            ])
        }
    }

    // MARK: Input

    /// One `input-send-event` event, checked.
    enum QMPInput {
        case key(UInt32, down: Bool)
        case wheel(Int32)
        case abs(x: Int64?, y: Int64?)
        case rel(dx: Int64, dy: Int64)
    }

    /// Sends one command's events in order. Consecutive pointer events are
    /// combined into one position or motion (QEMU's sync at the end of each
    /// batch); a key or button comes after the pointer moves before it.
    func send(_ events: [QMPInput]) {
        var absX: Int64?, absY: Int64?
        var dx: Int64 = 0, dy: Int64 = 0
        func syncPointer() {
            if absX != nil || absY != nil {
                let w = Int64(max(console.frame.width - 1, 0)), h = Int64(max(console.frame.height - 1, 0))
                // QEMU's xenfb: value * (size - 1) / 0x7fff.
                if let x = absX { qmpPointer.x = Int32(min(max(x, 0), 0x7fff) * w / 0x7fff) }
                if let y = absY { qmpPointer.y = Int32(min(max(y, 0), 0x7fff) * h / 0x7fff) }
                input.send(.absolute(x: qmpPointer.x, y: qmpPointer.y))
                absX = nil
                absY = nil
            }
            if dx != 0 || dy != 0 {
                input.send(.relative(dx: Int32(clamping: dx), dy: Int32(clamping: dy)))
                dx = 0
                dy = 0
            }
        }
        for e in events {
            switch e {
            case .key(let code, let down):
                syncPointer()
                input.send(.key(code: code, pressed: down))
            case .wheel(let z):
                guard z != 0 else { continue } // a wheel "release", or a wheel vkbd does not have
                syncPointer()
                input.send(.wheel(z))
            case .abs(let x, let y):
                if let x { absX = x }
                if let y { absY = y }
            case .rel(let x, let y):
                dx = dx.addingReportingOverflow(x).overflow ? dx : dx + x
                dy = dy.addingReportingOverflow(y).overflow ? dy : dy + y
            }
        }
        syncPointer()
    }

    /// A `KeyValue`: `{"type": "qcode", "data": "a"}` or `{"type": "number",
    /// "data": 30}` (a QEMU "qnum": the XT scancode, 0x80 | code for
    /// E0-prefixed keys).
    static func keyCode(_ value: JSON, name: String) throws(QMPError) -> UInt32 {
        guard case .object(let o) = value else { throw .generic("Invalid parameter type for '\(name)', expected: object") }
        try o.onlyKeys(["type", "data"])
        switch try o.string("type")! {
        case "qcode":
            let q = try o.string("data")!
            guard let code = QKeyCode.linuxKeycode(q) else { throw .generic("Parameter '\(name).data' does not accept value '\(q)'") }
            return code
        case "number":
            let n = try o.int("data")!
            guard n > 0, n <= 0xff, let code = XTScancode.linuxKeycode(UInt32(n)) else {
                throw .generic("Parameter '\(name).data' does not accept value '\(n)': no such key number")
            }
            return code
        case let other:
            throw .generic("Parameter '\(name).type' does not accept value '\(other)'")
        }
    }

    static func inputEvent(_ value: JSON, name: String) throws(QMPError) -> QMPInput {
        guard case .object(let o) = value else { throw .generic("Invalid parameter type for '\(name)', expected: object") }
        try o.onlyKeys(["type", "data"])
        let type = try o.string("type")!
        guard case .object(let data)? = o["data"] else {
            throw o["data"] == nil ? .generic("Parameter '\(name).data' is missing")
                                   : .generic("Invalid parameter type for '\(name).data', expected: object")
        }
        switch type {
        case "key":
            try data.onlyKeys(["down", "key"])
            let down = try data.bool("down")!
            guard let key = data["key"] else { throw .generic("Parameter '\(name).data.key' is missing") }
            return .key(try keyCode(key, name: "\(name).data.key"), down: down)
        case "btn":
            try data.onlyKeys(["down", "button"])
            let down = try data.bool("down")!
            let b = try data.string("button")!
            guard let button = QInputButton(rawValue: b) else {
                throw .generic("Parameter '\(name).data.button' does not accept value '\(b)'")
            }
            switch button {
            case .wheelUp: return .wheel(down ? -1 : 0)
            case .wheelDown: return .wheel(down ? 1 : 0)
            case .wheelLeft, .wheelRight: return .wheel(0)
            default: return .key(button.linuxCode!, down: down)
            }
        case "abs", "rel":
            try data.onlyKeys(["axis", "value"])
            let axis = try data.string("axis")!
            let v = try data.int("value")!
            guard axis == "x" || axis == "y" else {
                throw .generic("Parameter '\(name).data.axis' does not accept value '\(axis)'")
            }
            if type == "abs" { return axis == "x" ? .abs(x: v, y: nil) : .abs(x: nil, y: v) }
            return axis == "x" ? .rel(dx: v, dy: 0) : .rel(dx: 0, dy: v)
        default:
            throw .generic("Parameter '\(name).type' does not accept value '\(type)'")
        }
    }

    // MARK: query-command-line-options

    /// The option groups xenvfb takes, QEMU-style (what libxl's probe asks about).
    static let commandLineOptions: [(option: String, parameters: [(String, String)])] = [
        ("chardev", [("backend", "string"), ("id", "string"), ("path", "string"), ("fd", "string"),
                     ("server", "boolean"), ("wait", "boolean")]),
        ("mon", [("chardev", "string"), ("mode", "string"), ("pretty", "boolean")]),
        ("name", [("guest", "string"), ("process", "string"), ("debug-threads", "boolean")]),
        ("machine", [("type", "string")]),
        ("vnc", [("to", "number"), ("password", "boolean"), ("ipv4", "boolean"), ("ipv6", "boolean"),
                 ("connections", "number"), ("share", "string"), ("key-delay-ms", "number"), ("websocket", "string"),
                 ("tls-creds", "string"), ("lossy", "boolean")]),
    ]

    static func describe(_ entry: (option: String, parameters: [(String, String)])) -> JSON {
        ["option": .string(entry.option),
         "parameters": .array(entry.parameters.map { ["name": .string($0.0), "type": .string($0.1)] })]
    }
}

/// `query-vnc`, `query-vnc-servers` and the VNC password commands, answered
/// from the VNC displays: console 0's (`query-vnc`, what libxl reads) and
/// those of the other consoles (in `query-vnc-servers`, id `consoleN`). A
/// password applies to every server, including those that appear later.
final class VNCQMPProvider: QMPVNCProvider {
    let vnc: VNCDisplay
    private(set) var servers: [(id: String, vnc: VNCDisplay)]
    private var password: String?
    private var expiry: VNCDisplay.PasswordExpiry?

    init(vnc: VNCDisplay) {
        self.vnc = vnc
        servers = [("default", vnc)]
    }

    /// Another console's server.
    func add(_ server: VNCDisplay, id: String) {
        servers.append((id, server))
        if server.requiresPassword, let password {
            server.setPassword(password)
            if let expiry { server.expirePassword(expiry) }
        }
    }

    private func clients(_ info: VNCServerInfo) -> JSON {
        .array(info.clients.map { c in
            ["host": .string(c.host), "service": .string(c.service), "family": .string(c.family),
             "websocket": .bool(c.websocket)]
        })
    }

    func queryVNC() -> JSON {
        let info = vnc.info
        guard info.enabled else { return ["enabled": false] }
        return ["enabled": true, "host": .string(info.host), "service": .string(info.service),
                "family": .string(info.family), "auth": .string(info.queryVNCAuth), "clients": clients(info)]
    }

    /// As QEMU: with TLS the VNC listener's auth is `vencrypt` with its
    /// subtype; the WebSocket listener (wss) reports the auth inside, none or vnc.
    func queryVNCServers() -> JSON {
        .array(servers.compactMap { id, server -> JSON? in
            let info = server.info
            guard info.enabled else { return nil }
            let subauth: [(String, JSON)] = info.vencrypt.map { [("vencrypt", .string($0))] } ?? []
            let primaryAuth = JSON.string(info.vencrypt == nil ? info.auth : "vencrypt")
            var listeners: [JSON] = [.object(JSONObject([("host", .string(info.host)), ("service", .string(info.service)),
                                                         ("family", .string(info.family)), ("websocket", false),
                                                         ("auth", primaryAuth)] + subauth))]
            if let ws = info.websocket {
                listeners.append(["host": .string(ws.host), "service": .string(ws.service), "family": .string(ws.family),
                                  "websocket": true, "auth": .string(info.auth)])
            }
            return .object(JSONObject([("id", .string(id)), ("auth", primaryAuth)] + subauth
                                      + [("server", .array(listeners)), ("clients", clients(info))]))
        })
    }

    func setVNCPassword(_ password: String) throws(QMPError) {
        // QEMU refuses a password for a server started without password=on.
        guard vnc.requiresPassword else { throw .generic("Could not set password") }
        self.password = password
        expiry = nil
        for (_, server) in servers where server.requiresPassword { server.setPassword(password) }
    }

    /// `expire_password`: `now`, `never`, `+SECONDS` from now, or SECONDS
    /// since the epoch. Once expired, nobody can log in until a new password
    /// is set.
    func expirePassword(_ time: String) throws(QMPError) {
        guard vnc.requiresPassword else { throw .generic("Could not set password") }
        // "now", "never", "+SECONDS" or "SECONDS"; a number too large for any
        // clock saturates to never (QMP once crashed the process with one).
        guard let expiry = VNCDisplay.PasswordExpiry(qmp: time) else {
            throw .generic("Parameter 'time' does not accept value '\(time)'")
        }
        self.expiry = expiry
        for (_, server) in servers where server.requiresPassword { server.expirePassword(expiry) }
    }
}
