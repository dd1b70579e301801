import Logging
import Support

/// What the command line asks of a device model: the QEMU-style arguments
/// libxl passes (`-xen-domid 1 -chardev socket,... -mon ... -vnc ...`) and
/// xenvfb's own long options (`--domid 1 --vnc ...`), reduced to one value.
///
/// Parsing is pure (no file, socket or environment is touched) and total: any
/// argument vector yields either options or an `OptionError` naming the
/// offending option, never a crash. Options QEMU accepts that mean nothing to
/// xenvfb are skipped with a warning, so libxl's `device_model_args` cannot
/// stop a guest from starting.
public struct DeviceModelOptions: Equatable, Sendable {
    /// Which command the arguments are for: the device model itself, or
    /// `xenvfb demo` (no domain id; adds `--seconds`).
    public enum Mode: Sendable { case deviceModel, demo }

    /// The guest's domain id (`-xen-domid`, `--domid`); nil in demo mode
    /// and with `domainName`.
    public var domid: UInt32?
    /// `--domain NAME`: the guest is the domain named NAME; the device model
    /// waits for it to appear (start it before `xl create`) and stops when
    /// it is gone.
    public var domainName: String?
    /// `--vdispl-only`: serve only the guest's vdispl devices, for a guest
    /// libxl starts no device model for (no vfb); writes no
    /// `device-model/<domid>/state` (that node is the libxl-started model's).
    public var vdisplOnly = false
    /// The guest's name (`-name`).
    public var name: String?
    /// The process name asked for by `-name ...,process=NAME`.
    public var processName: String?
    /// The `-vnc` argument as given, for the VNC display to parse; nil for
    /// none (absent, or `-vnc none`).
    public var vnc: String?
    /// Local displays: SDL windows and PNG capture, in command-line order.
    public var displays: [DisplaySpec] = []
    /// The keyboard layout (`-k`, `--keymap`), one of QEMU's names.
    public var keymap: String?
    /// The QMP sockets to serve: every `-mon mode=control` chardev, `-qmp`
    /// and `--qmp`.
    public var qmp: [QMPEndpoint] = []
    /// `-S`: start in the prelaunch state, waiting for `cont`.
    public var startPaused = false
    /// `-incoming SPEC`: the domain is being restored.
    public var incoming: String?
    /// `xenvfb demo --dirty-tracking MODE`: how the demo guest finds its own
    /// framebuffer writes (auto, uffd, mprotect, compare; checked by the demo).
    /// A device model has no such option: its guest writes the framebuffer
    /// through Xen, where no write fault reaches dom0.
    public var dirtyTracking: String?
    /// `--log-level`: one of swift-log's level names.
    public var logLevel: String?
    /// `-xen-attach`: the domain exists already (always true under libxl).
    public var xenAttach = false
    /// `-xen-domid-restrict`: restrict the Xen handles to the guest's domain
    /// once they are open.
    public var restrictToDomain = false
    /// `-chroot DIR`: chroot here once everything is open.
    public var chroot: String?
    /// `-runas USER` or `-runas UID:GID`: drop privileges once everything is open.
    public var runAs: String?
    /// `-nographic`: no local display was asked for.
    public var nographic = false
    /// `-m`: the guest's memory in MiB (recorded, unused by a PV device model).
    public var memoryMiB: UInt64?
    /// Hidden `--no-xenstore`: serve only the control plane (QMP, signals),
    /// without connecting to xenstore; for tests of the control plane.
    public var useXenstore = true
    /// `xenvfb demo --seconds N`: how long the demo runs; nil for until a signal.
    public var seconds: UInt32?
    /// `xenvfb demo --vdispl`: the demo guest also has a vdispl device (one
    /// 800×600 connector) and flips pages on it.
    public var demoVdispl = false
    /// `--input-pace MS`: at most one input event per MS milliseconds goes to
    /// the guest (bursts wait in the input queue); nil or 0 for no pacing.
    public var inputPaceMilliseconds: UInt32?
    /// `--update-interval MS`: how long the vfb backend gathers the guest's
    /// update events before copying the frame (its coalescing tick).
    public var updateIntervalMilliseconds: UInt32?
    /// Hidden `--sim-host DIR`: act on the simulated machine in DIR (SimHost)
    /// instead of Xen; xenstore is then whatever `XENSTORED_PATH` names. For
    /// tests of the device model without a hypervisor.
    public var simHost: String?
    /// `-object tls-creds-x509,id=ID,...`: TLS credentials by id, for
    /// `-vnc ...,tls-creds=ID`. Other `-object` types are skipped with a warning.
    public var tlsCredentials: [String: TLSCredentialsObject] = [:]
    /// Options that were accepted but are ignored or not meaningful here,
    /// one readable sentence each, for the log.
    public var warnings: [String] = []

