#if canImport(Glibc)
import Glibc
#endif
import CShims
import CXen
import Control
import Devices
import Displays
import EventLoop
import Host
import Logging
import Support

/// `xenvfb [OPTIONS]`: the device model of one Xen domain, as libxl spawns it.
enum DeviceModelCommand {
    static func main(_ args: [String]) -> Int32 {
        let log = Log.logger("xenvfb")
        let options: DeviceModelOptions
        do throws(OptionError) {
            options = try DeviceModelOptions.parse(args)
        } catch {
            log.error("\(error) (see xenvfb --help and xenvfb(1))")
            return 1
        }
        if let error = validateDisplays(options) {
            log.error("\(error) (see xenvfb(1))")
            return 1
        }
        do throws(DeviceModelError) {
            let model = try DeviceModel(options: options)
            try model.start()
            return model.run()
        } catch {
            log.error("\(error)")
            return 1
        }
    }
}

/// Checks the display arguments that the display modules parse, so a typo
/// fails at start-up like any other bad option. Shared with `xenvfb demo`.
func validateDisplays(_ options: DeviceModelOptions) -> OptionError? {
    for case .png(let spec) in options.displays {
        do throws(DisplayError) {
            _ = try PNGDisplay.Options(spec: spec)
        } catch {
            return OptionError("--display", error.message)
        }
    }
    return nil
}

/// Why the device model could not start.
struct DeviceModelError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One running device model: the parsed options, the event loop, the
/// control plane (QMP, signals, the shutdown chain) and the parts attached to
/// them.
///
/// Start-up order: the control plane (`start`), then the parts
/// (`attachParts`), then privileges are dropped (`-chroot`, `-runas`), then
/// the loop runs until SIGHUP (what `xl destroy` sends), SIGTERM, SIGINT or
/// QMP `quit`; the shutdown chain then tears the parts down in reverse order
/// and the process exits 0.
final class DeviceModel {
    let options: DeviceModelOptions
    let loop: EventLoop
    /// The QMP monitor. Parts add commands with `qmp.registerCommand` and
    /// the VNC display registers itself as `qmp.vncProvider`.
    let qmp: QMPServer
    /// Parts add their teardown here (`shutdown.add(name) { done in ... }`).
    let shutdown = ShutdownChain()
    let log: Logger
    /// The displays, input and backends, once attached.
    var session: Session?
    /// The xenstore connection the backends use.
    var xenstore: XenStoreConnection?
    /// What `run` returns: 1 once the device model shut down because xenstored went away.
    private var exitStatus: Int32 = 0
    /// With `--domain` or `--vdispl-only`: the guest's name node, gone when the guest is.
    private var domainWatch: XenStoreWatch?

    init(options: DeviceModelOptions) throws(DeviceModelError) {
        self.options = options
        var metadata: Logger.Metadata = [:]
        if let domid = options.domid { metadata["domid"] = "\(domid)" }
        log = Log.logger("xenvfb", metadata)
        do {
            loop = try EventLoop()
        } catch {
            throw DeviceModelError("cannot create the event loop: \(error)")
        }
        let initial: RunState
        if options.startPaused {
            initial = options.incoming == nil ? .prelaunch : .paused
        } else {
            initial = .running
        }
        qmp = QMPServer(loop: loop, runState: initial, logger: Log.logger("qmp", metadata))
        qmp.guestName = options.name
        qmp.displayType = options.sdl ? "sdl" : "none"
    }

    /// Brings up the control plane, then the parts.
    func start() throws(DeviceModelError) {
        logOptions()
        // Writes to a peer that went away must fail with EPIPE, not kill the
        // process (QMP and VNC clients come and go).
        signal(SIGPIPE, SIG_IGN)
        do {
            try loop.handleSignals([SIGHUP, SIGTERM, SIGINT]) { [unowned self] sig in
                self.signalled(sig)
            }
        } catch {
            throw DeviceModelError("cannot handle signals: \(error)")
        }
        qmp.onQuit = { [unowned self] in self.beginShutdown(reason: "QMP quit") }
        for endpoint in options.qmp {
            do throws(QMPSocketError) {
                try qmp.listen(endpoint)
            } catch {
                qmp.close()
                throw DeviceModelError("\(error)")
            }
        }
        shutdown.add("QMP") { [unowned self] done in
            self.qmp.close()
            done()
        }
        if let process = options.processName {
            _ = cshims_set_thread_name(process)
        }
        try attachParts()
        try dropPrivileges()
        log.info("device model started", metadata: ["status": "\(qmp.runState.rawValue)"])
    }

