#if canImport(Glibc)
import Glibc
#endif
import Console
import Control
import Damage
@testable import DeviceModel
import EventLoop
import Support
import Synchronization
import Testing

/// A device model in this process (control plane and displays, no xenstore),
/// its loop on a thread of its own, driven through its QMP socket by the
/// Control module's blocking client, as `xenvfb screenshot` drives it.
final class RunningDeviceModel: @unchecked Sendable {
    let dir: String
    let qmpPath: String
    private let model = Mutex<DeviceModel?>(nil)
    private let exitStatus = Mutex<Int32?>(nil)

    init(_ extra: [String] = []) throws {
        var template = Array("/tmp/xenvfb-dmtest-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else { throw QMPClientError("mkdtemp") }
        dir = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        qmpPath = dir + "/qmp.sock"
        let options = try DeviceModelOptions.parse(["--domid", "42", "--no-xenstore", "--qmp", "unix:" + qmpPath] + extra)
        try spawnThread { [self] in
            do {
                let m = try DeviceModel(options: options)
                try m.start()
                // Before the loop runs: posted work waits for it.
                model.withLock { $0 = m }
                let status = m.run()
                exitStatus.withLock { $0 = status }
            } catch {
                exitStatus.withLock { $0 = -1 }
            }
        }
        let deadline = MonotonicClock.now() + 20_000_000_000
        while model.withLock({ $0 }) == nil {
            guard MonotonicClock.now() < deadline, exitStatus.withLock({ $0 }) == nil else { throw QMPClientError("the device model did not start") }
            usleep(5000)
        }
    }

    func client() throws -> QMPClient { try QMPClient(path: qmpPath, deadline: MonotonicClock.now() + 30_000_000_000) }

    /// Runs `body` on the model's loop and waits for it.
    func onLoop<R: Sendable>(_ body: @escaping @Sendable (DeviceModel) -> R) -> R {
        let m = model.withLock { $0 }!
        let result = Mutex<R?>(nil)
        let box = LoopBound(m)
        m.loop.post { result.withLock { $0 = body(box.value) } }
        while true {
            if let r = result.withLock({ $0 }) { return r }
            usleep(1000)
        }
    }

    /// `quit`, then waits for the loop to end; returns the exit status.
    func quit() throws -> Int32 {
        let c = try client()
        _ = try? c.execute("quit", [:])
        c.close()
        let deadline = MonotonicClock.now() + 20_000_000_000
        while MonotonicClock.now() < deadline {
            if let s = exitStatus.withLock({ $0 }) { return s }
            usleep(5000)
        }
        throw QMPClientError("the device model did not stop")
    }

    deinit { _ = system("rm -rf '\(dir)'") }
}

extension DeviceModel: @unchecked Sendable {}

@Suite(.serialized) struct QMPCommandTests {
    @Test func screendumpRepliesOnceTheFileHoldsTheCurrentFrame() throws {
        let dm = try RunningDeviceModel()
        defer { _ = try? dm.quit() }
        // Paint a marker into the console's frame, on the loop (as a device would).
        dm.onLoop { m in
            let console = m.session!.console
            console.withFrame { f in
                for y in 10..<20 { for x in 30..<50 { f.pixels.storeBytes(of: UInt32(0x00c0_ffee), toByteOffset: y * f.stride + x * 4, as: UInt32.self) } }
            }
            console.update([Rect(x: 30, y: 10, width: 20, height: 10)])
        }
        let c = try dm.client()
        defer { c.close() }
        let path = dm.dir + "/shot.ppm"
        _ = try c.execute("screendump", ["filename": .string(path)])
        // The reply came after the capture thread wrote the whole file.
        let fd = open(path, O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 2_000_000)
        let n = read(fd, &bytes, bytes.count)
        let header = Array("P6\n800 600\n255\n".utf8)
        #expect(n == header.count + 800 * 600 * 3)
        let pixel = { (x: Int, y: Int) in Array(bytes[header.count + (y * 800 + x) * 3 ..< header.count + (y * 800 + x) * 3 + 3]) }
        #expect(pixel(35, 15) == [0xc0, 0xff, 0xee] && pixel(29, 15) == [0, 0, 0])
        // A symbolic link in place of the file is refused (the model may be root).
        symlink(path, dm.dir + "/link.ppm")
        #expect(throws: QMPClient.CommandError.self) { _ = try c.execute("screendump", ["filename": .string(dm.dir + "/link.ppm")]) }
    }

    @Test func sendKeyThatWouldFreezeInputForHoursIsRefusedWhole() throws {
        let dm = try RunningDeviceModel()
        defer { _ = try? dm.quit() }
        let c = try dm.client()
        defer { c.close() }
        let keys: [JSON] = (0..<40).map { _ in ["type": "qcode", "data": "a"] }
        do {
            _ = try c.execute("send-key", ["keys": .array(keys), "hold-time": 60000])
            Issue.record("80 holds of 60 s were accepted")
        } catch let e as QMPClient.CommandError {
            #expect(e.errorClass == "GenericError" && e.desc.contains("pause"), "\(e)")
        }
        let waiting = dm.onLoop { m in m.session!.input.waiting }
        #expect(waiting == 0, "nothing of the refused command was queued")
        _ = try c.execute("send-key", ["keys": [["type": "qcode", "data": "ctrl"], ["type": "qcode", "data": "c"]], "hold-time": 10])
        let status = try c.execute("query-status", [:])
        #expect(status["status"]?.stringValue == "running")
    }

    @Test func expirePasswordWithAnyTimeIsSafe() throws {
        let dm = try RunningDeviceModel(["-vnc", "127.0.0.1:0,to=99,password=on"])
        defer { _ = try? dm.quit() }
        let c = try dm.client()
        defer { c.close() }
        _ = try c.execute("change-vnc-password", ["password": "secret"])
        for time in ["+9223372036854775807", "+99999999999999999999999", "9223372036854775807", "now", "never", "+0"] {
            _ = try c.execute("expire_password", ["protocol": "vnc", "time": .string(time)])
        }
        #expect(throws: QMPClient.CommandError.self) { _ = try c.execute("expire_password", ["protocol": "vnc", "time": "+-5"]) }
        let vnc = try c.execute("query-vnc", [:])
        #expect(vnc["enabled"] == .bool(true) && vnc["auth"]?.stringValue == "vnc")
    }

    @Test func queryVersionSaysQEMUForLibxlAndXenvfbInPackage() throws {
        let dm = try RunningDeviceModel()
        let c = try dm.client()
        let v = try c.execute("query-version", [:])
        c.close()
        #expect(v["qemu"]?["major"]?.intValue == 7)
        #expect(v["package"]?.stringValue?.hasPrefix("xenvfb ") == true)
        #expect(try dm.quit() == 0)
    }
}
