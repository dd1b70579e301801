#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Writes the bytes of `count` iovecs to the client's socket without
/// blocking: the number of bytes the socket took, or -1 (errno says why;
/// EAGAIN when it took nothing). Only a plain TCP transport offers it.
typealias DirectSend = (_ iov: UnsafePointer<iovec>, _ count: Int32) -> Int

/// What sessions share, on the server thread: the frame, its size as the
/// server last learned it, the encoders' scratch space, the password check
/// and the event sink. Only the server thread (or a test or fuzzer that owns
/// it) touches it.
final class SessionContext {
    /// The most pixels read from the frame at once (one band of one rectangle):
    /// rectangles are cut so that none is larger, except a single row of a
    /// frame wider than this.
    static let bandPixels = 32768

    let source: any RFBFrameSource
    let desktopName: [UInt8]
    let passwordRequired: Bool
    var frameWidth: Int
    var frameHeight: Int
    let encoders = Encoders()
    /// Output buffers for every client's queue (see `BufferPool`).
    let buffers = BufferPool(maxBuffers: 4)
    var checkPassword: (_ challenge: [UInt8], _ response: [UInt8]) -> AuthOutcome
    var emit: (RFBEvent) -> Void
    let log: Logger
    private var band: UnsafeMutablePointer<UInt32>
    private var bandCapacity = 0

    enum AuthOutcome { case ok, wrongPassword, noPassword, expired }

    init(source: any RFBFrameSource, desktopName: String, passwordRequired: Bool, log: Logger,
         checkPassword: @escaping (_ challenge: [UInt8], _ response: [UInt8]) -> AuthOutcome,
         emit: @escaping (RFBEvent) -> Void) {
        self.source = source
        self.desktopName = Array(desktopName.utf8.prefix(1024))
        self.passwordRequired = passwordRequired
        self.log = log
        self.checkPassword = checkPassword
        self.emit = emit
        (frameWidth, frameHeight) = Self.currentSize(of: source)
        band = .allocate(capacity: 1)
    }

    deinit {
        band.deallocate()
        iov.deallocate()
    }

    static func currentSize(of source: any RFBFrameSource) -> (Int, Int) {
        source.withPixels { _, w, h, _ in (min(max(w, 0), 65535), min(max(h, 0), 65535)) }
    }

    /// Appends `r` of the frame to `out` as Raw pixel data in the server's own
    /// format (XRGB8888 little-endian, the padding byte cleared): one pass
    /// from the frame into the output, under the frame's lock (held only for
    /// the copy). Outside the frame reads as black, as in `readBand`.
    func appendRawXRGB(_ r: RFBRect, to out: ByteBuffer) {
        source.withPixels { pixels, fw, fh, stride in
            Self.copyRawXRGB(r, from: pixels, fw, fh, stride, to: out)
        }
    }

    private static func copyRawXRGB(_ r: RFBRect, from pixels: UnsafeRawPointer, _ fw: Int, _ fh: Int, _ stride: Int,
                                    to out: ByteBuffer) {
        let rowBytes = r.width * 4
        out.appendUninitialized(rowBytes * r.height) { dst in
            let usable = fw > 0 && fh > 0 && stride >= fw * 4
            for row in 0..<r.height {
                let d = dst + row * rowBytes
                let sy = r.y + row
                var done = 0
                if usable && sy < fh && r.x < fw {
                    done = min(r.width, fw - r.x)
                    let src = pixels + sy * stride + r.x * 4
                    for i in 0..<done {
                        let p = src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                        d.storeBytes(of: p & UInt32(0x00ff_ffff).littleEndian, toByteOffset: 4 * i, as: UInt32.self)
                    }
                }
                if done < r.width { (d + 4 * done).initializeMemory(as: UInt8.self, repeating: 0, count: 4 * (r.width - done)) }
            }
        }
    }

    /// The most rows one direct send takes (one iovec each, plus the bytes before them).
    static let maxDirectRows = 64
    private let iov = UnsafeMutablePointer<iovec>.allocate(capacity: SessionContext.maxDirectRows + 1)

