import Console
import EventLoop
import Host
import Support
import XenBus

/// The device model's backends for one guest: vfb and vkbd, registered under
/// `/local/domain/<be>/device-model/<domid>/backends`, after which
/// `device-model/<domid>/state` = `running` tells libxl the model is ready.
public final class Backends {
    public let loop: EventLoop
    public private(set) var vfb: XenBusBackend?
    public private(set) var vkbd: XenBusBackend?
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

    /// Starts both backends; every device they find shows on `console`, and
    /// input from `console`'s displays goes to the vkbd device.
    public func start(host: Host, xenstore: XenStoreAccess, domid: UInt32, console: Console, config: BackendConfig) throws {
        let vfb = XenBusBackend(type: "vfb", domid: domid, host: host, store: xenstore, loop: loop) { _ in
            VfbDevice(console: console, config: config)
        }
        let connectInput = self.connectInput
        let vkbd = XenBusBackend(type: "vkbd", domid: domid, host: host, store: xenstore, loop: loop) { _ in
            let device = VkbdDevice(console: console, config: config)
            if let connectInput { connectInput(device) } else { console.input = device }
            return device
        }
        self.vfb = vfb
        self.vkbd = vkbd
        try vfb.start()
        try vkbd.start()
        try xenstore.write("/local/domain/\(host.domid)/device-model/\(domid)/state", "running")
        started = true
        Log.logger("backends", ["domid": "\(domid)"]).info("vfb and vkbd backends registered")
    }

    /// Takes every device to Closing, then Closed, and stops watching.
    public func shutdown(completion: @escaping () -> Void) {
        vfb?.shutdown()
        vkbd?.shutdown()
        vfb = nil
        vkbd = nil
        completion()
    }
}
