// An RFB server over a still many-colour test pattern, for the reference
// decoder (Tests/RFBTests/rfb_reference.py) and real clients.
//
//   RFBTestServer [--port N] [--unix PATH] [--websocket N] [--size WxH]
//                 [--password SECRET] [--max-connections N] [--handshake-timeout S]
//
// Prints "listening PORT [WSPORT]" on stdout once ready. Keys change the frame:
//   '2' draws frame 2 (partial changes of frame 1) and marks what changed,
//   '1' draws frame 1 again, 'r' resizes to the --resize size (default 200x120)
//   and draws frame 1 at that size, 'q' exits.
// Every key event is echoed as "key KEYSYM DOWN [SCANCODE]", every pointer event
// as "pointer BUTTONS X Y", on stdout (for the input tests).
import Glibc
import RFB
import Support
import Synchronization

/// The test frame: XRGB8888, its padding byte set to garbage (which the
/// server must ignore).
final class TestFrame: RFBFrameSource, @unchecked Sendable {
    private let lock = PthreadLock()
    private var pixels: [UInt32] = []
    private(set) var width = 0
    private(set) var height = 0

    init(width: Int, height: Int) { draw(width: width, height: height, frame: 1) }

    func withPixels<R>(_ body: (UnsafeRawPointer, Int, Int, Int) -> R) -> R {
        lock.locked { pixels.withUnsafeBytes { body($0.baseAddress!, width, height, width * 4) } }
    }

    /// Frames already computed, by size and number (drawing is then a copy,
    /// so the latency test measures the server, not the pattern).
    private var cache: [String: [UInt32]] = [:]

    /// Draws frame `frame` (1 or 2) at the given size; returns what changed.
    @discardableResult
    func draw(width w: Int, height h: Int, frame: Int) -> [RFBRect] {
        let key = "\(w)x\(h)/\(frame)"
        let picture = lock.locked { cache[key] } ?? {
            var p = [UInt32](repeating: 0, count: w * h)
            for y in 0..<h {
                for x in 0..<w { p[y * w + x] = 0xA5 << 24 | Pattern.pixel(x: x, y: y, frame: frame) }
            }
            return p
        }()
        return lock.locked {
            cache[key] = picture
            let resized = w != width || h != height
            width = w
            height = h
            pixels = picture
            // Frames 1 and 2 differ only where frame 2 changes things.
            return resized ? [RFBRect(x: 0, y: 0, width: w, height: h)] : Pattern.changes(width: w, height: h)
        }
    }
}

/// A pthread mutex (Mutex.withLock wants a `sending` result, which a
/// generic `withPixels` cannot promise).
final class PthreadLock: @unchecked Sendable {
    private let m: UnsafeMutablePointer<pthread_mutex_t>
    init() { m = .allocate(capacity: 1); pthread_mutex_init(m, nil) }
    deinit { pthread_mutex_destroy(m); m.deallocate() }
    func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return body()
    }
}

/// The pattern, defined region by region so that every encoding path runs:
/// a many-colour background (hashed noise mixed with gradients), solid
/// blocks, two-colour stripes, a 5-colour checker, a 100-colour area, long
/// runs. Frame 2 changes a few areas. Tests/RFBTests/rfb_reference.py
/// computes the same pattern independently.
enum Pattern {
    static func hash(_ x: Int, _ y: Int, _ seed: UInt32) -> UInt32 {
        var v = UInt32(truncatingIfNeeded: x) &* 374_761_393 &+ UInt32(truncatingIfNeeded: y) &* 668_265_263 &+ seed &* 2_246_822_519
        v = (v ^ (v >> 13)) &* 1_274_126_177
        return v ^ (v >> 16)
    }

