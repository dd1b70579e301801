#if canImport(Glibc)
import Glibc
#endif
import CZlib
import Support

/// A VNC viewer for the backend benchmark: it connects over TCP, negotiates
/// as a real viewer does, asks for updates the way that viewer asks, and
/// decodes what arrives (Raw, ZRLE, lossless Tight) into a picture of its
/// own, so the benchmark can check it against the guest's framebuffer and
/// see when a given pixel changed (key-to-screen latency).
///
/// One thread per viewer, blocking socket reads. Counters are read by the
/// benchmark's thread under `lock`.
final class BenchClient: @unchecked Sendable {
    /// Which viewer's requests to copy.
    enum Profile: String, CaseIterable, Sendable {
        /// Raw only (vncdotool's captures, the simplest viewers).
        case raw
        /// os-autoinst's list: ZRLE, Raw, Tight, ... (a ZRLE viewer).
        case zrle
        /// TigerVNC 1.12's list at its defaults (Tight first, compress level
        /// 2, quality 8; the server sends lossless Tight). noVNC's list also
        /// puts Tight first with compress level 2.
        case tight

        var encodings: [Int32] {
            switch self {
            case .raw: return [0, -223, -308]
            case .zrle: return [16, 0, 7, -24, -223, -224, -257, -261]
            case .tight:
                // Cursor pseudo-encodings, DesktopSize, ExtendedDesktopSize, LED
                // state, LastRect, continuous updates, fence, QEMU key, extended
                // clipboard; then Tight, CopyRect, ZRLE, Hextile, ..., Raw;
                // compress level 2, quality level 8.
                return [-314, 0x574d5664, -239, -240, 0x574d5666, -223, -308, -261, 0x574d5668, -224, -313, -312, -258,
                        -1063131698, 7, 1, 16, 5, 2, 1, 0, -254, -24]
            }
        }

        /// TigerVNC asks for the next update as soon as one starts arriving;
        /// the others once it is complete.
        var requestsEarly: Bool { self == .tight }
    }

    struct Counters: Sendable {
        var updates = 0
        var rects = 0
        var bytes = 0
        /// Monotonic ns of the last completed update.
        var lastUpdate: UInt64 = 0
    }

    let profile: Profile
    let lock = Lock()
    private let fd: Int32
    private(set) var width = 0
    private(set) var height = 0
    private var counters = Counters()
    private var closed = false
    private var failure: String?
    /// The picture as decoded (0x00RRGGBB), touched by the client thread; read
    /// under `lock` once updates stop.
    private var picture = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    /// Bytes received so far.
    private var totalBytes = 0
    /// A pixel to watch: when it takes `value`, the time is recorded.
    private var probe: (x: Int, y: Int, value: UInt32, seen: UInt64?)?

    // Reading.
    private var buffer = [UInt8](repeating: 0, count: 1 << 18)
    private var start = 0, end = 0
    private var streams: [UnsafeMutablePointer<z_stream>?] = [nil, nil, nil, nil, nil]
    private var inflated: [UInt8] = []

    /// Connects and completes the handshake (blocking); the update loop then
    /// runs on a thread of its own.
    init(port: Int, profile: Profile) throws(BenchError) {
        self.profile = profile
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw BenchError("connect 127.0.0.1:\(port): \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
        do throws(BenchError) {
            try handshake()
        } catch {
            close(fd)
            throw error
        }
        let me = self
        do {
            try spawnThread { me.run() }
        } catch {
            close(fd)
            throw BenchError("cannot start the client thread: \(error)")
        }
    }

    deinit { picture.deallocate() }

    /// Closes the socket; the thread ends at its next read.
    func stop() {
        lock.withLock { closed = true }
        shutdown(fd, Int32(SHUT_RDWR))
    }

    var snapshot: Counters { lock.withLock { counters } }
    var error: String? { lock.withLock { failure } }

    /// Sends a key press and release (RFB KeyEvent), and watches pixel
    /// (x, y) for `value`.
    func sendKey(_ keysym: UInt32, watch x: Int, _ y: Int, for value: UInt32) {
        lock.withLock { probe = (x, y, value, nil) }
        var msg: [UInt8] = []
        for down in [UInt8(1), 0] {
            msg += [4, down, 0, 0]
            msg += withUnsafeBytes(of: keysym.bigEndian) { Array($0) }
        }
        send(msg)
    }

    /// When the watched pixel took its value (monotonic ns), if it has.
    var probeSeen: UInt64? { lock.withLock { probe?.seen } }

    /// The decoded picture (call once updates have stopped).
    func pictureCopy() -> [UInt32] { lock.withLock { Array(UnsafeBufferPointer(start: picture, count: width * height)) } }

    // MARK: Protocol

    private func send(_ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
            off += n
        }
    }