    /// Runs until shutdown; returns the exit status.
    func run() -> Int32 {
        loop.run()
        return exitStatus
    }

    private func signalled(_ sig: Int32) {
        let name = sig == SIGHUP ? "SIGHUP" : sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "signal \(sig)"
        if shutdown.isRunning {
            log.warning("\(name) during shutdown; exiting now")
            exit(0)
        }
        beginShutdown(reason: name)
    }

    /// Tears every part down through the shutdown chain, then ends `run`.
    func beginShutdown(reason: String) {
        guard !shutdown.isRunning else { return }
        log.info("shutting down", metadata: ["reason": "\(reason)"])
        shutdown.run(on: loop) { [unowned self] in
            self.log.info("device model stopped")
            self.loop.stop()
        }
    }

    private func logOptions() {
        let o = options
        let pngs = o.displays.filter { if case .png = $0 { return true } else { return false } }.count
        log.info("device model options", metadata: [
            "name": "\(o.name ?? "-")",
            "vnc": "\(o.vnc ?? "none")",
            "sdl": "\(o.sdl)",
            "png": "\(pngs)",
            "keymap": "\(o.keymap ?? "-")",
            "qmp": "\(o.qmp.map(\.id).joined(separator: ","))",
            "paused": "\(o.startPaused)",
            "xenstore": "\(o.useXenstore)",
        ])
        for w in o.warnings { log.warning("\(w)") }
    }

    /// `-chroot DIR` and `-runas USER|UID:GID`, applied like QEMU does once
    /// everything is open: the user is looked up first (in the host's
    /// passwd and group databases, as QEMU's `os_parse_runas_uid_gid` does
    /// before `os_setup_post` chroots: an empty chroot has none), then
    /// chroot, then groups, gid and uid.
    private func dropPrivileges() throws(DeviceModelError) {
        let identity = try options.runAs.map { spec throws(DeviceModelError) in try Self.lookUp(runAs: spec) }
        if let dir = options.chroot {
            guard Glibc.chroot(dir) == 0 else { throw DeviceModelError("-chroot \(dir): \(SystemError("chroot"))") }
            guard chdir("/") == 0 else { throw DeviceModelError("-chroot \(dir): \(SystemError("chdir"))") }
            log.info("changed root", metadata: ["dir": "\(dir)"])
        }
        guard let (spec, uid, gid, groups) = identity else { return }
        let rc = groups.withUnsafeBufferPointer { setgroups($0.count, $0.baseAddress) }
        guard rc == 0 else { throw DeviceModelError("-runas \(spec): \(SystemError("setgroups"))") }
        guard setgid(gid) == 0 else { throw DeviceModelError("-runas \(spec): \(SystemError("setgid"))") }
        guard setuid(uid) == 0 else { throw DeviceModelError("-runas \(spec): \(SystemError("setuid"))") }
        log.info("dropped privileges", metadata: ["uid": "\(uid)", "gid": "\(gid)", "groups": "\(groups.count)"])
    }

    /// `-runas USER` (its uid, primary gid and supplementary groups) or
    /// `-runas UID:GID` (no supplementary groups).
    static func lookUp(runAs spec: String) throws(DeviceModelError) -> (String, uid_t, gid_t, [gid_t]) {
        let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 2, let u = UInt32(parts[0]), let g = UInt32(parts[1]) {
            return (spec, u, g, [])
        }
        guard let pw = getpwnam(spec) else {
            throw DeviceModelError("-runas \(spec): no such user (give a user name or UID:GID)")
        }
        let uid = pw.pointee.pw_uid, gid = pw.pointee.pw_gid
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        while getgrouplist(spec, gid, &groups, &count) < 0 {
            guard count > Int32(groups.count), count <= 65536 else {
                throw DeviceModelError("-runas \(spec): cannot list the user's groups")
            }
            groups = [gid_t](repeating: 0, count: Int(count))
        }
        return (spec, uid, gid, Array(groups.prefix(Int(count))))
    }
}

