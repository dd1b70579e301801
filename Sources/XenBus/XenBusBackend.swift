import EventLoop
import Host
import Logging
import Support
import XenProtocol

/// What a device kind (vfb, vkbd) implements; `XenBusDevice` runs the state
/// machine and calls these at the steps of QEMU's legacy backend
/// (hw/xen/xen-legacy-backend.c: `xen_be_try_setup`, `xen_be_try_init`,
/// `xen_be_try_initialise`, `xen_be_try_connected`).
public protocol XenBusDeviceHandler: AnyObject {
    /// Backend state Initialising and `online` = 1: write the feature keys.
    /// The device then writes `hotplug-status` and goes to InitWait.
    func initialise(_ device: XenBusDevice) throws
    /// Frontend Initialised or Connected: map the ring, bind the event
    /// channel, validate. Throwing costs the guest its device (Closing).
    func connect(_ device: XenBusDevice) throws
    /// Frontend Connected (after `connect`): read the frontend's `request-*` keys.
    /// A thrown `XenBusError.store` is retried; anything else is logged.
    func frontendConnected(_ device: XenBusDevice) throws
    /// Unmap and unbind everything `connect` set up. Must be idempotent.
    func disconnect(_ device: XenBusDevice)
}

/// Why a device step failed.
public enum XenBusError: Error, CustomStringConvertible {
    /// The frontend refused: the message names the key and value. The guest
    /// loses the device (Closing).
    case refused(String)
    /// xenstore itself failed (not a missing key): the step is retried
    /// later; the guest keeps its device.
    case store(operation: String, path: String, underlying: String)

    /// A refusal with a message naming the key and value.
    public init(_ message: String) { self = .refused(message) }

    public var isTransient: Bool { if case .store = self { return true } else { return false } }

    public var description: String {
        switch self {
        case .refused(let message): return message
        case .store(let op, let path, let underlying): return "xenstore \(op) \(path) failed: \(underlying)"
        }
    }
}

/// Finds the devices of one kind for one guest and runs each one's backend
/// state machine: watches `backend/<type>/<domid>` under the backend domain's
/// path, scans what is already there, and creates or drops `XenBusDevice`s
/// as directories appear and disappear.
public final class XenBusBackend {
    public let type: String
    public let domid: UInt32
    public let host: Host
    public let store: XenStoreAccess
    public let loop: EventLoop
    public let root: String
    public private(set) var devices: [UInt32: XenBusDevice] = [:]
    /// Reconnect rate limit: at most `resetBurst` reconnects per `resetWindow`;
    /// past that the next one waits `resetBackoff`.
    public var resetBurst = 5
    public var resetWindow: Duration = .seconds(10)
    public var resetBackoff: Duration = .seconds(2)
    private let makeHandler: (XenBusDevice) -> XenBusDeviceHandler
    private var watch: XenStoreWatch?
    private let log: Logger

    public init(type: String, domid: UInt32, host: Host, store: XenStoreAccess, loop: EventLoop,
                makeHandler: @escaping (XenBusDevice) -> XenBusDeviceHandler) {
        self.type = type
        self.domid = domid
        self.host = host
        self.store = store
        self.loop = loop
        self.makeHandler = makeHandler
        root = "/local/domain/\(host.domid)/backend/\(type)/\(domid)"
        log = Log.logger("xenbus", ["type": "\(type)", "domid": "\(domid)"])
    }

    /// Registers the backend (`device-model/<domid>/backends/<type>`) and
    /// starts watching for devices.
    public func start() throws {
        try store.mkdir("/local/domain/\(host.domid)/device-model/\(domid)/backends/\(type)")
        watch = try store.watch(root) { [weak self] path in self?.changed(path) }
        scan()
    }

    /// Takes every device to Closing and then Closed and stops watching.
    public func shutdown() {
        watch?.cancel()
        watch = nil
        for dev in devices.values { dev.close() }
        devices.removeAll()
    }

    private func changed(_ path: String) {
        guard path.hasPrefix(root + "/") else { scan(); return } // the root itself, or above it
        let rest = path.dropFirst(root.count + 1)
        let first = rest.split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
        if let devid = UInt32(xenstoreDecimal: first), let dev = devices[devid] {
            dev.update()
            if dev.isRemoved { devices[devid] = nil }
        } else {
            scan()
        }
    }

    private func scan() {
        let names: [String]
        do {
            names = try store.directory(root)
        } catch {
            log.warning("cannot list \(root): \(error); looking again at the next change")
            names = []
        }
        for name in names {
            guard let devid = UInt32(xenstoreDecimal: name), devices[devid] == nil else { continue }
            // Not complete until libxl wrote its state (an unreadable one is looked at again later).
            guard (try? store.read("\(root)/\(name)/state")) != nil else { continue }
            let dev = XenBusDevice(backend: self, devid: devid)
            dev.handler = makeHandler(dev)
            devices[devid] = dev
            log.info("new \(type) device", metadata: ["devid": "\(devid)"])
            dev.update()
        }
        for (devid, dev) in devices {
            dev.update()
            if dev.isRemoved { devices[devid] = nil }
        }
    }
}

