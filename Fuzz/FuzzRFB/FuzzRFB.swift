// libFuzzer target: the VNC server's protocol code, without sockets, on any bytes.
//
// Input: byte 0 picks what is fuzzed:
//   0–199   an RFB session (the server's side of one connection): bit 0 of
//           byte 0 says whether a valid 3.8 handshake is prepended, bit 1
//           whether VNC authentication is required, bit 2 whether VeNCrypt
//           is offered (the handshake then negotiates it up to TLS). Then
//           steps, each a byte: low 3 bits choose feed N client bytes (N from
//           the next byte), let the client read everything, resize the frame,
//           mark a rectangle dirty, finish TLS (as the connection would once
//           its handshake is done), or produce updates without the client reading.
//           Bit 3 gives the session a direct path to its "socket" (as a plain
//           TCP connection does: Raw straight from the frame) that takes, call
//           after call, what the next three bytes say (0 nothing, 255
//           everything, else that many times 97 bytes); it reads every byte
//           it is offered, so ASan sees any iovec outside the frame.
//   200–239 the WebSocket decoder (frames) then, from byte 1 on, the same
//           bytes as an HTTP Upgrade request.
//   240–255 the client-message parser: whole input, then byte by byte; both
//           must report the same messages.
// Invariants: nothing traps; the output a non-reading client holds stays
// under the session's bound; updates never describe rectangles outside the
// client's framebuffer (checked by a small decoder of the update headers for
// raw rectangles).
#if canImport(Glibc)
import Glibc
#endif
import FuzzSupport
@testable import RFB
import Support

/// A frame source that never changes its pixels (it can change its size).
final class FuzzFrame: RFBFrameSource, @unchecked Sendable {
    var width = 48
    var height = 40
    var pixels = [UInt32](repeating: 0x00a1_b2c3, count: 4096 * 4)

    func withPixels<R>(_ body: (UnsafeRawPointer, Int, Int, Int) -> R) -> R {
        pixels.withUnsafeBytes { body($0.baseAddress!, width, height, width * 4) }
    }
}

/// Every byte the direct path offers is read into this (so it is really read).
nonisolated(unsafe) var directSink: UInt8 = 0

let outputBound = RFBSession.outputThreshold + RFBSession.chunkTarget + 2 * SessionContext.bandPixels * 4 + 65536

/// Shared by every input (only sessions are new each time): building a frame
/// and the encoders' scratch for each input would dominate the run time.
let sharedFrame: FuzzFrame = {
    let f = FuzzFrame()
    for i in 0..<f.pixels.count { f.pixels[i] = UInt32(truncatingIfNeeded: i &* 2_654_435_761) }
    return f
}()
nonisolated(unsafe) let sharedContexts: [SessionContext] = [false, true].map { password in
    SessionContext(source: sharedFrame, desktopName: "fuzz", passwordRequired: password, log: Log.logger("fuzz"),
                   checkPassword: { c, r in vncAuthResponse(challenge: c, password: [1, 2, 3]) == r ? .ok : .wrongPassword },
                   emit: { _ in })
}