    /// Sends the bytes of `pending` and then `r` of the frame as Raw pixel
    /// data in the server's own format, the rows straight from the frame:
    /// one sendmsg, under the frame's lock (held for that call, which does
    /// not block: the kernel's copy of the rows is the only pass over them).
    /// What the socket does not take stays in (or is copied into) `pending`,
    /// in order. The padding byte goes out as the frame has it (as QEMU's
    /// Raw does): clients read only the bits the pixel format gives colour.
    /// Returns false once the socket took less than everything (the caller
    /// then stops trying until its queue is empty again). A rectangle not
    /// wholly inside the frame (it shrank since the update was planned) is
    /// appended as `appendRawXRGB` does.
    func sendRawXRGB(_ r: RFBRect, after pending: ByteBuffer, send: DirectSend) -> Bool {
        let rowBytes = r.width * 4
        return source.withPixels { pixels, fw, fh, stride -> Bool in
            guard r.width > 0, r.height > 0, r.height <= Self.maxDirectRows, fw > 0, fh > 0, stride >= fw * 4,
                  r.x >= 0, r.y >= 0, r.x + r.width <= fw, r.y + r.height <= fh else {
                Self.copyRawXRGB(r, from: pixels, fw, fh, stride, to: pending)
                return true
            }
            let first = pixels + r.y * stride + r.x * 4
            iov[0] = iovec(iov_base: UnsafeMutableRawPointer(mutating: pending.bytes.baseAddress), iov_len: pending.count)
            var n = 1
            if stride == rowBytes {
                iov[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: first), iov_len: rowBytes * r.height)
                n = 2
            } else {
                for row in 0..<r.height {
                    iov[n] = iovec(iov_base: UnsafeMutableRawPointer(mutating: first + row * stride), iov_len: rowBytes)
                    n += 1
                }
            }
            let pixelBytes = rowBytes * r.height
            let taken = max(send(iov, Int32(n)), 0)
            if taken >= pending.count + pixelBytes {
                pending.removeFirst(pending.count)
                return true
            }
            // The rest of the rectangle, from the first byte the socket did not take.
            var skip = 0
            if taken < pending.count {
                pending.removeFirst(taken)
            } else {
                skip = taken - pending.count
                pending.removeFirst(pending.count)
            }
            pending.appendUninitialized(pixelBytes - skip) { dst in
                var d = dst
                var row = skip / rowBytes
                var offset = skip % rowBytes
                while row < r.height {
                    let length = rowBytes - offset
                    d.copyMemory(from: first + row * stride + offset, byteCount: length)
                    d += length
                    offset = 0
                    row += 1
                }
            }
            return false
        }
    }

    /// Copies `r` of the frame into the band scratch, translated, under the
    /// frame's lock (held only for the copy). What lies outside the frame
    /// (it may have shrunk since the update was planned) reads as black.
    func readBand(_ r: RFBRect, _ translator: PixelTranslator) -> UnsafeMutablePointer<UInt32> {
        let n = r.width * r.height
        if n > bandCapacity {
            band.deallocate()
            band = .allocate(capacity: n)
            bandCapacity = n
        }
        let dst = band
        source.withPixels { pixels, fw, fh, stride in
            let usable = fw > 0 && fh > 0 && stride >= fw * 4 && stride % 4 == 0
                && Int(bitPattern: pixels) % 4 == 0
            for row in 0..<r.height {
                let d = dst + row * r.width
                let sy = r.y + row
                var done = 0
                if usable && sy < fh && r.x < fw {
                    done = min(r.width, fw - r.x)
                    let src = (pixels + sy * stride + r.x * 4).assumingMemoryBound(to: UInt32.self)
                    translator.translate(src, into: d, count: done)
                }
                if done < r.width { (d + done).update(repeating: translator.translate(0), count: r.width - done) }
            }
        }
        return dst
    }
}