    private func handshake() throws(BenchError) {
        let version = try take(12)
        guard version.starts(with: Array("RFB 003.".utf8)) else { throw BenchError("not an RFB server") }
        send(Array("RFB 003.008\n".utf8))
        let types = Int(try take(1)[0])
        guard types > 0 else { throw BenchError("server refused the connection") }
        guard try take(types).contains(1) else { throw BenchError("no security type None") }
        send([1])
        guard try u32() == 0 else { throw BenchError("security result failed") }
        send([1]) // shared
        width = Int(try u16())
        height = Int(try u16())
        _ = try take(16) // pixel format (XRGB8888, as the viewers want: no SetPixelFormat needed, TigerVNC sends it anyway)
        _ = try take(Int(try u32()))
        picture.deallocate()
        picture = .allocate(capacity: max(1, width * height))
        picture.initialize(repeating: 0, count: max(1, width * height))
        // TigerVNC and noVNC send SetPixelFormat with the server's own XRGB layout.
        if profile != .raw {
            send([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
        }
        var enc: [UInt8] = [2, 0]
        enc += withUnsafeBytes(of: UInt16(profile.encodings.count).bigEndian) { Array($0) }
        for e in profile.encodings { enc += withUnsafeBytes(of: e.bigEndian) { Array($0) } }
        send(enc)
        request(incremental: false)
    }

    private func request(incremental: Bool) {
        var m: [UInt8] = [3, incremental ? 1 : 0, 0, 0, 0, 0]
        m += withUnsafeBytes(of: UInt16(width).bigEndian) { Array($0) }
        m += withUnsafeBytes(of: UInt16(height).bigEndian) { Array($0) }
        send(m)
    }

    private func run() {
        do throws(BenchError) {
            while true {
                let type = try take(1)[0]
                switch type {
                case 0: try update()
                case 1:
                    _ = try take(3)
                    _ = try take(Int(try u16()) * 6)
                case 2: break
                case 3:
                    _ = try take(3)
                    try skip(Int(try u32()))
                default: throw BenchError("unknown server message \(type)")
                }
            }
        } catch {
            lock.withLock { if !closed { failure = error.description } }
        }
        for s in streams { if let s { inflateEnd(s); s.deallocate() } }
        close(fd)
        lock.withLock { closed = true }
    }

    private func update() throws(BenchError) {
        _ = try take(1)
        let count = Int(try u16())
        if profile.requestsEarly { request(incremental: true) }
        var rects = 0
        for _ in 0 ..< count {
            let x = Int(try u16()), y = Int(try u16()), w = Int(try u16()), h = Int(try u16())
            let encoding = Int32(bitPattern: try u32())
            if encoding == -224 { break } // LastRect
            rects += 1
            switch encoding {
            case 0: try raw(x, y, w, h)
            case 16: try zrle(x, y, w, h)
            case 7: try tight(x, y, w, h)
            case -223, -258, -257: break
            case -308:
                let screens = Int(try take(4)[0])
                _ = try take(screens * 16)
            default: throw BenchError("unexpected encoding \(encoding)")
            }
        }
        if !profile.requestsEarly { request(incremental: true) }
        let now = UInt64(EventLoopClock.now())
        lock.withLock {
            counters.updates += 1
            counters.rects += rects
            counters.bytes = totalBytes
            counters.lastUpdate = now
            if let p = probe, p.seen == nil, p.y < height, p.x < width, picture[p.y * width + p.x] == p.value {
                probe!.seen = now
            }
        }
    }

    private func clip(_ x: Int, _ y: Int, _ w: Int, _ h: Int) throws(BenchError) {
        guard x + w <= width, y + h <= height else { throw BenchError("rectangle \(w)x\(h)+\(x)+\(y) outside the frame") }
    }

    private func raw(_ x: Int, _ y: Int, _ w: Int, _ h: Int) throws(BenchError) {
        try clip(x, y, w, h)
        for row in 0 ..< h {
            var done = 0
            while done < w {
                try fill(4)
                let n = min(w - done, (end - start) / 4)
                let p = picture + (y + row) * width + x + done
                buffer.withUnsafeBytes { b in
                    for i in 0 ..< n { p[i] = b.load(fromByteOffset: start + i * 4, as: UInt32.self) & 0xffffff }
                }
                start += n * 4
                done += n
            }
        }
    }

    // MARK: ZRLE

    private func zrle(_ x: Int, _ y: Int, _ w: Int, _ h: Int) throws(BenchError) {
        try clip(x, y, w, h)
        let length = Int(try u32())
        try inflate(stream: 4, length)
        var r = Reader(inflated)
        for ty in stride(from: 0, to: h, by: 64) {
            let th = min(64, h - ty)
            for tx in stride(from: 0, to: w, by: 64) {
                let tw = min(64, w - tx)
                let sub = Int(try r.u8())
                let tile = picture + (y + ty) * width + x + tx, stride = width
                func put(_ i: Int, _ c: UInt32) { tile[i / tw * stride + i % tw] = c }
                switch sub {
                case 0: for i in 0 ..< tw * th { put(i, try r.cpixel()) }
                case 1: let c = try r.cpixel(); for i in 0 ..< tw * th { put(i, c) }
                case 2 ... 16:
                    var palette: [UInt32] = []
                    for _ in 0 ..< sub { palette.append(try r.cpixel()) }
                    let bits = sub == 2 ? 1 : sub <= 4 ? 2 : 4
                    for j in 0 ..< th {
                        var byte = 0, left = 0
                        for i in 0 ..< tw {
                            if left == 0 { byte = Int(try r.u8()); left = 8 }
                            left -= bits
                            let index = (byte >> left) & ((1 << bits) - 1)
                            guard index < palette.count else { throw BenchError("ZRLE palette index") }
                            put(j * tw + i, palette[index])
                        }
                    }
                case 128:
                    var i = 0
                    while i < tw * th {
                        let c = try r.cpixel()
                        let n = try r.runLength()
                        guard i + n <= tw * th else { throw BenchError("ZRLE run past the tile") }
                        for k in i ..< i + n { put(k, c) }
                        i += n
                    }
                case 130 ... 255:
                    var palette: [UInt32] = []
                    for _ in 0 ..< sub - 128 { palette.append(try r.cpixel()) }
                    var i = 0
                    while i < tw * th {
                        let b = Int(try r.u8())
                        guard b & 127 < palette.count else { throw BenchError("ZRLE palette index") }
                        let n = b & 128 != 0 ? try r.runLength() : 1
                        guard i + n <= tw * th else { throw BenchError("ZRLE run past the tile") }
                        for k in i ..< i + n { put(k, palette[b & 127]) }
                        i += n
                    }
                default: throw BenchError("ZRLE subencoding \(sub)")
                }
            }
        }
    }

    // MARK: Tight (lossless)

    private func tight(_ x: Int, _ y: Int, _ w: Int, _ h: Int) throws(BenchError) {
        try clip(x, y, w, h)
        var control = Int(try take(1)[0])
        for i in 0 ..< 4 where control & (1 << i) != 0 { if let s = streams[i] { inflateReset(s) } }
        control >>= 4
        func tpixel(_ b: [UInt8], _ o: Int) -> UInt32 { UInt32(b[o]) << 16 | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) }
        if control == 8 {
            let c = tpixel(try take(3), 0)
            for j in 0 ..< h { (picture + (y + j) * width + x).update(repeating: c, count: w) }
            return
        }
        guard control & 8 == 0 else { throw BenchError("Tight JPEG from a lossless server") }
        let stream = control & 3
        var filter = 0
        if control & 4 != 0 { filter = Int(try take(1)[0]) }
        var palette: [UInt32] = []
        var dataSize = w * h * 3
        switch filter {
        case 0: break
        case 1:
            let n = Int(try take(1)[0]) + 1
            let p = try take(n * 3)
            palette = (0 ..< n).map { tpixel(p, $0 * 3) }
            dataSize = n == 2 ? (w + 7) / 8 * h : w * h
        default: throw BenchError("Tight filter \(filter)")
        }
        let data: [UInt8]
        if dataSize < 12 {
            data = try take(dataSize)
        } else {
            var length = 0
            for k in 0 ..< 3 {
                let b = Int(try take(1)[0])
                length |= (b & 0x7f) << (7 * k)
                if b & 0x80 == 0 { break }
            }
            try inflate(stream: stream, length)
            data = inflated
        }
        guard data.count >= dataSize else { throw BenchError("Tight data short: \(data.count) of \(dataSize)") }
        for j in 0 ..< h {
            for i in 0 ..< w {
                let c: UInt32
                if palette.isEmpty {
                    c = tpixel(data, (j * w + i) * 3)
                } else if palette.count == 2 {
                    c = palette[Int(data[j * ((w + 7) / 8) + i / 8] >> (7 - UInt8(i % 8))) & 1]
                } else {
                    let index = Int(data[j * w + i])
                    guard index < palette.count else { throw BenchError("Tight palette index") }
                    c = palette[index]
                }
                picture[(y + j) * width + x + i] = c
            }
        }
    }

    /// Inflates `length` bytes from the socket through zlib stream `index`
    /// (Tight 0–3, ZRLE 4) into `inflated`.
    private func inflate(stream index: Int, _ length: Int) throws(BenchError) {
        let s: UnsafeMutablePointer<z_stream>
        if let existing = streams[index] { s = existing } else {
            s = .allocate(capacity: 1)
            s.initialize(to: z_stream())
            guard inflateInit_(s, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw BenchError("inflateInit") }
            streams[index] = s
        }
        inflated.removeAll(keepingCapacity: true)
        var left = length
        var out = [UInt8](repeating: 0, count: 1 << 16)
        while left > 0 {
            try fill(1)
            let n = min(left, end - start)
            let ok = buffer.withUnsafeMutableBytes { (b: UnsafeMutableRawBufferPointer) -> Bool in
                s.pointee.next_in = (b.baseAddress! + start).assumingMemoryBound(to: Bytef.self)
                s.pointee.avail_in = UInt32(n)
                repeat {
                    let produced: Int = out.withUnsafeMutableBytes { o in
                        s.pointee.next_out = o.baseAddress!.assumingMemoryBound(to: Bytef.self)
                        s.pointee.avail_out = UInt32(o.count)
                        let rc = CZlib.inflate(s, Z_SYNC_FLUSH)
                        return rc == Z_OK || rc == Z_BUF_ERROR || rc == Z_STREAM_END ? o.count - Int(s.pointee.avail_out) : -1
                    }
                    guard produced >= 0 else { return false }
                    inflated += out[0 ..< produced]
                } while s.pointee.avail_in > 0 || s.pointee.avail_out == 0
                return true
            }
            guard ok else { throw BenchError("inflate failed") }
            start += n
            left -= n
        }
    }

    // MARK: Reading

    /// Ensures at least `n` bytes (≤ the buffer) are buffered.
    private func fill(_ n: Int) throws(BenchError) {
        if end - start >= n { return }
        if start > 0 {
            buffer.withUnsafeMutableBytes { b in
                if end > start { memmove(b.baseAddress!, b.baseAddress! + start, end - start) }
            }
            end -= start
            start = 0
        }
        while end - start < n {
            let got = buffer.withUnsafeMutableBytes { b in recv(fd, b.baseAddress! + end, b.count - end, 0) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { throw BenchError("connection closed") }
            end += got
            totalBytes += got
        }
    }

    private func take(_ n: Int) throws(BenchError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(n)
        var left = n
        while left > 0 {
            try fill(min(left, buffer.count))
            let k = min(left, end - start)
            out += buffer[start ..< start + k]
            start += k
            left -= k
        }
        return out
    }

    private func skip(_ n: Int) throws(BenchError) {
        var left = n
        while left > 0 {
            try fill(1)
            let k = min(left, end - start)
            start += k
            left -= k
        }
    }

    private func u16() throws(BenchError) -> UInt16 { let b = try take(2); return UInt16(b[0]) << 8 | UInt16(b[1]) }
    private func u32() throws(BenchError) -> UInt32 {
        let b = try take(4)
        return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
    }

    /// Reads decompressed ZRLE data.
    private struct Reader {
        let bytes: [UInt8]
        var at = 0
        init(_ b: [UInt8]) { bytes = b }
        mutating func u8() throws(BenchError) -> UInt8 {
            guard at < bytes.count else { throw BenchError("ZRLE data short") }
            at += 1
            return bytes[at - 1]
        }
        /// CPIXEL of XRGB8888: the three low bytes, little-endian.
        mutating func cpixel() throws(BenchError) -> UInt32 {
            guard at + 3 <= bytes.count else { throw BenchError("ZRLE data short") }
            at += 3
            return UInt32(bytes[at - 3]) | UInt32(bytes[at - 2]) << 8 | UInt32(bytes[at - 1]) << 16
        }
        mutating func runLength() throws(BenchError) -> Int {
            var n = 1
            while true {
                let b = Int(try u8())
                n += b
                if b != 255 { return n }
            }
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The monotonic clock (ns), as the event loop reads it.
enum EventLoopClock {
    static func now() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }
}