// MARK: - The parts

extension DeviceModel {
    /// Why `-xen-domid-restrict` is refused. `xentoolcore_restrict_all`
    /// restricts every open Xen handle to the guest's domain, and for the
    /// xenstore connection that means closing it: libxenstore's restrict
    /// callback puts /dev/null in its place (tools/libs/store/xs.c), as Xen's
    /// qemu-deprivilege design asks ("close all xenstore-related file
    /// descriptors"). QEMU 7.2 restricts the same way once its machine is set
    /// up (accel/xen `xen_setup_post`) and lets its later xenstore write of
    /// the device-model state fail ("may fail when running restricted ...
    /// Toolstacks should instead use QMP"): libxl, under dm_restrict, starts
    /// it with `-S` and a pre-opened QMP socket (`fd=N`) and waits for
    /// `query-status`. xenvfb's backends, unlike QEMU's HVM emulation, need
    /// xenstore for as long as the guest runs: the frontends connect after
    /// the guest boots, and reconnect, through it. Keeping a second
    /// connection open would leave a restricted device model with dom0's
    /// xenstore access, which is what the restriction takes away.
    static let restrictRefusal = """
        -xen-domid-restrict (libxl's dm_restrict=1) is not supported: restricting the Xen handles \
        closes the xenstore connection (libxenstore replaces it with /dev/null), and the vfb, vkbd and vdispl \
        backends need xenstore for as long as the guest runs (its frontends connect and reconnect \
        through it). Remove dm_restrict=1 from the guest's configuration.
        """