/// One client's protocol state, from the version handshake to the end:
/// an incremental parser on the way in, update planning and encoding on the
/// way out. The connection feeds it bytes and writes what it queues in
/// `out` (which is also how tests and the fuzzer drive it). The one
/// exception is `directSend`: Raw rectangles in the server's own format
/// then go from the frame to the socket while `out` is empty.
///
/// Updates follow QEMU: a FramebufferUpdateRequest arms one update; an
/// update is started only when one is armed and something in the client's
/// area is dirty; a non-incremental request marks its area dirty.
///
/// Every FramebufferUpdate answers one request, pseudo-rectangles included:
/// the acknowledgements (extended key event, pointer type, ExtendedDesktopSize,
/// desktop size changes) go first in the next update, or alone in one when
/// nothing is dirty, as libvncserver and TigerVNC's server send them. QEMU
/// sends them as extra, unrequested updates; a client that counts updates
/// against its requests to know when a pixel format change takes effect
/// (TigerVNC: the update after the one in progress when it asked) then
/// decodes an update in the wrong format, which it does against a server
/// that answers as fast as this one. SetColourMapEntries is a message of its
/// own, before the next update. An update is encoded one batch of
/// rectangles at a time, and only while `out` holds less than
/// `outputThreshold`: a client that does not read stops costing anything but
/// its dirty tiles.
final class RFBSession {
    static let outputThreshold = 256 << 10
    /// Rectangles per update at most (FramebufferUpdate counts them in 16 bits).
    static let maxRects = 65535
    /// A batch of rectangles goes out as one chunk of about this size.
    static let chunkTarget = 64 << 10

    enum Phase: Equatable {
        case version, securityType, vncAuth, clientInit, normal, closing
        /// VeNCrypt: waiting for the client's version (2 bytes), then its subtype (4 bytes).
        case vencryptVersion, vencryptSubtype
        /// VeNCrypt: the ack is queued; the connection flushes it, then runs the
        /// TLS handshake and calls `tlsEstablished`. Input meanwhile belongs to TLS.
        case tlsHandshake
    }

    /// VeNCrypt subtypes (rfbproto, "VeNCrypt"): X.509 certificate, then no auth / VNC auth.
    static let vencryptX509None: UInt32 = 260
    static let vencryptX509VNC: UInt32 = 261

    let context: SessionContext
    let out: OutputQueue
    private(set) var phase = Phase.version
    /// Why the session ended (phase == .closing): sent, then the connection closes.
    private(set) var closeReason: String?
    private var handshake: [UInt8] = []
    private(set) var minor = 8
    private var challenge: [UInt8] = []
    private var parser = ClientMessageParser()
    /// Security type 19 (VeNCrypt X.509) is offered instead of None/VNC.
    let vencrypt: Bool
    /// Bytes that arrived after the VeNCrypt subtype: the start of the TLS handshake.
    private(set) var tlsPrefix: [UInt8] = []

    // Negotiated state.
    private(set) var format = RFBPixelFormat.xrgb8888
    private(set) var encodings: [Int32] = []
    private var wantsDesktopSize = false
    private var wantsExtendedDesktopSize = false
    private var compressLevel: Int32 = 1
    private(set) var clientWidth = 0
    private(set) var clientHeight = 0

    // Update state.
    private var dirty = DirtyGrid(width: 0, height: 0)
    private(set) var updateRequested = false
    private var job: UpdateJob?
    // Messages owed between updates (flags: repeats merge into one).
    private var owesColourMap = false
    private var owesExtendedKeyAck = false
    private var owesPointerTypeAck = false
    private var owesDesktopSizeState = false
    private var owesDesktopSizeReplies = 0
    private var sizeChanged = false

    /// Set by a plain TCP connection (no TLS, no WebSocket): Raw rectangles
    /// in the server's own format are then written straight from the frame
    /// while nothing is queued (`SessionContext.sendRawXRGB`), instead of
    /// being copied into `out` first.
    var directSend: DirectSend?

    private var zlibStream: Deflater?
    private var zrleStream: Deflater?
    private var tightStreams: (copy: Deflater, palette: Deflater)?

    /// Statistics for tests and logs.
    private(set) var updatesSent = 0
    private(set) var rectsSent = 0
    private(set) var lastEncoding: Int32?

    private struct UpdateJob {
        var rects: [RFBRect]
        /// Pseudo-rectangles (headers and payload) that go first in the update.
        var pseudo: (count: Int, bytes: [UInt8])
        var headerWritten = false
        var next = 0
        let encoding: Int32
        let translator: PixelTranslator
        let pixel: PixelLayout
        let cpixel: PixelLayout
        let tpixel: PixelLayout
    }

    /// The connection this session serves (`RFBClientInfo.id`), carried in its events.
    let client: UInt64

