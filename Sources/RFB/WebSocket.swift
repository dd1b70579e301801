/// The server side of RFC 6455 for the WebSocket listener: the HTTP Upgrade
/// handshake, then a decoder for the client's (masked) frames. Only binary
/// messages carry RFB; ping is answered with pong, close with close. Nothing
/// here is sniffed: a WebSocket listener expects a handshake, the VNC listener
/// never looks for one.
enum WebSocket {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2 step 5.4).
    static func accept(key: String) -> String {
        Base64.encode(SHA1.hash(Array((key + guid).utf8)))
    }

    /// A frame header for a server frame (FIN set, unmasked).
    static func frameHeader(opcode: UInt8, length n: Int) -> [UInt8] {
        var h: [UInt8] = [0x80 | opcode]
        if n < 126 {
            h.append(UInt8(n))
        } else if n <= 0xffff {
            h += [126, UInt8(n >> 8), UInt8(n & 0xff)]
        } else {
            h.append(127)
            for i in (0..<8).reversed() { h.append(UInt8(truncatingIfNeeded: UInt64(n) >> UInt64(8 * i))) }
        }
        return h
    }

    static let opContinuation: UInt8 = 0
    static let opText: UInt8 = 1
    static let opBinary: UInt8 = 2
    static let opClose: UInt8 = 8
    static let opPing: UInt8 = 9
    static let opPong: UInt8 = 10
}

/// Reads an HTTP Upgrade request (at most `maxRequest` bytes) and says what
/// to answer: 101 Switching Protocols, or 400 Bad Request for anything else.
struct WebSocketHandshake {
    static let maxRequest = 8192

    enum Outcome: Equatable {
        case needMore
        /// The response to send; the request ended `consumed` bytes into the last input.
        case accepted(response: [UInt8], consumed: Int)
        case rejected(response: [UInt8], reason: String)
    }

    private var request: [UInt8] = []

    static let badRequest = Array("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".utf8)

    mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        for (i, b) in bytes.enumerated() {
            request.append(b)
            if request.count > Self.maxRequest {
                return .rejected(response: Self.badRequest, reason: "HTTP request longer than \(Self.maxRequest) bytes")
            }
            if b == 10 && request.count >= 4 && request[request.count - 4] == 13 && request[request.count - 3] == 10
                && request[request.count - 2] == 13 {
                return respond(consumed: i + 1)
            }
        }
        return .needMore
    }

    private func respond(consumed: Int) -> Outcome {
        func reject(_ reason: String) -> Outcome { .rejected(response: Self.badRequest, reason: reason) }
        guard let text = String(validating: request, as: UTF8.self) else { return reject("request is not UTF-8") }
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: true)
        guard !lines.isEmpty else { return reject("empty request") }
        let requestLine = lines.removeFirst().split(separator: " ")
        guard requestLine.count == 3, requestLine[0] == "GET", requestLine[2] == "HTTP/1.1" else {
            return reject("not a GET …/HTTP/1.1 request")
        }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { return reject("malformed header line") }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingSpaces
            headers[name] = headers[name].map { $0 + ", " + value } ?? value
        }
        func tokens(_ name: String) -> [String] {
            (headers[name] ?? "").split(separator: ",").map { $0.trimmingSpaces.lowercased() }
        }
        guard tokens("upgrade").contains("websocket") else { return reject("no Upgrade: websocket") }
        guard tokens("connection").contains("upgrade") else { return reject("no Connection: Upgrade") }
        guard headers["sec-websocket-version"] == "13" else { return reject("Sec-WebSocket-Version is not 13") }
        guard let key = headers["sec-websocket-key"], Base64.decodedCount(Substring(key)) == 16 else {
            return reject("missing or malformed Sec-WebSocket-Key")
        }
        var response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        response += "Sec-WebSocket-Accept: \(WebSocket.accept(key: key))\r\n"
        if headers["sec-websocket-protocol"] != nil {
            guard tokens("sec-websocket-protocol").contains("binary") else {
                return reject("no supported subprotocol (only binary)")
            }
            response += "Sec-WebSocket-Protocol: binary\r\n"
        }
        response += "\r\n"
        return .accepted(response: Array(response.utf8), consumed: consumed)
    }
}

