import Console
import EventLoop
import Host
import Support
import XenBus

/// The device model's backends for one guest: vfb, vkbd and vdispl,
/// registered under `/local/domain/<be>/device-model/<domid>/backends`,
/// after which `device-model/<domid>/state` = `running` tells libxl the
/// model is ready. libxl adds a guest's vdispl devices only after that and
/// waits 10 s for each to reach InitWait; the vdispl backend is already
/// watching by then and takes a device there in one pass of the loop.
public final class Backends {
    public let loop: EventLoop
    public private(set) var vfb: XenBusBackend?
    public private(set) var vkbd: XenBusBackend?
    public private(set) var vdispl: XenBusBackend?
    /// The screens the devices publish into.
    public private(set) var consoles: Consoles?
    private var started = false
    /// How a new vkbd device is joined to the displays' input; by default it
    /// becomes `console.input`. Set before `start` to put it behind a queue of
    /// your own (the device model's `InputQueue`).
    public var connectInput: ((VkbdDevice) -> Void)?

    public init(loop: EventLoop) { self.loop = loop }

    /// The vfb devices that exist now (QMP screendump refreshes them).
    public var vfbDevices: [VfbDevice] {
        (vfb?.devices.values.compactMap { $0.handler as? VfbDevice }) ?? []
    }

    /// The vdispl devices that exist now.
    public var vdisplDevices: [VdisplDevice] {
        (vdispl?.devices.values.compactMap { $0.handler as? VdisplDevice }) ?? []
    }

    /// Starts the backends with `console` as console 0 and no other screen.
    public func start(host: Host, xenstore: XenStoreAccess, domid: UInt32, console: Console, config: BackendConfig) throws {
        try start(host: host, xenstore: xenstore, domid: domid, consoles: Consoles(primary: console, limit: 1 + config.vdisplMaxConnectors),
                  config: config)
    }

    /// Which device kinds a device model serves.
    public struct Kinds: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        public static let vfb = Kinds(rawValue: 1), vkbd = Kinds(rawValue: 2), vdispl = Kinds(rawValue: 4)
        public static let all: Kinds = [.vfb, .vkbd, .vdispl]
    }

    /// Starts the backends of `kinds`. A vfb device shows on the console it
    /// claims (console 0 when it is there from the start, as under libxl),
    /// each vdispl connector on one of its own; input from every console's
    /// displays goes to the vkbd device. With `markRunning` (a device model
    /// libxl started) it then writes `device-model/<domid>/state` = running.
    public func start(host: Host, xenstore: XenStoreAccess, domid: UInt32, consoles: Consoles, config: BackendConfig,
                      kinds: Kinds = .all, markRunning: Bool = true) throws {
        self.consoles = consoles
        let log = Log.logger("backends", ["domid": "\(domid)"])
        let vfb = XenBusBackend(type: "vfb", domid: domid, host: host, store: xenstore, loop: loop) { dev in
            let owner = Consoles.Owner(device: "vfb-\(dev.devid)", head: 0)
            guard let (index, console) = consoles.claim(owner) else {
                log.warning("no console left for \(owner) (at most \(consoles.limit)); it is not shown")
                return VfbDevice(console: Console(), config: config)
            }
            log.info("\(owner) shows on console \(index)")
            return VfbDevice(console: console, config: config)
        }
        let connectInput = self.connectInput
        let console = consoles.primary
        let vkbd = XenBusBackend(type: "vkbd", domid: domid, host: host, store: xenstore, loop: loop) { _ in
            let device = VkbdDevice(console: console, config: config)
            if let connectInput { connectInput(device) } else { console.input = device }
            return device
        }
        let vdispl = XenBusBackend(type: "vdispl", domid: domid, host: host, store: xenstore, loop: loop) { _ in
            VdisplDevice(consoles: consoles, config: config)
        }
        var names: [String] = []
        if kinds.contains(.vfb) { self.vfb = vfb; try vfb.start(); names.append("vfb") }
        if kinds.contains(.vkbd) { self.vkbd = vkbd; try vkbd.start(); names.append("vkbd") }
        if kinds.contains(.vdispl) { self.vdispl = vdispl; try vdispl.start(); names.append("vdispl") }
        if markRunning { try xenstore.write("/local/domain/\(host.domid)/device-model/\(domid)/state", "running") }
        started = true
        log.info("backends registered: \(names.joined(separator: ", "))")
    }

    /// Takes in, now, everything every display device has announced
    /// (QMP screendump, as QEMU refreshes the console first).
    public func refreshNow() {
        for device in vfbDevices { device.refreshNow() }
        for device in vdisplDevices { device.refreshNow() }
    }

    /// Takes every device to Closing, then Closed, and stops watching.
    public func shutdown(completion: @escaping () -> Void) {
        vfb?.shutdown()
        vkbd?.shutdown()
        vdispl?.shutdown()
        vfb = nil
        vkbd = nil
        vdispl = nil
        completion()
    }
}