    /// `vencrypt`: offer VeNCrypt (the connection provides the TLS).
    init(context: SessionContext, out: OutputQueue = OutputQueue(), client: UInt64 = 0, vencrypt: Bool = false) {
        self.context = context
        self.client = client
        self.vencrypt = vencrypt
        self.out = out
        let chunk = out.makeChunk()
        chunk.append(Array("RFB 003.008\n".utf8))
        out.enqueue(chunk)
    }

    /// Whether the connection should read more input now: not while output
    /// is backed up (so a client cannot make the server queue without bound).
    var wantsInput: Bool { phase != .closing && out.count < Self.outputThreshold }

    var isUpdating: Bool { job != nil }

    // MARK: Input

    /// Takes bytes from the client. Throws (after queueing any goodbye) when
    /// the client must be closed.
    func receive(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) {
        var i = 0
        while i < bytes.count {
            switch phase {
            case .closing:
                return
            case .normal:
                do {
                    try parser.feed(UnsafeRawBufferPointer(rebasing: bytes[i...])) { (m: ClientMessage) throws(ProtocolError) in
                        try self.handle(m)
                    }
                } catch {
                    phase = .closing
                    closeReason = closeReason ?? error.description
                    throw error
                }
                return
            case .version:
                i += collect(bytes, from: i, need: 12)
                if handshake.count == 12 { try version() }
            case .securityType:
                i += collect(bytes, from: i, need: 1)
                if handshake.count == 1 { try securityType() }
            case .vncAuth:
                i += collect(bytes, from: i, need: 16)
                if handshake.count == 16 { try vncAuth() }
            case .clientInit:
                i += collect(bytes, from: i, need: 1)
                if handshake.count == 1 { clientInit() }
            case .vencryptVersion:
                i += collect(bytes, from: i, need: 2)
                if handshake.count == 2 { try vencryptVersion() }
            case .vencryptSubtype:
                i += collect(bytes, from: i, need: 4)
                if handshake.count == 4 { try chooseSubtype() }
            case .tlsHandshake:
                // A client that did not wait for the ack: this is TLS already.
                guard tlsPrefix.count + bytes.count - i <= 1 << 16 else {
                    try fail("more than 64 KiB before the TLS handshake started")
                    return
                }
                tlsPrefix += UnsafeRawBufferPointer(rebasing: bytes[i...])
                return
            }
        }
    }