func fuzzSession(_ input: inout FuzzInput, handshake: Bool, password: Bool, vencrypt: Bool, direct: Bool) {
    let frame = sharedFrame
    frame.width = 48
    frame.height = 40
    let context = sharedContexts[password ? 1 : 0]
    context.frameWidth = 48
    context.frameHeight = 40
    let session = RFBSession(context: context, vencrypt: vencrypt)
    if direct {
        let takes = [input.u8(), input.u8(), input.u8()]
        var calls = 0
        session.directSend = { iov, count in
            var offered = 0
            // Called under the frame's lock, from within withPixels: the frame's
            // storage is the pixel array; what it shows is its first height rows.
            let shown = frame.pixels.withUnsafeBytes { p in
                (UInt(bitPattern: p.baseAddress), UInt(bitPattern: p.baseAddress) + UInt(frame.height * frame.width * 4),
                 UInt(bitPattern: p.baseAddress) + UInt(p.count))
            }
            for i in 0..<Int(count) {
                let v = UnsafeRawBufferPointer(start: iov[i].iov_base, count: iov[i].iov_len)
                let lo = UInt(bitPattern: v.baseAddress), hi = lo + UInt(v.count)
                require(hi <= shown.0 || lo >= shown.2 || (lo >= shown.0 && hi <= shown.1),
                        "iovec \(i) of \(count) (\(v.count) bytes) reaches past the frame's \(frame.width)x\(frame.height) pixels")
                for b in v { directSink &+= b }
                offered += v.count
            }
            let plan = takes[calls % takes.count]
            calls += 1
            if plan == 0 { return -1 }
            return plan == 255 ? offered : min(offered, Int(plan) * 97)
        }
    }
    func read() {
        for _ in 0..<1000 {
            session.pump()
            guard !session.out.isEmpty else { return }
            let n = session.out.withPieces(max: 64) { $0.reduce(0) { $0 + $1.count } }
            session.out.consume(n)
        }
    }
    do {
        if handshake {
            read()
            if vencrypt {
                try session.receive(Array("RFB 003.008\n".utf8) + [19, 0, 2, 0, 0, 1, password ? 5 : 4])
            } else {
                try session.receive(Array("RFB 003.008\n".utf8) + (password ? [] : [1, 1]))
            }
        }
        var steps = 0
        while !input.isAtEnd && steps < 512 {
            steps += 1
            let op = input.u8()
            switch op & 7 {
            case 0, 1, 2:
                try session.receive(input.take(Int(input.u8())))
            case 3:
                read()
            case 4:
                frame.width = Int(input.u8() % 64)
                frame.height = Int(input.u8() % 64)
                context.frameWidth = frame.width
                context.frameHeight = frame.height
                session.frameResized()
            case 5:
                session.markDirty(RFBRect(x: Int(Int8(bitPattern: input.u8())), y: Int(Int8(bitPattern: input.u8())),
                                          width: Int(input.u8()), height: Int(input.u8())))
            case 6 where session.phase == .tlsHandshake:
                require(session.takeTLSPrefix().count <= 1 << 16, "more than 64 KiB kept for TLS")
                session.tlsEstablished()
            default:
                session.pump()
            }
            require(session.out.count <= outputBound, "a client that does not read holds \(session.out.count) bytes")
        }
    } catch {
        require(session.phase == .closing, "the session threw (\(error)) but does not close")
    }
    read()
}

func fuzzWebSocket(_ bytes: [UInt8]) {
    var decoder = WebSocketDecoder()
    var total = 0
    bytes.withUnsafeBytes { raw in
        do throws(ProtocolError) {
            try decoder.feed(raw, data: { total += $0.count }, control: { c in
                if case .ping(let p) = c { require(p.count <= 125, "ping payload of \(p.count)") }
            })
        } catch {}
    }
    require(total <= bytes.count, "decoded more payload than input")
    var handshake = WebSocketHandshake()
    _ = bytes.withUnsafeBytes { handshake.feed($0) }
}

func fuzzParser(_ bytes: [UInt8]) {
    var whole = ClientMessageParser()
    var a: [ClientMessage] = []
    let wholeFailed = (try? whole.feed(bytes) { a.append($0) }) == nil
    var split = ClientMessageParser()
    var b: [ClientMessage] = []
    var splitFailed = false
    for byte in bytes where !splitFailed {
        splitFailed = (try? split.feed([byte]) { b.append($0) }) == nil
    }
    require(a == b && wholeFailed == splitFailed, "whole and byte-by-byte parsing differ: \(a) vs \(b)")
    for m in a {
        if case .setEncodings(let list) = m { require(list.count <= ClientMessageParser.maxEncodings, "kept \(list.count) encodings") }
    }
}

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    var input = FuzzInput(raw)
    let mode = input.u8()
    switch mode {
    case 0..<200: fuzzSession(&input, handshake: mode & 1 != 0, password: mode & 2 != 0, vencrypt: mode & 4 != 0,
                              direct: mode & 8 != 0)
    case 200..<240: fuzzWebSocket(input.rest())
    default: fuzzParser(input.rest())
    }
}

@_cdecl("FuzzRFB_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