/// One backend device: its paths, its state, and the xenbus state machine
/// (xen/io/xenbus.h; QEMU's hw/xen/xen-legacy-backend.c `xen_be_check_state`),
/// run after every change of either end's directory.
public final class XenBusDevice {
    public unowned let backend: XenBusBackend
    public let devid: UInt32
    /// `/local/domain/<be>/backend/<type>/<domid>/<devid>`
    public let backendPath: String
    /// `/local/domain/<domid>/device/<type>/<devid>` (checked against the `frontend` key).
    public let frontendPath: String
    public var handler: XenBusDeviceHandler?
    public let log: Logger
    public var type: String { backend.type }
    public var domid: UInt32 { backend.domid }
    public var store: XenStoreAccess { backend.store }
    public var host: Host { backend.host }
    public var loop: EventLoop { backend.loop }

    /// The state this backend last wrote.
    public private(set) var state: XenbusState = .initialising
    /// The frontend's state as last read (nil: missing or not a valid state).
    public private(set) var frontendState: XenbusState?
    public private(set) var isRemoved = false
    /// Whether `connect` succeeded and `disconnect` has not run since.
    public private(set) var isConnected = false

    private var setUp = false
    private var frontendWatch: XenStoreWatch?
    private var calledFrontendConnected = false
    private var warnedBadFrontendState = false
    private var updating = false
    private var again = false
    private var resetTimes: [UInt64] = []
    private var resetTimer: EventLoop.TimerID?
    /// A step failed on xenstore itself: it runs again after `retryDelay`
    /// (doubling up to 2 s while it keeps failing).
    private var retryTimer: EventLoop.TimerID?
    private var retryDelayMilliseconds = 50
    /// Reconnects done, and reconnects postponed by the rate limit.
    public private(set) var reconnects = 0
    public private(set) var postponedReconnects = 0

    init(backend: XenBusBackend, devid: UInt32) {
        self.backend = backend
        self.devid = devid
        backendPath = "\(backend.root)/\(devid)"
        frontendPath = "/local/domain/\(backend.domid)/device/\(backend.type)/\(devid)"
        log = Log.logger(backend.type, ["domid": "\(backend.domid)", "devid": "\(devid)"])
    }

    // MARK: Key access for handlers

    /// The frontend's `key`, or nil if it does not exist. A failed read
    /// throws `.store` (never mistaken for a missing key).
    public func readFrontend(_ key: String) throws(XenBusError) -> String? { try read("\(frontendPath)/\(key)") }
    /// The backend's `key`, or nil if it does not exist.
    public func readBackend(_ key: String) throws(XenBusError) -> String? { try read("\(backendPath)/\(key)") }
    public func writeBackend(_ key: String, _ value: String) throws(XenBusError) {
        let path = "\(backendPath)/\(key)"
        do { try store.write(path, value) } catch { throw .store(operation: "write", path: path, underlying: "\(error)") }
    }

    private func read(_ path: String) throws(XenBusError) -> String? {
        do { return try store.read(path) } catch { throw .store(operation: "read", path: path, underlying: "\(error)") }
    }

    private func setState(_ s: XenbusState) throws(XenBusError) {
        if s == state, try readBackend("state") == s.xenstoreValue { return }
        let old = state
        try writeBackend("state", s.xenstoreValue)
        state = s
        log.info("backend \(old) -> \(s)", metadata: ["frontend": "\(frontendState.map { "\($0)" } ?? "none")"])
    }

    // MARK: State machine

    /// Re-reads both ends and takes every step that applies. Safe to call at
    /// any time and any number of times (watch events may be spurious).
    public func update() {
        guard !isRemoved else { return }
        if updating { again = true; return } // our own writes fire watches; finish this pass first
        updating = true
        defer { updating = false }
        repeat {
            again = false
            do throws(XenBusError) {
                try step()
                retryDelayMilliseconds = 50
            } catch {
                retryLater(error)
            }
        } while again && !isRemoved
    }

    /// xenstore failed in the middle of a step: nothing is torn down, and the
    /// step runs again soon (the guest keeps its device through a transient error).
    private func retryLater(_ error: XenBusError) {
        guard retryTimer == nil, !isRemoved else { return }
        log.warning("\(error); retrying in \(retryDelayMilliseconds) ms")
        retryTimer = loop.addTimer(after: .milliseconds(Int64(retryDelayMilliseconds))) { [weak self] in
            guard let self else { return }
            self.retryTimer = nil
            self.update()
        }
        retryDelayMilliseconds = min(retryDelayMilliseconds * 2, 2000)
    }