    /// `receive` for an array (tests, the fuzzer).
    func receive(_ bytes: [UInt8]) throws(ProtocolError) {
        var failure: ProtocolError?
        bytes.withUnsafeBytes { raw in
            do throws(ProtocolError) { try receive(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    private func collect(_ bytes: UnsafeRawBufferPointer, from i: Int, need: Int) -> Int {
        let take = min(need - handshake.count, bytes.count - i)
        handshake.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<i + take]))
        return take
    }

    private func send(_ body: (ByteBuffer) -> Void) {
        let chunk = out.makeChunk()
        body(chunk)
        out.enqueue(chunk)
    }

    /// Ends the session after queueing `goodbye`.
    private func fail(_ reason: String, goodbye: ((ByteBuffer) -> Void)? = nil) throws(ProtocolError) {
        if let goodbye { send(goodbye) }
        phase = .closing
        closeReason = reason
        throw ProtocolError(reason)
    }

    private func version() throws(ProtocolError) {
        let v = handshake
        handshake.removeAll()
        func digits(_ r: Range<Int>) -> Int? {
            var n = 0
            for k in r {
                guard v[k] >= 48 && v[k] <= 57 else { return nil }
                n = n * 10 + Int(v[k] - 48)
            }
            return n
        }
        guard Array(v[0..<4]) == Array("RFB ".utf8), v[7] == UInt8(ascii: "."), v[11] == 10,
              let major = digits(4..<7), let minorVersion = digits(8..<11) else {
            try fail("malformed protocol version") { $0.u32(0) }
            return
        }
        // QEMU's rule: 3.3, 3.7 and 3.8; 3.4 and 3.5 (broken clients) mean 3.3.
        guard major == 3, [3, 4, 5, 7, 8].contains(minorVersion) else {
            try fail("unsupported protocol version \(major).\(minorVersion)") { $0.u32(0) }
            return
        }
        minor = minorVersion == 4 || minorVersion == 5 ? 3 : minorVersion
        let type = offeredSecurityType
        if minor == 3 && vencrypt {
            // RFB 3.3 lets the server pick one type of 1 or 2 only (QEMU refuses too).
            let text = Array("VeNCrypt (TLS) needs RFB 3.7 or later".utf8)
            try fail("protocol version 3.3 cannot do VeNCrypt") { b in b.u32(0); b.u32(UInt32(text.count)); b.append(text) }
            return
        }
        if minor == 3 {
            send { $0.u32(UInt32(type)) }
            if type == 1 { phase = .clientInit } else { startVNCAuth() }
        } else {
            send { $0.u8(1); $0.u8(type) }
            phase = .securityType
        }
    }

    private func securityType() throws(ProtocolError) {
        let chosen = handshake[0]
        handshake.removeAll()
        let offered = offeredSecurityType
        guard chosen == offered else {
            try authFailed("client chose security type \(chosen), offered \(offered)")
            return
        }
        if chosen == 19 {
            send { $0.u8(0); $0.u8(2) } // VeNCrypt 0.2
            phase = .vencryptVersion
        } else if chosen == 1 {
            if minor >= 8 { send { $0.u32(0) } }
            phase = .clientInit
        } else {
            startVNCAuth()
        }
    }

    /// 19 VeNCrypt, 2 VNC authentication or 1 None.
    private var offeredSecurityType: UInt8 { vencrypt ? 19 : context.passwordRequired ? 2 : 1 }

    /// The VeNCrypt subtype offered: X509Vnc with a password, X509None without.
    var vencryptSubtype: UInt32 { context.passwordRequired ? Self.vencryptX509VNC : Self.vencryptX509None }

    private func vencryptVersion() throws(ProtocolError) {
        let v = handshake
        handshake.removeAll()
        guard v == [0, 2] else {
            try fail("unsupported VeNCrypt version \(v[0]).\(v[1]) (0.2 only)") { $0.u8(1) }
            return
        }
        let subtype = vencryptSubtype
        send { b in b.u8(0); b.u8(1); b.u32(subtype) }
        phase = .vencryptSubtype
    }

    private func chooseSubtype() throws(ProtocolError) {
        let chosen = UInt32(handshake[0]) << 24 | UInt32(handshake[1]) << 16 | UInt32(handshake[2]) << 8 | UInt32(handshake[3])
        handshake.removeAll()
        guard chosen == vencryptSubtype else {
            try fail("client chose VeNCrypt subtype \(chosen), offered \(vencryptSubtype)") { $0.u8(0) }
            return
        }
        send { $0.u8(1) }
        phase = .tlsHandshake
    }

    /// The connection finished the TLS handshake: the subtype's authentication follows.
    func tlsEstablished() {
        guard phase == .tlsHandshake else { return }
        tlsPrefix = []
        if vencryptSubtype == Self.vencryptX509None {
            send { $0.u32(0) } // SecurityResult OK, as QEMU sends for X509None
            phase = .clientInit
        } else {
            startVNCAuth()
        }
    }

    /// Takes the bytes that arrived after the subtype (they go to TLS first).
    func takeTLSPrefix() -> [UInt8] {
        defer { tlsPrefix = [] }
        return tlsPrefix
    }

    private func startVNCAuth() {
        var g = SystemRandomNumberGenerator()
        challenge = (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }
        send { $0.append(challenge) }
        phase = .vncAuth
    }

    private func vncAuth() throws(ProtocolError) {
        let response = handshake
        handshake.removeAll()
        switch context.checkPassword(challenge, response) {
        case .ok:
            send { $0.u32(0) }
            phase = .clientInit
        case .wrongPassword: try authFailed("wrong password")
        case .noPassword: try authFailed("no password is set")
        case .expired: try authFailed("the password has expired")
        }
    }

    private func authFailed(_ reason: String) throws(ProtocolError) {
        let minor = self.minor
        try fail("authentication failed: \(reason)") { b in
            b.u32(1)
            if minor >= 8 {
                let text = Array("Authentication failed".utf8)
                b.u32(UInt32(text.count))
                b.append(text)
            }
        }
    }

    private func clientInit() {
        handshake.removeAll()
        // The shared flag is ignored: connections are always shared, so a
        // person and a CI harness can watch at once (QEMU's share=ignore).
        clientWidth = context.frameWidth
        clientHeight = context.frameHeight
        dirty.reset(width: context.frameWidth, height: context.frameHeight, dirty: true)
        send { b in
            b.u16(UInt16(clientWidth))
            b.u16(UInt16(clientHeight))
            RFBPixelFormat.xrgb8888.write(to: b)
            b.u32(UInt32(context.desktopName.count))
            b.append(context.desktopName)
        }
        phase = .normal
    }

    // MARK: Messages

    private func handle(_ message: ClientMessage) throws(ProtocolError) {
        switch message {
        case .setPixelFormat(let requested):
            switch requested.validated() {
            case .failure(let e):
                try fail("unsupported pixel format: \(e)")
            case .success(let f):
                format = f
                owesColourMap = !f.trueColour
                dirty.markAll()
                context.log.debug("client pixel format \(f)")
            }
        case .setEncodings(let list):
            setEncodings(list)
        case .framebufferUpdateRequest(let incremental, let x, let y, let w, let h):
            if !incremental {
                dirty.mark(RFBRect(x: Int(x), y: Int(y), width: Int(w), height: Int(h)))
                if wantsExtendedDesktopSize { owesDesktopSizeState = true }
            }
            updateRequested = true
        case .keyEvent(let down, let keysym):
            context.emit(.key(keysym: keysym, down: down, scancode: nil, client: client))
        case .pointerEvent(let buttons, let x, let y):
            let px = min(Int(x), max(context.frameWidth - 1, 0))
            let py = min(Int(y), max(context.frameHeight - 1, 0))
            context.emit(.pointer(buttons: buttons, x: px, y: py, client: client))
        case .clientCutText:
            break
        case .qemuExtendedKeyEvent(let down, let keysym, let keycode):
            context.emit(.key(keysym: keysym, down: down, scancode: keycode, client: client))
        case .setDesktopSize:
            // The guest decides its size: every request is refused, as the
            // protocol requires, with an ExtendedDesktopSize rectangle.
            if wantsExtendedDesktopSize { owesDesktopSizeReplies = min(owesDesktopSizeReplies + 1, 1 << 16) }
        }
    }

    private func setEncodings(_ list: [Int32]) {
        encodings = []
        wantsDesktopSize = false
        wantsExtendedDesktopSize = false
        compressLevel = 1
        for e in list {
            switch e {
            case Encoding.raw, Encoding.rre, Encoding.coRRE, Encoding.hextile, Encoding.zlib,
                 Encoding.tight, Encoding.zrle, Encoding.trle:
                if !encodings.contains(e) { encodings.append(e) }
            case Encoding.desktopSize: wantsDesktopSize = true
            case Encoding.extendedDesktopSize: wantsExtendedDesktopSize = true
            case Encoding.qemuExtendedKeyEvent: owesExtendedKeyAck = true
            case Encoding.qemuPointerTypeChange: owesPointerTypeAck = true
            case Encoding.tightCompressLevel0...(Encoding.tightCompressLevel0 + 9):
                compressLevel = max(1, e - Encoding.tightCompressLevel0)
            default:
                break // quality levels (no JPEG is ever sent), cursors, LED state, …
            }
        }
        if (wantsDesktopSize || wantsExtendedDesktopSize)
            && (clientWidth != context.frameWidth || clientHeight != context.frameHeight) {
            sizeChanged = true
        }
        context.log.debug("client encodings \(list.map(Encoding.name).joined(separator: ","))")
    }

    // MARK: Frame changes (from the server)

    /// The frame changed in `r`.
    func markDirty(_ r: RFBRect) {
        guard phase == .normal else { return }
        dirty.mark(r)
    }

    /// The frame has a new size (already in the context).
    func frameResized() {
        guard phase == .normal else { return }
        dirty.reset(width: context.frameWidth, height: context.frameHeight, dirty: true)
        if wantsDesktopSize || wantsExtendedDesktopSize {
            sizeChanged = true
        }
        // Without either, the client keeps its size and gets what fits (QEMU).
    }

    // MARK: Updates

    /// Queues owed messages and encodes updates while the output has room.
    func pump() {
        guard phase == .normal else { return }
        while out.count < Self.outputThreshold {
            if job == nil {
                sendColourMapIfOwed()
                guard updateRequested else { return }
                let pseudo = takeOwedPseudoRects()
                let w = min(clientWidth, context.frameWidth)
                let h = min(clientHeight, context.frameHeight)
                guard pseudo.count > 0 || dirty.hasDirty(within: w, h) else { return }
                startUpdate(width: w, height: h, pseudo: pseudo)
                guard job != nil else { return }
            }
            encodeBatch()
        }
    }

    private func sendColourMapIfOwed() {
        guard owesColourMap else { return }
        owesColourMap = false
        send { b in
            b.u8(MessageType.setColourMapEntries)
            b.u8(0)
            b.u16(0)
            b.u16(256)
            // BGR233: index = b << 6 | g << 3 | r.
            for i in 0..<256 {
                b.u16(UInt16((i & 7) * 65535 / 7))
                b.u16(UInt16(((i >> 3) & 7) * 65535 / 7))
                b.u16(UInt16(((i >> 6) & 3) * 65535 / 3))
            }
        }
    }

    /// The pseudo-rectangles owed, for the front of the next update: a size
    /// change (which also sets the client's size for the pixels after it),
    /// then acknowledgements. At most 16 SetDesktopSize refusals per update.
    private func takeOwedPseudoRects() -> (count: Int, bytes: [UInt8]) {
        let b = ByteBuffer(capacity: 64)
        var count = 0
        func rect(x: Int, y: Int, width: Int, height: Int, encoding: Int32) {
            b.rectHeader(x: x, y: y, width: width, height: height, encoding: encoding)
            count += 1
        }
        func extendedDesktopSize(reason: Int, status: Int) {
            rect(x: reason, y: status, width: clientWidth, height: clientHeight, encoding: Encoding.extendedDesktopSize)
            b.u8(1); b.u8(0); b.u8(0); b.u8(0)          // one screen
            b.u32(0)                                    // id
            b.u16(0); b.u16(0)                          // x, y
            b.u16(UInt16(clientWidth)); b.u16(UInt16(clientHeight))
            b.u32(0)                                    // flags
        }
        if owesExtendedKeyAck {
            owesExtendedKeyAck = false
            rect(x: 0, y: 0, width: context.frameWidth, height: context.frameHeight, encoding: Encoding.qemuExtendedKeyEvent)
        }
        if owesPointerTypeAck {
            owesPointerTypeAck = false
            // x = 1: absolute (the vkbd pointer is absolute).
            rect(x: 1, y: 0, width: context.frameWidth, height: context.frameHeight, encoding: Encoding.qemuPointerTypeChange)
        }
        if sizeChanged {
            sizeChanged = false
            clientWidth = context.frameWidth
            clientHeight = context.frameHeight
            owesDesktopSizeState = false
            if wantsExtendedDesktopSize {
                extendedDesktopSize(reason: 0, status: 0)
            } else {
                rect(x: 0, y: 0, width: clientWidth, height: clientHeight, encoding: Encoding.desktopSize)
            }
            dirty.markAll()
        }
        if owesDesktopSizeState {
            owesDesktopSizeState = false
            extendedDesktopSize(reason: 0, status: 0)
        }
        var replies = 0
        while owesDesktopSizeReplies > 0 && replies < 16 {
            owesDesktopSizeReplies -= 1
            replies += 1
            extendedDesktopSize(reason: 1, status: 1) // client request, administratively prohibited
        }
        return (count, Array(b.bytes))
    }

    /// The first encoding in the client's list that suits its pixel format.
    private func chooseEncoding() -> Int32 {
        for e in encodings {
            switch e {
            case Encoding.zrle, Encoding.trle: if format.cpixelLayout != nil { return e }
            case Encoding.tight: if format.tpixelLayout != nil { return e }
            default: return e
            }
        }
        return Encoding.raw
    }

    private func startUpdate(width: Int, height: Int, pseudo: (count: Int, bytes: [UInt8])) {
        let encoding = chooseEncoding()
        let maxPixelRects = Self.maxRects - pseudo.count
        let areas = dirty.hasDirty(within: width, height) ? dirty.take(within: width, height, limit: 4096) : []
        var rects: [RFBRect] = []
        for a in areas {
            let maxWidth = encoding == Encoding.tight ? 2048 : encoding == Encoding.coRRE ? 255 : a.width
            var x = a.x
            while x < a.maxX {
                let w = min(maxWidth, a.maxX - x)
                var rows = max(1, min(64, SessionContext.bandPixels / w))
                if rows >= 16 { rows -= rows % 16 }
                var y = a.y
                while y < a.maxY {
                    let h = min(rows, a.maxY - y)
                    let r = RFBRect(x: x, y: y, width: w, height: h)
                    if rects.count < maxPixelRects { rects.append(r) } else { dirty.mark(r) }
                    y += h
                }
                x += w
            }
        }
        guard !rects.isEmpty || pseudo.count > 0 else { return }
        updateRequested = false
        if encoding != lastEncoding {
            context.log.debug("client update encoding \(Encoding.name(encoding)) for \(format)")
        }
        job = UpdateJob(rects: rects, pseudo: pseudo, encoding: encoding, translator: PixelTranslator(format),
                        pixel: format.pixelLayout, cpixel: format.cpixelLayout ?? format.pixelLayout,
                        tpixel: format.tpixelLayout ?? format.pixelLayout)
        lastEncoding = encoding
    }

    private func encodeBatch() {
        guard var j = job else { return }
        // Room for the batch and the band that ends it: no regrowth.
        let chunk = out.makeChunk(capacity: Self.chunkTarget + SessionContext.bandPixels * 4 + 64)
        if !j.headerWritten {
            chunk.updateHeader(rects: j.pseudo.count + j.rects.count)
            chunk.append(j.pseudo.bytes)
            j.headerWritten = true
        }
        let e = context.encoders
        let level = compressLevel
        // Sent straight from the frame in this batch (counts towards its bounds).
        var sentDirectly = 0
        var direct = out.isEmpty ? directSend : nil
        while j.next < j.rects.count {
            let r = j.rects[j.next]
            if j.encoding == Encoding.raw && j.translator.kind == .xrgb && j.pixel == .u32le {
                // The server's own format: straight from the frame to the socket
                // while it takes everything, else into the output.
                chunk.rectHeader(x: r.x, y: r.y, width: r.width, height: r.height, encoding: Encoding.raw)
                if let send = direct {
                    let before = chunk.count + r.width * r.height * 4
                    if !context.sendRawXRGB(r, after: chunk, send: send) { direct = nil }
                    sentDirectly += before - chunk.count
                } else {
                    context.appendRawXRGB(r, to: chunk)
                }
            } else {
                let v = UnsafePointer(context.readBand(r, j.translator))
                switch j.encoding {
                case Encoding.rre, Encoding.coRRE:
                    e.rre(v, x: r.x, y: r.y, width: r.width, height: r.height, layout: j.pixel,
                          compact: j.encoding == Encoding.coRRE, out: chunk)
                case Encoding.hextile:
                    e.hextile(v, x: r.x, y: r.y, width: r.width, height: r.height, layout: j.pixel, out: chunk)
                case Encoding.zlib:
                    let s = zlibStream ?? Deflater(level: level)
                    zlibStream = s
                    e.zlib(v, x: r.x, y: r.y, width: r.width, height: r.height, layout: j.pixel, stream: s, level: level, out: chunk)
                case Encoding.tight:
                    let s = tightStreams ?? (Deflater(level: level), Deflater(level: level))
                    tightStreams = s
                    e.tight(v, x: r.x, y: r.y, width: r.width, height: r.height, layout: j.tpixel, streams: s, level: level, out: chunk)
                case Encoding.zrle:
                    let s = zrleStream ?? Deflater(level: level)
                    zrleStream = s
                    e.zrle(v, x: r.x, y: r.y, width: r.width, height: r.height, layout: j.cpixel, stream: s, level: level, out: chunk)
                case Encoding.trle:
                    e.trle(v, x: r.x, y: r.y, width: r.width, height: r.height, layout: j.cpixel, out: chunk)
                default:
                    e.raw(v, x: r.x, y: r.y, width: r.width, height: r.height, layout: j.pixel, out: chunk)
                }
            }
            // Every rectangle, the direct path's too, counts towards the batch's bounds below.
            j.next += 1
            rectsSent += 1
            if chunk.count + sentDirectly >= Self.chunkTarget || out.count + chunk.count >= Self.outputThreshold { break }
        }
        out.enqueue(chunk)
        if j.next == j.rects.count {
            job = nil
            updatesSent += 1
        } else {
            job = j
        }
    }
}