extension Substring {
    var trimmingSpaces: String {
        var s = self[...]
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// Decodes the client's frames incrementally (any split, down to single
/// bytes): unmasks binary payloads and hands them on as they arrive, so a
/// long frame is never held whole. Frames must be masked; control frames are
/// at most 125 bytes; data frames at most `maxPayload`; text frames, reserved
/// bits and opcodes are refused.
struct WebSocketDecoder {
    static let maxPayload = 1 << 24

    enum Control: Equatable {
        case ping([UInt8])
        case pong
        case close([UInt8])
    }

    private var header: [UInt8] = []
    private var remaining = 0
    private var mask: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
    private var maskIndex = 0
    private var opcode: UInt8 = 0
    private var inPayload = false
    private var controlPayload: [UInt8] = []
    /// A fragmented binary message is open (continuation frames expected).
    private var inMessage = false
    private var scratch = [UInt8](repeating: 0, count: 4096)

    mutating func feed(_ bytes: UnsafeRawBufferPointer,
                       data: (UnsafeRawBufferPointer) throws(ProtocolError) -> Void,
                       control: (Control) throws(ProtocolError) -> Void) throws(ProtocolError) {
        var i = 0
        while i < bytes.count {
            if !inPayload {
                header.append(bytes[i])
                i += 1
                try parseHeader()
                if inPayload && remaining == 0 { try endOfPayload(control) }
                continue
            }
            let take = min(remaining, bytes.count - i)
            if opcode >= 8 {
                for k in 0..<take { controlPayload.append(unmask(bytes[i + k])) }
            } else {
                var done = 0
                while done < take {
                    let n = min(take - done, scratch.count)
                    for k in 0..<n { scratch[k] = unmask(bytes[i + done + k]) }
                    var failure: ProtocolError?
                    scratch.withUnsafeBytes { raw in
                        do throws(ProtocolError) { try data(UnsafeRawBufferPointer(rebasing: raw[0..<n])) } catch { failure = error }
                    }
                    if let failure { throw failure }
                    done += n
                }
            }
            i += take
            remaining -= take
            if remaining == 0 { try endOfPayload(control) }
        }
    }

    @inline(__always)
    private mutating func unmask(_ b: UInt8) -> UInt8 {
        let m: UInt8
        switch maskIndex & 3 {
        case 0: m = mask.0
        case 1: m = mask.1
        case 2: m = mask.2
        default: m = mask.3
        }
        maskIndex += 1
        return b ^ m
    }

    /// Decides, once enough header bytes are in, how long the payload is.
    private mutating func parseHeader() throws(ProtocolError) {
        guard header.count >= 2 else { return }
        let b0 = header[0], b1 = header[1]
        guard b0 & 0x70 == 0 else { throw ProtocolError("WebSocket frame with reserved bits set") }
        guard b1 & 0x80 != 0 else { throw ProtocolError("unmasked WebSocket frame from the client") }
        let op = b0 & 0x0f
        let fin = b0 & 0x80 != 0
        let short = Int(b1 & 0x7f)
        let lengthBytes = short == 126 ? 2 : short == 127 ? 8 : 0
        guard header.count == 2 + lengthBytes + 4 else { return }
        var length = short
        if lengthBytes > 0 {
            var v: UInt64 = 0
            for k in 0..<lengthBytes { v = v << 8 | UInt64(header[2 + k]) }
            guard v <= UInt64(Self.maxPayload) else { throw ProtocolError("WebSocket frame of \(v) bytes (at most \(Self.maxPayload))") }
            length = Int(v)
        }
        let m = header.count - 4
        mask = (header[m], header[m + 1], header[m + 2], header[m + 3])
        maskIndex = 0
        switch op {
        case WebSocket.opBinary:
            guard !inMessage else { throw ProtocolError("WebSocket binary frame inside a fragmented message") }
            inMessage = !fin
        case WebSocket.opContinuation:
            guard inMessage else { throw ProtocolError("WebSocket continuation frame without a message") }
            inMessage = !fin
        case WebSocket.opText:
            throw ProtocolError("WebSocket text frame (RFB needs binary)")
        case WebSocket.opClose, WebSocket.opPing, WebSocket.opPong:
            guard fin, length <= 125 else { throw ProtocolError("fragmented or long WebSocket control frame") }
            controlPayload.removeAll(keepingCapacity: true)
        default:
            throw ProtocolError("WebSocket frame with reserved opcode \(op)")
        }
        opcode = op
        remaining = length
        inPayload = true
        header.removeAll(keepingCapacity: true)
    }

    private mutating func endOfPayload(_ control: (Control) throws(ProtocolError) -> Void) throws(ProtocolError) {
        inPayload = false
        switch opcode {
        case WebSocket.opPing: try control(.ping(controlPayload))
        case WebSocket.opPong: try control(.pong)
        case WebSocket.opClose: try control(.close(controlPayload))
        default: break
        }
    }
}