    public init() {}

    /// SDL was asked for (`-display sdl`, `-sdl`, `--sdl`).
    public var sdl: Bool { displays.contains(.sdl) }
}

/// QEMU's `-object tls-creds-x509,id=ID,dir=DIR[,endpoint=server|client]
/// [,verify-peer=on|off][,priority=PRIORITY][,sanity-check=on|off]`: X.509
/// credentials read from DIR (ca-cert.pem, server-cert.pem, server-key.pem,
/// optionally ca-crl.pem and dh-params.pem). As in QEMU, `endpoint` defaults
/// to client (the VNC server needs server) and `verify-peer` to on.
public struct TLSCredentialsObject: Equatable, Sendable {
    public enum Endpoint: String, Equatable, Sendable { case server, client }
    public var id: String
    public var directory: String
    public var endpoint: Endpoint
    public var verifyPeer: Bool
    public var priority: String?

    public init(id: String, directory: String, endpoint: Endpoint = .client, verifyPeer: Bool = true, priority: String? = nil) {
        self.id = id
        self.directory = directory
        self.endpoint = endpoint
        self.verifyPeer = verifyPeer
        self.priority = priority
    }
}

/// A local display asked for on the command line.
public enum DisplaySpec: Equatable, Sendable {
    /// An SDL window.
    case sdl
    /// PNG capture: the `--display png:...` argument as given, for the PNG
    /// display to parse (`PNGDisplay.Options(spec:)`).
    case png(spec: String)
}

/// One QMP socket to serve.
public struct QMPEndpoint: Equatable, Sendable {
    public enum Socket: Equatable, Sendable {
        /// Bind and listen on this Unix socket path (a stale socket there is removed).
        case path(String)
        /// An inherited socket that is already bound and listening (libxl's
        /// dm_restrict mode passes `fd=N`).
        case fd(Int32)
    }
    /// The chardev id (`libxl-cmd`), reported by `query-chardev`.
    public var id: String
    public var socket: Socket
    /// `-mon ...,pretty=on`.
    public var pretty: Bool

    public init(id: String, socket: Socket, pretty: Bool = false) {
        self.id = id
        self.socket = socket
        self.pretty = pretty
    }
}

/// A command line xenvfb cannot run with: which option, and what is wrong.
public struct OptionError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The option as written on the command line (`-chardev`, `--domid`), or
    /// the stray argument.
    public let option: String
    public let message: String

    public init(_ option: String, _ message: String) {
        self.option = option
        self.message = message
    }

    public var description: String { "\(option): \(message)" }
}

/// The keyboard layouts QEMU knows (its `-k` names; `ar` is its older name
/// for `ara`). Displays' `Keymap.names` has a table for each, generated by
/// scripts/keymaps/generate.py, which checks that this list is the same.
public let qemuKeymaps: Set<String> = [
    "ar", "ara", "bepo", "cz", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi", "fo", "fr",
    "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv", "mk", "nl", "no",
    "pl", "pt", "pt-br", "ru", "sl", "sv", "th", "tr",
]

/// swift-log's level names, accepted by `--log-level`.
public let logLevelNames = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

extension DeviceModelOptions {
    /// Parses `arguments` (without the program name or subcommand).
    public static func parse(_ arguments: [String], mode: Mode = .deviceModel) throws(OptionError) -> DeviceModelOptions {
        var parser = ArgumentParser(arguments: arguments, mode: mode)
        return try parser.run()
    }

    /// The `--log-level` the arguments ask for, if they parse; lets main set
    /// up logging before it parses (and reports errors) for real.
    public static func logLevel(in arguments: [String], mode: Mode = .deviceModel) -> Logger.Level? {
        (try? parse(arguments, mode: mode))?.logLevel.flatMap { Logger.Level(rawValue: $0) }
    }
}

// MARK: - The parser