    static func pixel(x: Int, y: Int, frame: Int) -> UInt32 {
        if frame == 2 {
            for (i, r) in changes(width: Int.max, height: Int.max).enumerated() where x >= r.x && x < r.maxX && y >= r.y && y < r.maxY {
                switch i {
                case 0: return 0x0012_3456                                   // solid block
                case 1: return ((x / 3 + y) % 2 == 0) ? 0x00FF_FFFF : 0x0000_0000 // two colours
                case 2: return hash(x, y, 7) & 0x00FF_FFFF                   // noise
                default: return UInt32(((x + y) % 7) * 36) << 8 | 0x0000_0080 // 7 colours
                }
            }
        }
        switch (x / 40 + y / 30) % 6 {
        case 0: return 0x0080_4020 &+ UInt32((x / 40) % 5) &* 0x0011_1111   // solid blocks
        case 1: return (y % 4 < 2) ? 0x00F0_F0F0 : 0x0010_2030                // stripes
        case 2: return [0x00FF_0000, 0x0000_FF00, 0x0000_00FF, 0x00FF_FF00, 0x0000_FFFF][(x / 2 + y / 2) % 5]
        case 3: return UInt32((x * 7 + y * 13) % 100) &* 0x0002_0305 & 0x00FF_FFFF // 100 colours
        case 4: return (x / 97 + y) % 3 == 0 ? 0x0040_4040 : 0x00C0_C0C0    // long runs
        default: return hash(x, y, 1) & 0x00FF_FFFF                          // noise
        }
    }

    /// Frame 2's changed areas (clipped to the frame).
    static func changes(width: Int, height: Int) -> [RFBRect] {
        [RFBRect(x: 10, y: 12, width: 50, height: 20), RFBRect(x: 70, y: 40, width: 33, height: 47),
         RFBRect(x: 130, y: 5, width: 40, height: 30), RFBRect(x: 5, y: 90, width: 150, height: 25)]
            .map { $0.clipped(width: width, height: height) }.filter { !$0.isEmpty }
    }
}

func argument(_ name: String) -> String? {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}

func size(_ text: String?, default d: (Int, Int)) -> (Int, Int) {
    guard let t = text else { return d }
    let parts = t.split(separator: "x")
    guard parts.count == 2, let w = Int(parts[0]), let h = Int(parts[1]) else { return d }
    return (w, h)
}

Log.bootstrap()
let (width, height) = size(argument("--size"), default: (333, 211))
let resizeTo = size(argument("--resize"), default: (200, 120))
let frame = TestFrame(width: width, height: height)
var options: RFBServerOptions
if let path = argument("--unix") {
    options = RFBServerOptions(address: .unix(path: path))
} else {
    options = RFBServerOptions(address: .tcp(host: "127.0.0.1", port: Int(argument("--port") ?? "0") ?? 0))
}
if let ws = argument("--websocket").flatMap({ Int($0) }) { options.webSockets = [.tcp(host: "127.0.0.1", port: ws)] }
if let n = argument("--max-connections").flatMap({ Int($0) }) { options.maxConnections = n }
if let n = argument("--handshake-timeout").flatMap({ Int($0) }) { options.handshakeTimeoutSeconds = n }
options.passwordRequired = argument("--password") != nil

final class Holder: @unchecked Sendable { var server: RFBServer? }
let holder = Holder()
let done = Mutex<Bool>(false)
let server: RFBServer
do {
    server = try RFBServer(options: options, source: frame) { event in
        switch event {
        case .key(let keysym, let down, let scancode, _):
            say("key \(keysym) \(down ? 1 : 0)\(scancode.map { " \($0)" } ?? "")")
            guard down else { return }
            switch keysym {
            case UInt32(UInt8(ascii: "2")): holder.server?.markDirty(frame.draw(width: frame.width, height: frame.height, frame: 2))
            case UInt32(UInt8(ascii: "1")): holder.server?.markDirty(frame.draw(width: frame.width, height: frame.height, frame: 1))
            case UInt32(UInt8(ascii: "r")):
                frame.draw(width: resizeTo.0, height: resizeTo.1, frame: 1)
                holder.server?.resize(width: resizeTo.0, height: resizeTo.1)
            case UInt32(UInt8(ascii: "q")): done.withLock { $0 = true }
            default: break
            }
        case .pointer(let buttons, let x, let y, _):
            say("pointer \(buttons) \(x) \(y)")
        case .connected, .disconnected:
            break
        }
    }
} catch {
    FileHandleStderr.write("RFBTestServer: \(error)\n")
    exit(1)
}
holder.server = server
if let p = argument("--password") { server.setPassword(p) }
let info = server.info
say("listening \(info.listen.service)\(info.websockets.first.map { " \($0.service)" } ?? "")")
while !done.withLock({ $0 }) { usleep(20_000) }
server.close()

/// One line on stdout, one write(2) (no stdio buffering to flush).
func say(_ s: String) { var b = Array((s + "\n").utf8); _ = b.withUnsafeMutableBytes { Glibc.write(1, $0.baseAddress, $0.count) } }

enum FileHandleStderr {
    static func write(_ s: String) { var b = Array(s.utf8); _ = b.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) } }
}
