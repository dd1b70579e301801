import EventLoop
import Host
import Support

/// A simulated guest domain: its RAM, grant table and event channels on
/// `SimHost`, and its xenstore connection (which acts as this domain).
public final class GuestDomain {
    public let domid: UInt32
    public let host: SimHost
    public let memory: SimGuestMemory
    /// What the domain grants other domains (`gnttab`).
    public let grants: SimGrantTable
    public let store: XenStoreAccess
    public let loop: EventLoop

    /// Creates the domain's memory (`memoryBytes`, default 16 MiB) in the machine `host` names.
    public init(host: SimHost, store: XenStoreAccess, loop: EventLoop, memoryBytes: Int = 16 << 20) throws {
        domid = host.domid
        self.host = host
        self.store = store
        self.loop = loop
        memory = try host.createMemory(bytes: memoryBytes)
        grants = try host.createGrantTable()
    }

    public var path: String { "/local/domain/\(domid)" }
}

/// libxl's part in the handshake (tools/libs/light/libxl_device.c,
/// `libxl__device_add`): creates
/// a device's backend and frontend directories in one transaction, with the
/// permissions libxl gives them.
public enum Toolstack {
    /// Adds device `devid` of `type` (vfb, vkbd) for `domid`, served by `backendDomid`.
    public static func addDevice(store: XenStoreAccess, type: String, domid: UInt32, devid: UInt32 = 0,
                                 backendDomid: UInt32 = 0, backendKeys: [String: String] = [:],
                                 frontendKeys: [String: String] = [:]) throws {
        let be = "/local/domain/\(backendDomid)/backend/\(type)/\(domid)/\(devid)"
        let fe = "/local/domain/\(domid)/device/\(type)/\(devid)"
        try store.transaction { t in
            try t.mkdir(be)
            try t.setPermissions(be, ["n\(backendDomid)", "r\(domid)"])
            try t.mkdir(fe)
            try t.setPermissions(fe, ["n\(domid)", "r\(backendDomid)"])
            try t.write("\(fe)/backend", be)
            try t.write("\(fe)/backend-id", String(backendDomid))
            try t.write("\(fe)/state", "1")
            try t.write("\(be)/frontend", fe)
            try t.write("\(be)/frontend-id", String(domid))
            try t.write("\(be)/online", "1")
            try t.write("\(be)/state", "1")
            for (k, v) in backendKeys.sorted(by: { $0.key < $1.key }) { try t.write("\(be)/\(k)", v) }
            for (k, v) in frontendKeys.sorted(by: { $0.key < $1.key }) { try t.write("\(fe)/\(k)", v) }
        }
    }

    /// Adds a vfb and a vkbd, as xl does for `vfb = [...]`.
    public static func addFramebuffer(store: XenStoreAccess, domid: UInt32, backendDomid: UInt32 = 0) throws {
        try addDevice(store: store, type: "vfb", domid: domid, backendDomid: backendDomid,
                      backendKeys: ["vnc": "0", "sdl": "0"])
        try addDevice(store: store, type: "vkbd", domid: domid, backendDomid: backendDomid)
    }

    /// Adds a vdispl device as libxl does for `vdispl = [ 'backend=0,be-alloc=0,connectors=id0:800x600;...' ]`
    /// (tools/libs/light/libxl_vdispl.c): with the device, in the same
    /// transaction, the frontend directory gets `be-alloc` and, per
    /// connector, `N/resolution` and `N/unique-id` (keys the guest may read
    /// but not write).
    public static func addDisplay(store: XenStoreAccess, domid: UInt32, devid: UInt32 = 0, backendDomid: UInt32 = 0,
                                  connectors: [(id: String, width: Int, height: Int)], backendAlloc: Bool = false) throws {
        var keys = ["be-alloc": backendAlloc ? "1" : "0"]
        for (i, c) in connectors.enumerated() {
            keys["\(i)/resolution"] = "\(c.width)x\(c.height)"
            keys["\(i)/unique-id"] = c.id
        }
        try addDevice(store: store, type: "vdispl", domid: domid, devid: devid, backendDomid: backendDomid, frontendKeys: keys)
    }

    /// libxl's unplug: `online` = 0 and backend `state` = 5.
    public static func unplug(store: XenStoreAccess, type: String, domid: UInt32, devid: UInt32 = 0, backendDomid: UInt32 = 0) throws {
        let be = "/local/domain/\(backendDomid)/backend/\(type)/\(domid)/\(devid)"
        try store.transaction { t in
            try t.write("\(be)/online", "0")
            if try t.read("\(be)/state") != "6" { try t.write("\(be)/state", "5") }
        }
    }

    /// Removes both directories of a device (after unplug, or to test teardown).
    public static func removeDevice(store: XenStoreAccess, type: String, domid: UInt32, devid: UInt32 = 0, backendDomid: UInt32 = 0) throws {
        try store.transaction { t in
            try t.remove("/local/domain/\(backendDomid)/backend/\(type)/\(domid)/\(devid)")
            try t.remove("/local/domain/\(domid)/device/\(type)/\(devid)")
        }
    }
}