/// A chardev declared with `-chardev`, kept until the `-mon` options that use
/// it are known.
private struct Chardev {
    var option: String
    var id: String
    var backend: String
    var socket: QMPEndpoint.Socket?
    /// Why this chardev cannot serve a monitor, if it cannot.
    var unusable: String?
    var used = false
}

private struct ArgumentParser {
    let arguments: [String]
    let mode: DeviceModelOptions.Mode
    var index = 0
    var options = DeviceModelOptions()
    var chardevs: [Chardev] = []
    var monitors: [(option: String, chardev: String, pretty: Bool)] = []
    var qmpCount = 0

    init(arguments: [String], mode: DeviceModelOptions.Mode) {
        self.arguments = arguments
        self.mode = mode
    }

    /// QEMU options xenvfb has no use for, that take a value: skipped with a warning.
    static let ignoredWithValue: Set<String> = [
        "device", "global", "serial", "parallel", "monitor", "vga", "smp", "cpu", "boot", "drive",
        "netdev", "net", "nic", "usbdevice", "trace", "D", "d", "L", "bios", "kernel", "initrd",
        "append", "accel", "pidfile", "rtc", "msg", "sandbox", "overcommit", "spice",
        "audiodev", "soundhw", "fsdev", "virtfs", "mem-path", "numa", "icount",
        "watchdog-action", "action", "option-rom", "fw_cfg", "add-fd", "semihosting-config",
        "plugin", "readconfig", "loadvm", "compat", "uuid", "smbios", "acpitable", "xen-mode",
        "g", "hda", "hdb", "hdc", "hdd", "cdrom", "fda", "fdb", "mtdblock", "sd", "pflash",
        "blockdev", "iscsi", "qtest", "qtest-log",
    ]

    /// QEMU options without a value xenvfb has no use for: skipped with a warning.
    static let ignoredFlags: Set<String> = [
        "daemonize", "no-reboot", "no-hpet", "enable-kvm", "snapshot", "full-screen", "no-acpi",
        "no-quit", "alt-grab", "ctrl-grab", "no-frame", "s", "only-migratable", "portrait",
        "no-fd-bootchk", "win2k-hack", "rtc-td-hack", "enable-fips", "preconfig", "usb", "curses",
        "old-param", "semihosting", "mem-prealloc",
    ]

    mutating func run() throws(OptionError) -> DeviceModelOptions {
        while index < arguments.count {
            let arg = arguments[index]
            index += 1
            try handle(arg)
        }
        try finish()
        return options
    }

    mutating func warn(_ text: String) { options.warnings.append(text) }

    /// The value of `option`: the part after `=` in `--opt=value`, or the next argument.
    mutating func value(_ option: String, inline: String?) throws(OptionError) -> String {
        if let inline { return inline }
        guard index < arguments.count else { throw OptionError(option, "requires a value") }
        defer { index += 1 }
        return arguments[index]
    }