    private func step() throws(XenBusError) {
        // The backend directory is gone: the toolstack removed the device.
        guard let beText = try readBackend("state") else { remove(); return }

        // Someone else (libxl's unplug) moved the backend to Closing or Closed.
        if let written = XenbusState(xenstore: beText), written != state, written == .closing || written == .closed {
            log.info("toolstack set backend state \(written)")
            if isConnected { handler?.disconnect(self); isConnected = false }
            state = written
        }

        let feText = try readFrontend("state")
        let fe = XenbusState(xenstore: feText)
        if fe == nil, let feText, !warnedBadFrontendState {
            warnedBadFrontendState = true
            log.warning("frontend wrote an invalid state \"\(feText.prefix(16))\"; treating it as Unknown")
        }
        frontendState = fe

        if !setUp {
            guard try setup() else { return }
        }

        // Shutdown: follow the frontend into Closing/Closed; a vanished
        // frontend counts as Closed.
        let feGone = feText == nil
        if fe == .closing || fe == .closed || (feGone && isConnected) {
            if isConnected { handler?.disconnect(self); isConnected = false }
            calledFrontendConnected = false
            if state != .closed { try setState(fe == .closing ? .closing : .closed) }
            return
        }
        if state == .closing {
            // Toolstack-initiated close: finish once the frontend is not using the device.
            if fe == nil || fe == .unknown || fe == .initialising { try setState(.closed) }
            return
        }

        // Reconnect: backend Closed and the frontend is back at Initialising
        // (or already Initialised again: it may pass through 1 between two watch events).
        if state == .closed, fe == .initialising || fe == .initialised {
            guard allowReset() else { return }
            try setState(.initialising)
        }

        if state == .initialising {
            guard try readBackend("online") == "1" else { return }
            do {
                try handler?.initialise(self)
                try writeBackend("hotplug-status", "connected")
            } catch let error as XenBusError where error.isTransient {
                throw error
            } catch {
                log.error("initialise failed: \(error)")
                try setState(.closing)
                return
            }
            try setState(.initWait)
        }

        if state == .initWait, fe == .initialised || fe == .connected {
            do {
                try handler?.connect(self)
            } catch {
                handler?.disconnect(self)
                if let e = error as? XenBusError, e.isTransient { throw e }
                log.error("cannot connect to the frontend: \(error)")
                try setState(.closing)
                return
            }
            isConnected = true
            try setState(.connected)
        }

        if state == .connected, fe == .connected, !calledFrontendConnected {
            do {
                try handler?.frontendConnected(self)
            } catch let error as XenBusError where error.isTransient {
                throw error
            } catch {
                log.error("frontend connected: \(error)")
            }
            calledFrontendConnected = true
        }
    }

    /// `xen_be_try_setup`: the backend must start at Initialising and name the
    /// expected frontend directory, which is then watched.
    private func setup() throws(XenBusError) -> Bool {
        guard let be = XenbusState(xenstore: try readBackend("state")), be == .initialising else {
            if !warnedBadFrontendState { log.error("backend state is not Initialising at setup; ignoring the device") }
            warnedBadFrontendState = true
            return false
        }
        let written = try readBackend("frontend")
        guard let fe = written, fe == frontendPath else {
            log.error("backend key frontend=\"\(written?.prefix(64) ?? "")\" is not \(frontendPath); ignoring the device")
            remove()
            return false
        }
        setUp = true
        state = .initialising
        do {
            frontendWatch = try store.watch(frontendPath) { [weak self] _ in self?.update() }
        } catch {
            log.error("cannot watch \(frontendPath): \(error)")
        }
        return true
    }

    /// Allows a reconnect unless the frontend flaps; then retries after a pause.
    private func allowReset() -> Bool {
        let now = EventLoop.now()
        resetTimes = resetTimes.filter { now &- $0 < backend.resetWindow.nanoseconds }
        if resetTimes.count >= backend.resetBurst {
            postponedReconnects += 1
            if resetTimer == nil {
                log.warning("frontend reconnects too often; waiting before the next reconnect")
                resetTimer = loop.addTimer(after: backend.resetBackoff) { [weak self] in
                    guard let self else { return }
                    self.resetTimer = nil
                    self.resetTimes.removeAll()
                    self.update()
                }
            }
            return false
        }
        resetTimes.append(now)
        reconnects += 1
        return true
    }

    private func remove() {
        guard !isRemoved else { return }
        if isConnected { handler?.disconnect(self); isConnected = false }
        isRemoved = true
        frontendWatch?.cancel()
        frontendWatch = nil
        if let t = resetTimer { loop.cancelTimer(t) }
        if let t = retryTimer { loop.cancelTimer(t) }
        log.info("backend directory removed; device dropped")
    }

    /// Shuts the device down from the backend side: Closing, then Closed.
    public func close() {
        guard !isRemoved else { return }
        if isConnected { handler?.disconnect(self); isConnected = false }
        do throws(XenBusError) {
            if try readBackend("state") != nil {
                try setState(.closing)
                try setState(.closed)
            }
        } catch {
            log.error("cannot close the device: \(error)")
        }
        isRemoved = true
        frontendWatch?.cancel()
        frontendWatch = nil
        if let t = resetTimer { loop.cancelTimer(t) }
        if let t = retryTimer { loop.cancelTimer(t) }
    }
}
