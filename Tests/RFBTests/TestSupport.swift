import Glibc
@testable import RFB
import Support

/// A frame for tests: XRGB with garbage in the padding byte.
final class FakeFrame: RFBFrameSource, @unchecked Sendable {
    private var m = pthread_mutex_t()
    private(set) var pixels: [UInt32]
    private(set) var width: Int
    private(set) var height: Int

    init(width: Int, height: Int, seed: UInt64 = 1) {
        self.width = width
        self.height = height
        var rng = SplitMix(seed: seed)
        pixels = (0..<(width * height)).map { _ in UInt32(truncatingIfNeeded: rng.next()) }
        pthread_mutex_init(&m, nil)
    }

    func withPixels<R>(_ body: (UnsafeRawPointer, Int, Int, Int) -> R) -> R {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return pixels.withUnsafeBytes { body($0.baseAddress!, width, height, width * 4) }
    }

    func set(width w: Int, height h: Int, fill: UInt32) {
        pthread_mutex_lock(&m)
        width = w
        height = h
        pixels = [UInt32](repeating: fill, count: w * h)
        pthread_mutex_unlock(&m)
    }

    func pixel(_ x: Int, _ y: Int) -> UInt32 { pixels[y * width + x] }
}

/// A session driven in memory, with what it emitted.
final class SessionHarness {
    let frame: FakeFrame
    let context: SessionContext
    let session: RFBSession
    var events: [RFBEvent] = []
    var password: [UInt8]? = nil
    /// Output received; `pending` is what was not looked at yet.
    private var received: [UInt8] = []
    private var readOffset = 0
    var pending: [UInt8] {
        get { Array(received[readOffset...]) }
        set { received = newValue; readOffset = 0 }
    }

    init(frame: FakeFrame, passwordRequired: Bool = false) {
        self.frame = frame
        var me: SessionHarness?
        context = SessionContext(source: frame, desktopName: "test", passwordRequired: passwordRequired,
                                 log: Log.logger("test"),
                                 checkPassword: { c, r in
                                     guard let p = me?.password else { return .noPassword }
                                     return vncAuthResponse(challenge: c, password: p) == r ? .ok : .wrongPassword
                                 },
                                 emit: { e in me?.events.append(e) })
        session = RFBSession(context: context)
        me = self
        drain()
    }

    /// Moves everything queued into `pending` (as if the client read it).
    func drain() {
        repeat {
            session.pump()
            while !session.out.isEmpty {
                let n = session.out.withPieces(max: 64) { pieces -> Int in
                    var n = 0
                    for p in pieces { received += p; n += p.count }
                    return n
                }
                session.out.consume(n)
            }
        } while session.isUpdating
    }

    func send(_ bytes: [UInt8], byteByByte: Bool = false) throws {
        if byteByByte {
            for b in bytes { try session.receive([b]) }
        } else {
            try session.receive(bytes)
        }
        drain()
    }

    func take(_ n: Int) -> [UInt8]? {
        guard received.count - readOffset >= n else { return nil }
        defer { readOffset += n }
        return Array(received[readOffset..<readOffset + n])
    }

    /// Handshake as an RFB 3.8 client with security None.
    func handshake() throws {
        _ = take(12)
        try send(Array("RFB 003.008\n".utf8))
        _ = take(2)
        try send([1])
        _ = take(4)
        try send([1])
        _ = take(24 + 4)
    }

    /// Next server message, parsed for raw/pseudo updates: (type, rects).
    func nextMessage(bytesPerPixel: Int = 4) -> (type: UInt8, rects: [(x: Int, y: Int, w: Int, h: Int, encoding: Int32, data: [UInt8])])? {
        let saved = readOffset
        guard let t = take(1) else { return nil }
        switch t[0] {
        case 0:
            guard let h = take(3) else { readOffset = saved; return nil }
            var rects: [(Int, Int, Int, Int, Int32, [UInt8])] = []
            for _ in 0..<(Int(h[1]) << 8 | Int(h[2])) {
                guard let r = take(12) else { readOffset = saved; return nil }
                let x = Int(r[0]) << 8 | Int(r[1]), y = Int(r[2]) << 8 | Int(r[3])
                let w = Int(r[4]) << 8 | Int(r[5]), hh = Int(r[6]) << 8 | Int(r[7])
                let e = Int32(bitPattern: UInt32(r[8]) << 24 | UInt32(r[9]) << 16 | UInt32(r[10]) << 8 | UInt32(r[11]))
                var size = 0
                if e == 0 { size = w * hh * bytesPerPixel }
                if e == -308 { size = 4 + 16 }
                guard let d = take(size) else { readOffset = saved; return nil }
                rects.append((x, y, w, hh, e, d))
            }
            return (0, rects)
        case 1:
            guard let h = take(5) else { readOffset = saved; return nil }
            _ = take(6 * (Int(h[3]) << 8 | Int(h[4])))
            return (1, [])
        default:
            return (t[0], [])
        }
    }
}

func setEncodings(_ e: [Int32]) -> [UInt8] {
    var b: [UInt8] = [2, 0, UInt8(e.count >> 8), UInt8(e.count & 0xff)]
    for v in e { let u = UInt32(bitPattern: v); b += [UInt8(u >> 24), UInt8((u >> 16) & 0xff), UInt8((u >> 8) & 0xff), UInt8(u & 0xff)] }
    return b
}

func updateRequest(incremental: Bool, _ x: Int = 0, _ y: Int = 0, _ w: Int = 65535, _ h: Int = 65535) -> [UInt8] {
    [3, incremental ? 1 : 0, UInt8(x >> 8), UInt8(x & 0xff), UInt8(y >> 8), UInt8(y & 0xff),
     UInt8(w >> 8), UInt8(w & 0xff), UInt8(h >> 8), UInt8(h & 0xff)]
}