    mutating func handle(_ raw: String) throws(OptionError) {
        guard raw.hasPrefix("-"), raw != "-", raw != "--" else {
            throw OptionError(raw, "unexpected argument (options start with - or --)")
        }
        // `-opt` and `--opt` are the same option, as in QEMU; `--opt=value`
        // carries its value inline.
        var body = Substring(raw.dropFirst(raw.hasPrefix("--") ? 2 : 1))
        var inline: String?
        if raw.hasPrefix("--"), let eq = body.firstIndex(of: "=") {
            inline = String(body[body.index(after: eq)...])
            body = body[..<eq]
        }
        let name = String(body)
        let arg = inline == nil ? raw : "--" + name // the option as errors name it
        func flagOnly(_: inout ArgumentParser) throws(OptionError) {
            if inline != nil { throw OptionError(arg, "takes no value") }
        }

        switch name {
        case "xen-domid", "domid":
            let v = try value(arg, inline: inline)
            options.domid = try Self.domid(v, option: arg)
        case "domain" where mode == .deviceModel:
            let v = try value(arg, inline: inline)
            guard !v.isEmpty, v.utf8.count <= 128, v.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f && $0 != "/" }) else {
                throw OptionError(arg, "needs a domain name (printable, no spaces or '/', at most 128 bytes), not '\(Self.printable(v))'")
            }
            options.domainName = v
        case "vdispl-only" where mode == .deviceModel:
            try flagOnly(&self)
            options.vdisplOnly = true
        case "xen-attach":
            try flagOnly(&self)
            options.xenAttach = true
        case "xen-domid-restrict":
            try flagOnly(&self)
            options.restrictToDomain = true
        case "no-shutdown", "nodefaults", "no-user-config":
            try flagOnly(&self) // what QEMU does with these is what xenvfb always does
        case "nographic":
            try flagOnly(&self)
            options.nographic = true
        case "S":
            try flagOnly(&self)
            options.startPaused = true
        case "chardev":
            try chardev(try value(arg, inline: inline), option: arg)
        case "mon":
            try mon(try value(arg, inline: inline), option: arg)
        case "qmp":
            try qmp(try value(arg, inline: inline), option: arg)
        case "name":
            try nameOption(try value(arg, inline: inline), option: arg)
        case "vnc":
            let v = try value(arg, inline: inline)
            guard !v.isEmpty else { throw OptionError(arg, "empty VNC display (use 'none' for no VNC)") }
            if options.vnc != nil { warn("\(arg) \(v): replaces an earlier -vnc") }
            options.vnc = v == "none" ? nil : v
        case "display":
            try display(try value(arg, inline: inline), option: arg)
        case "object":
            try object(try value(arg, inline: inline), option: arg)
        case "sdl":
            try flagOnly(&self)
            if !options.sdl { options.displays.append(.sdl) }
        case "k", "keymap":
            let v = try value(arg, inline: inline)
            guard qemuKeymaps.contains(v) else {
                throw OptionError(arg, "unknown keymap '\(Self.printable(v))' (one of: \(qemuKeymaps.sorted().joined(separator: ", ")))")
            }
            options.keymap = v
        case "machine", "M":
            try machine(try value(arg, inline: inline), option: arg)
        case "m":
            options.memoryMiB = try Self.memory(try value(arg, inline: inline), option: arg)
        case "chroot":
            let v = try value(arg, inline: inline)
            guard v.hasPrefix("/") else { throw OptionError(arg, "needs an absolute directory, not '\(Self.printable(v))'") }
            options.chroot = v
        case "runas":
            let v = try value(arg, inline: inline)
            guard !v.isEmpty else { throw OptionError(arg, "needs a user name or UID:GID") }
            options.runAs = v
        case "incoming":
            let v = try value(arg, inline: inline)
            guard !v.isEmpty else { throw OptionError(arg, "needs a migration source") }
            options.incoming = v
            warn("\(arg) \(Self.printable(v)): a PV device model keeps no state; nothing is read from it")
        case "dirty-tracking" where mode == .demo:
            options.dirtyTracking = try value(arg, inline: inline)
        case "dirty-tracking":
            throw OptionError(arg, "applies to xenvfb demo only: a guest writes its framebuffer through Xen, where no write fault reaches the device model")
        case "log-level":
            let v = try value(arg, inline: inline)
            guard logLevelNames.contains(v) else {
                throw OptionError(arg, "unknown level '\(Self.printable(v))' (\(logLevelNames.joined(separator: ", ")))")
            }
            options.logLevel = v
        case "no-xenstore":
            try flagOnly(&self)
            options.useXenstore = false
        case "input-pace":
            let v = try value(arg, inline: inline)
            guard let ms = Self.decimal(v, max: 10_000) else {
                throw OptionError(arg, "needs milliseconds from 0 to 10000, not '\(Self.printable(v))'")
            }
            options.inputPaceMilliseconds = UInt32(ms)
        case "update-interval":
            let v = try value(arg, inline: inline)
            guard let ms = Self.decimal(v, max: 60_000) else {
                throw OptionError(arg, "needs milliseconds from 0 to 60000, not '\(Self.printable(v))'")
            }
            options.updateIntervalMilliseconds = UInt32(ms)
        case "sim-host" where mode == .deviceModel:
            let v = try value(arg, inline: inline)
            guard !v.isEmpty else { throw OptionError(arg, "needs a SimHost machine directory") }
            options.simHost = v
        case "vdispl" where mode == .demo:
            try flagOnly(&self)
            options.demoVdispl = true
        case "seconds" where mode == .demo:
            let v = try value(arg, inline: inline)
            guard let s = Self.decimal(v, max: 86_400 * 365), s > 0 else {
                throw OptionError(arg, "needs a whole number of seconds, 1 or more, not '\(Self.printable(v))'")
            }
            options.seconds = UInt32(s)
        default:
            if Self.ignoredWithValue.contains(name) {
                let v = try value(arg, inline: inline)
                warn("\(arg) \(Self.printable(v)): not used by xenvfb; ignored")
            } else if Self.ignoredFlags.contains(name) {
                try flagOnly(&self)
                warn("\(arg): not used by xenvfb; ignored")
            } else {
                throw OptionError(arg, "unknown option")
            }
        }
    }

    mutating func finish() throws(OptionError) {
        for m in monitors {
            guard let i = chardevs.firstIndex(where: { $0.id == m.chardev }) else {
                throw OptionError(m.option, "chardev '\(Self.printable(m.chardev))' not found")
            }
            if let why = chardevs[i].unusable { throw OptionError(chardevs[i].option, why) }
            guard !chardevs[i].used else {
                throw OptionError(m.option, "chardev '\(m.chardev)' is already used by another monitor")
            }
            guard let socket = chardevs[i].socket else {
                throw OptionError(chardevs[i].option, "chardev '\(m.chardev)' cannot serve QMP")
            }
            chardevs[i].used = true
            options.qmp.append(QMPEndpoint(id: chardevs[i].id, socket: socket, pretty: m.pretty))
        }
        for c in chardevs where !c.used {
            warn("\(c.option) id=\(c.id): not used by a QMP monitor; ignored")
        }
        var paths = Set<String>(), fds = Set<Int32>()
        for e in options.qmp {
            switch e.socket {
            case .path(let p):
                guard paths.insert(p).inserted else { throw OptionError("-chardev", "socket path '\(p)' given twice") }
            case .fd(let f):
                guard fds.insert(f).inserted else { throw OptionError("-chardev", "fd=\(f) given twice") }
            }
        }
        if mode == .deviceModel, options.domid != nil, options.domainName != nil {
            throw OptionError("--domain", "give the guest's domain id or its name, not both")
        }
        if mode == .deviceModel, options.domid == nil, options.domainName == nil {
            throw OptionError("-xen-domid", "missing: the guest's domain id is required (-xen-domid N or --domid N)")
        }
    }

    // MARK: Individual options

    mutating func chardev(_ spec: String, option: String) throws(OptionError) {
        let opts = try QemuOpts.parse(spec, impliedKey: "backend", option: option)
        guard let backend = opts.first(where: { $0.key == "backend" })?.value, !backend.isEmpty else {
            throw OptionError(option, "needs a backend (e.g. socket,id=NAME,path=PATH,server=on,wait=off)")
        }
        guard let id = opts.last(where: { $0.key == "id" })?.value, !id.isEmpty else {
            throw OptionError(option, "needs id=NAME")
        }
        guard Self.isIdentifier(id) else { throw OptionError(option, "invalid id '\(Self.printable(id))'") }
        guard !chardevs.contains(where: { $0.id == id }) else {
            throw OptionError(option, "duplicate chardev id '\(id)'")
        }
        var dev = Chardev(option: option, id: id, backend: backend)
        guard backend == "socket" else {
            dev.unusable = "chardev '\(id)': backend '\(Self.printable(backend))' cannot serve QMP (only socket is supported)"
            chardevs.append(dev)
            return
        }
        var path: String?, fd: Int32?, server = false, wait = true
        var tcp = false
        for (key, v) in opts where key != "backend" && key != "id" {
            switch key {
            case "path":
                guard let v, !v.isEmpty else { throw OptionError(option, "path= needs a value") }
                path = v
            case "fd":
                guard let v, let n = Self.decimal(v, max: Int(Int32.max)) else {
                    throw OptionError(option, "fd= needs a file descriptor number, not '\(Self.printable(v ?? ""))'")
                }
                fd = Int32(n)
            case "server":
                server = try Self.bool(v, key: key, option: option)
            case "wait":
                wait = try Self.bool(v, key: key, option: option)
            case "nowait": // the pre-7.0 spelling of wait=off
                wait = !(try Self.bool(v, key: key, option: option))
            case "host", "port", "to", "ipv4", "ipv6", "keep-alive":
                tcp = true
            case "abstract", "tight":
                _ = try Self.bool(v, key: key, option: option)
                warn("\(option) id=\(id): \(key)= is ignored")
            case "telnet", "tn3270", "websocket", "delay", "nodelay", "reconnect", "tls-creds",
                 "tls-authz", "logfile", "logappend", "mux", "signal":
                warn("\(option) id=\(id): \(key)= is ignored")
            default:
                throw OptionError(option, "unknown socket parameter '\(Self.printable(key))'")
            }
        }
        if path != nil && fd != nil {
            throw OptionError(option, "chardev '\(id)': path= and fd= cannot both be given")
        }
        if tcp {
            dev.unusable = "chardev '\(id)': TCP sockets cannot serve QMP here (use path=)"
        } else if let fd {
            dev.socket = .fd(fd)
        } else if let path {
            guard path.utf8.count < 108 else {
                throw OptionError(option, "chardev '\(id)': socket path longer than 107 bytes")
            }
            guard !path.utf8.contains(0) else { throw OptionError(option, "chardev '\(id)': NUL in path") }
            dev.socket = .path(path)
        } else {
            throw OptionError(option, "chardev '\(id)': a socket needs path= or fd=")
        }
        if dev.unusable == nil && !server {
            dev.unusable = "chardev '\(id)': only listening sockets (server=on) can serve QMP"
        }
        if dev.unusable == nil && wait {
            warn("\(option) id=\(id): wait=on is not honoured; the monitor does not wait for a client")
        }
        chardevs.append(dev)
    }

    mutating func mon(_ spec: String, option: String) throws(OptionError) {
        let opts = try QemuOpts.parse(spec, impliedKey: "chardev", option: option)
        var chardev: String?, mode = "readline", pretty = false
        for (key, v) in opts {
            switch key {
            case "chardev":
                guard let v, !v.isEmpty else { throw OptionError(option, "chardev= needs a value") }
                chardev = v
            case "mode":
                guard let v, v == "control" || v == "readline" else {
                    throw OptionError(option, "mode must be control or readline, not '\(Self.printable(v ?? ""))'")
                }
                mode = v
            case "pretty":
                pretty = try Self.bool(v, key: key, option: option)
            case "id":
                break
            default:
                throw OptionError(option, "unknown parameter '\(Self.printable(key))'")
            }
        }
        guard let chardev else { throw OptionError(option, "needs chardev=ID") }
        if mode == "readline" {
            warn("\(option) chardev=\(chardev): the human monitor (mode=readline) is not provided; ignored")
            return
        }
        monitors.append((option, chardev, pretty))
    }

    mutating func qmp(_ spec: String, option: String) throws(OptionError) {
        guard spec.hasPrefix("unix:") else {
            throw OptionError(option, "only unix:PATH[,server=on,wait=off] is supported, not '\(Self.printable(spec))'")
        }
        let opts = try QemuOpts.parse(String(spec.dropFirst(5)), impliedKey: "path", option: option)
        var path: String?
        for (key, v) in opts {
            switch key {
            case "path":
                guard let v, !v.isEmpty else { throw OptionError(option, "needs a socket path after unix:") }
                path = v
            case "server":
                guard try Self.bool(v, key: key, option: option) else {
                    throw OptionError(option, "only listening sockets (server=on) are supported")
                }
            case "wait", "nowait":
                _ = try Self.bool(v, key: key, option: option)
            default:
                throw OptionError(option, "unknown parameter '\(Self.printable(key))'")
            }
        }
        guard let path else { throw OptionError(option, "needs a socket path after unix:") }
        guard path.utf8.count < 108 else { throw OptionError(option, "socket path longer than 107 bytes") }
        guard !path.utf8.contains(0) else { throw OptionError(option, "NUL in path") }
        let id = qmpCount == 0 ? "compat_monitor0" : "compat_monitor\(qmpCount)"
        qmpCount += 1
        // Named like QEMU's -qmp chardevs; they take part in the duplicate check.
        chardevs.append(Chardev(option: option, id: id, backend: "socket", socket: .path(path), unusable: nil, used: true))
        options.qmp.append(QMPEndpoint(id: id, socket: .path(path)))
    }

    mutating func nameOption(_ spec: String, option: String) throws(OptionError) {
        let opts = try QemuOpts.parse(spec, impliedKey: "guest", option: option)
        for (key, v) in opts {
            switch key {
            case "guest":
                guard let v, !v.isEmpty else { throw OptionError(option, "needs a name") }
                options.name = v
            case "process":
                guard let v, !v.isEmpty else { throw OptionError(option, "process= needs a value") }
                options.processName = v
            case "debug-threads":
                _ = try Self.bool(v, key: key, option: option)
                warn("\(option): debug-threads= is ignored")
            default:
                throw OptionError(option, "unknown parameter '\(Self.printable(key))'")
            }
        }
    }

    mutating func display(_ spec: String, option: String) throws(OptionError) {
        if spec.hasPrefix("png:") || spec == "png" {
            options.displays.append(.png(spec: spec))
            return
        }
        let opts = try QemuOpts.parse(spec, impliedKey: "type", option: option)
        let type = opts.first?.value ?? ""
        switch type {
        case "none":
            // libxl writes `-display none` before any `-display sdl`: no local
            // display besides those asked for elsewhere.
            for (key, _) in opts.dropFirst() {
                throw OptionError(option, "none: unknown parameter '\(Self.printable(key))'")
            }
        case "sdl":
            for (key, v) in opts.dropFirst() {
                switch key {
                case "gl", "grab-mod", "show-cursor", "window-close", "full-screen", "alt_grab", "ctrl_grab":
                    warn("\(option) sdl: \(key)=\(Self.printable(v ?? "")) is ignored")
                default:
                    throw OptionError(option, "sdl: unknown parameter '\(Self.printable(key))'")
                }
            }
            if !options.sdl { options.displays.append(.sdl) }
        case "gtk", "curses", "egl-headless", "spice-app", "dbus", "cocoa", "vnc":
            warn("\(option) \(type): this display is not provided by xenvfb; ignored")
        default:
            throw OptionError(option, "unknown display '\(Self.printable(type))' (none, sdl or png:dir=DIR,...)")
        }
    }

    /// `-object TYPE,id=ID,...`: tls-creds-x509 is kept for `-vnc
    /// ...,tls-creds=`; every other type is skipped with a warning, as before.
    mutating func object(_ spec: String, option: String) throws(OptionError) {
        let opts = try QemuOpts.parse(spec, impliedKey: "qom-type", option: option)
        let type = opts.first(where: { $0.key == "qom-type" })?.value ?? ""
        guard type == "tls-creds-x509" else {
            warn("\(option) \(Self.printable(spec)): not used by xenvfb; ignored")
            return
        }
        var id: String?, dir: String?, endpoint = TLSCredentialsObject.Endpoint.client, verifyPeer = true, priority: String?
        for (key, v) in opts where key != "qom-type" {
            switch key {
            case "id":
                guard let v, Self.isIdentifier(v) else { throw OptionError(option, "tls-creds-x509: invalid id '\(Self.printable(v ?? ""))'") }
                id = v
            case "dir":
                guard let v, !v.isEmpty, !v.utf8.contains(0) else { throw OptionError(option, "tls-creds-x509: dir= needs a directory") }
                dir = v
            case "endpoint":
                guard let v, let e = TLSCredentialsObject.Endpoint(rawValue: v) else {
                    throw OptionError(option, "tls-creds-x509: endpoint must be server or client, not '\(Self.printable(v ?? ""))'")
                }
                endpoint = e
            case "verify-peer":
                verifyPeer = try Self.bool(v, key: key, option: option)
            case "priority":
                guard let v, !v.isEmpty, !v.utf8.contains(0) else { throw OptionError(option, "tls-creds-x509: priority= needs a GnuTLS priority string") }
                priority = v
            case "sanity-check":
                _ = try Self.bool(v, key: key, option: option) // GnuTLS checks that the key matches the certificate
            case "loaded":
                _ = try Self.bool(v, key: key, option: option)
            case "passwordid":
                throw OptionError(option, "tls-creds-x509: passwordid= (an encrypted key) is not supported; give an unencrypted server-key.pem")
            default:
                throw OptionError(option, "tls-creds-x509: unknown property '\(Self.printable(key))' (id, dir, endpoint, verify-peer, priority, sanity-check)")
            }
        }
        guard let id else { throw OptionError(option, "tls-creds-x509: needs id=ID") }
        guard let dir else { throw OptionError(option, "tls-creds-x509: needs dir=DIR (with ca-cert.pem, server-cert.pem, server-key.pem)") }
        guard options.tlsCredentials[id] == nil else { throw OptionError(option, "duplicate object id '\(id)'") }
        options.tlsCredentials[id] = TLSCredentialsObject(id: id, directory: dir, endpoint: endpoint, verifyPeer: verifyPeer, priority: priority)
    }

    mutating func machine(_ spec: String, option: String) throws(OptionError) {
        let opts = try QemuOpts.parse(spec, impliedKey: "type", option: option)
        for (key, v) in opts {
            if key == "type" {
                guard v == "xenpv" else {
                    throw OptionError(option, "machine '\(Self.printable(v ?? ""))' is not provided; xenvfb is a xenpv device model")
                }
            } else {
                warn("\(option): \(key)= is ignored")
            }
        }
        guard opts.contains(where: { $0.key == "type" }) else { throw OptionError(option, "needs a machine type (xenpv)") }
    }

    // MARK: Value helpers

    /// A decimal number with digits only (no sign, no spaces) up to `max`.
    static func decimal(_ text: String, max: Int) -> Int? {
        guard !text.isEmpty, text.utf8.count <= 19, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        guard let n = Int(text, radix: 10), n <= max else { return nil }
        return n
    }

    static func domid(_ text: String, option: String) throws(OptionError) -> UInt32 {
        // DOMID_FIRST_RESERVED is 0x7FF0: ids from there on are not guests.
        guard let n = decimal(text, max: 0x7FEF) else {
            throw OptionError(option, "needs a domain id from 0 to 32751, not '\(printable(text))'")
        }
        return UInt32(n)
    }

    /// QEMU's `-m`: `N` (MiB), `N[KMGT]`, or `size=N[,slots=..,maxmem=..]`.
    static func memory(_ spec: String, option: String) throws(OptionError) -> UInt64 {
        let opts = try QemuOpts.parse(spec, impliedKey: "size", option: option)
        guard let size = opts.first(where: { $0.key == "size" })?.value else { throw OptionError(option, "needs a size") }
        var digits = Substring(size)
        var shift: UInt64 = 20
        if let last = digits.last, !last.isNumber {
            switch last {
            case "k", "K": shift = 10
            case "m", "M": shift = 20
            case "g", "G": shift = 30
            case "t", "T": shift = 40
            case "b", "B": shift = 0
            default: throw OptionError(option, "invalid size '\(printable(size))'")
            }
            digits = digits.dropLast()
        }
        guard let n = decimal(String(digits), max: Int.max) else { throw OptionError(option, "invalid size '\(printable(size))'") }
        let (bytes, overflow) = UInt64(n).multipliedReportingOverflow(by: UInt64(1) << shift)
        guard !overflow else { throw OptionError(option, "size '\(printable(size))' is too large") }
        return bytes >> 20
    }

    /// QEMU's boolean spellings; a key without `=value` means on.
    static func bool(_ v: String?, key: String, option: String) throws(OptionError) -> Bool {
        guard let b = QEMUOptions.bool(v) else { throw OptionError(option, "\(key)= must be on or off, not '\(printable(v ?? ""))'") }
        return b
    }

    /// QEMU ids: a letter, then letters, digits, '-', '.', '_'.
    static func isIdentifier(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, first.isASCIILetter, s.utf8.count <= 128 else { return false }
        return s.unicodeScalars.allSatisfy { $0.isASCIILetter || ("0"..."9").contains($0) || $0 == "-" || $0 == "." || $0 == "_" }
    }

    /// `s` shortened and with control characters escaped, for messages.
    static func printable(_ s: String) -> String {
        var out = ""
        for (i, u) in s.unicodeScalars.enumerated() {
            if i >= 80 { out += "…"; break }
            out += u.value < 0x20 || u.value == 0x7F ? "\\x" + String(u.value, radix: 16) : String(u)
        }
        return out
    }
}

extension Unicode.Scalar {
    fileprivate var isASCIILetter: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) }
}

/// QEMU option strings through Support's one parser, with this file's errors.
enum QemuOpts {
    static func parse(_ spec: String, impliedKey: String?, option: String) throws(OptionError) -> [(key: String, value: String?)] {
        do throws(QEMUOptions.ParseError) {
            return try QEMUOptions.parse(spec, impliedKey: impliedKey)
        } catch {
            throw OptionError(option, error.description)
        }
    }
}