    /// Attaches the parts, once the control plane is up and before
    /// privileges are dropped; each registers its teardown with
    /// `shutdown.add` (hooks run in reverse order: backends, then displays,
    /// then QMP).
    ///
    /// - The session (`Session`): the displays from `options` (VNC sets
    ///   `qmp.vncProvider`), the input queue, and the QMP display and input
    ///   commands.
    /// - Unless `--no-xenstore`: the host (XenHost, or SimHost with the
    ///   hidden `--sim-host DIR`) with its event-channel handles opened now,
    ///   the xenstore client (`XENSTORED_PATH` or libxenstore's default),
    ///   then the vfb, vkbd and vdispl backends, which register under
    ///   `/local/domain/0/device-model/<domid>/backends` and then write
    ///   `state` = `running` for libxl. Their shutdown hook takes the devices
    ///   to Closing and Closed and removes those device-model nodes again.
    ///
    /// With `--no-xenstore` the device model serves QMP and its displays and
    /// exits on a signal (for tests of the control plane).
    ///
    /// `-xen-domid-restrict` (libxl's `dm_restrict=1`) is refused: see
    /// `restrictRefusal`.
    func attachParts() throws(DeviceModelError) {
        if options.restrictToDomain && options.useXenstore && options.simHost == nil {
            throw DeviceModelError(Self.restrictRefusal)
        }
        let session = Session(options: options, loop: loop, log: log)
        self.session = session
        do throws(DisplayError) {
            try session.openDisplays()
        } catch {
            session.closeDisplays()
            throw DeviceModelError("\(error)")
        }
        session.registerCommands(qmp)
        shutdown.add("displays") { done in
            session.closeDisplays()
            done()
        }
        guard options.useXenstore else { return }

        let host: Host
        if let dir = options.simHost {
            host = SimHost(directory: dir, domid: 0)
            log.info("acting on the simulated machine in \(dir) (SimHost)")
        } else {
            do throws(HostError) {
                let xen = try XenHost(domid: 0)
                // A vfb, a vkbd and a vdispl device (one handle for all its
                // connectors), each reconnecting with a fresh handle, and
                // room for a second vdispl: opened now, before -runas.
                try xen.preopenEventChannels(8)
                host = xen
            } catch {
                throw DeviceModelError("cannot open Xen: \(error)")
            }
        }
        let store: XenStoreConnection
        do {
            store = try XenStoreConnection(loop: loop)
        } catch {
            throw DeviceModelError("\(error)")
        }
        xenstore = store
        // Without xenstored the devices can neither change state nor be
        // removed: shut down cleanly, with exit status 1 (faults.py).
        store.client.onConnectionLost { [unowned self] in
            self.exitStatus = 1
            self.beginShutdown(reason: "xenstore connection lost")
        }
        let domid: UInt32
        if let d = options.domid {
            domid = d
        } else if let name = options.domainName {
            domid = try waitForDomain(named: name, store: store)
        } else {
            return
        }
        if options.restrictToDomain {
            log.warning("-xen-domid-restrict has no effect on a simulated host")
        }
        do {
            // Registers the backends, then writes device-model/<domid>/state = running.
            try session.startBackends(host: host, xenstore: store, domid: domid)
        } catch {
            throw DeviceModelError("cannot start the backends for domain \(domid): \(error)")
        }
        let dmPath = "/local/domain/\(host.domid)/device-model/\(domid)"
        let vdisplOnly = options.vdisplOnly
        shutdown.add("backends") { [log] done in
            session.backends?.shutdown {
                // What this process wrote for libxl goes too: the state key
                // and the backends it registered (and the directory, if
                // nothing else is left in it). With --vdispl-only the state
                // key and the other backends belong to another model, if any.
                if vdisplOnly {
                    try? store.remove(dmPath + "/backends/vdispl")
                } else {
                    try? store.remove(dmPath + "/state")
                    try? store.remove(dmPath + "/backends")
                }
                if let left = try? store.directory(dmPath + "/backends"), left.isEmpty { try? store.remove(dmPath + "/backends") }
                if let left = try? store.directory(dmPath), left.isEmpty { try? store.remove(dmPath) }
                log.info("backends closed")
                done()
            }
        }
        // Started by hand (--domain, --vdispl-only), nobody will signal it
        // when the guest goes: stop then.
        if options.vdisplOnly || options.domainName != nil {
            do {
                domainWatch = try store.watch("/local/domain/\(domid)/name") { [unowned self] _ in
                    let gone: Bool
                    do { gone = try store.read("/local/domain/\(domid)/name") == nil } catch { gone = false }
                    if gone { self.beginShutdown(reason: "domain \(domid) is gone") }
                }
            } catch {
                throw DeviceModelError("cannot watch domain \(domid): \(error)")
            }
        }
    }

    /// The id of the domain named `name`: at once if it exists, else when
    /// it appears (`@introduceDomain`), running the loop meanwhile.
    private func waitForDomain(named name: String, store: XenStoreConnection) throws(DeviceModelError) -> UInt32 {
        func find() -> UInt32? {
            guard let ids = try? store.directory("/local/domain") else { return nil }
            for id in ids {
                guard let d = UInt32(xenstoreDecimal: id), d != 0, (try? store.read("/local/domain/\(id)/name")) == name else { continue }
                return d
            }
            return nil
        }
        if let d = find() {
            log.info("domain \(name) is domain \(d)")
            return d
        }
        log.info("waiting for domain \(name) to appear")
        var found: UInt32?
        let watch: XenStoreWatch
        do {
            watch = try store.watch("@introduceDomain") { _ in if found == nil { found = find() } }
        } catch {
            throw DeviceModelError("cannot watch @introduceDomain: \(error)")
        }
        defer { watch.cancel() }
        // Looked for again each second too: the name may be written after
        // the domain is introduced (a toolstack other than libxl).
        while found == nil && !shutdown.isRunning {
            _ = loop.runOnce(timeoutMilliseconds: 1000)
            if found == nil { found = find() }
        }
        guard let d = found else { throw DeviceModelError("stopped while waiting for domain \(name)") }
        log.info("domain \(name) appeared as domain \(d)")
        return d
    }
}
