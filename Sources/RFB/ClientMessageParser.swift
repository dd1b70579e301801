/// A message from a client in the normal phase (RFC 6143 §7.5, plus
/// rfbproto's SetDesktopSize and QEMU's client message 255).
enum ClientMessage: Equatable {
    case setPixelFormat(RFBPixelFormat)
    /// The first `ClientMessageParser.maxEncodings` encodings, in the client's order.
    case setEncodings([Int32])
    case framebufferUpdateRequest(incremental: Bool, x: UInt16, y: UInt16, width: UInt16, height: UInt16)
    case keyEvent(down: Bool, keysym: UInt32)
    case pointerEvent(buttons: UInt8, x: UInt16, y: UInt16)
    /// Clipboard text, skipped unread (only its length is kept).
    case clientCutText(length: Int)
    /// QEMU's extended key event (255/0): keysym and XT scancode.
    case qemuExtendedKeyEvent(down: Bool, keysym: UInt32, keycode: UInt32)
    /// SetDesktopSize (251); the screens are skipped.
    case setDesktopSize(width: UInt16, height: UInt16, screens: UInt8)
}

/// Why a client is closed.
struct ProtocolError: Error, Equatable, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Splits the client's byte stream into messages, incrementally: it takes
/// whatever arrived (down to one byte at a time), never waits for more, and
/// keeps at most one message header plus the bounded encoding list. Every
/// length the client controls is capped: SetEncodings keeps the first
/// `maxEncodings` entries and skips the rest, ClientCutText (including the
/// extended clipboard's negative lengths) may not exceed `maxCutText` and is
/// skipped without being stored, SetDesktopSize's screens are skipped.
struct ClientMessageParser {
    static let maxEncodings = 256
    static let maxCutText = 1 << 20

    private enum State {
        /// Waiting for a message type.
        case type
        /// Collecting `need` bytes of a fixed-size message (type byte included).
        case fixed(need: Int)
        /// Reading `remaining` encodings of a SetEncodings.
        case encodings(remaining: Int)
        /// Skipping bytes (cut text, screens) before reporting `message`.
        case skip(remaining: Int, then: ClientMessage)
    }

    private var state = State.type
    /// The current message so far (at most 20 bytes; encodings go to `encodings`).
    private var header: [UInt8] = []
    private var encodings: [Int32] = []
    private var encodingBytes: [UInt8] = []

    init() { header.reserveCapacity(20) }

    /// Feeds bytes; calls `handle` for each complete message in order. Throws
    /// at the first byte that cannot be part of a valid message; bytes after
    /// it are not looked at.
    mutating func feed(_ bytes: UnsafeRawBufferPointer, _ handle: (ClientMessage) throws(ProtocolError) -> Void) throws(ProtocolError) {
        var i = 0
        let n = bytes.count
        while i < n {
            switch state {
            case .type:
                let t = bytes[i]
                i += 1
                header.removeAll(keepingCapacity: true)
                header.append(t)
                switch t {
                case MessageType.setPixelFormat: state = .fixed(need: 20)
                case MessageType.setEncodings: state = .fixed(need: 4)
                case MessageType.framebufferUpdateRequest: state = .fixed(need: 10)
                case MessageType.keyEvent: state = .fixed(need: 8)
                case MessageType.pointerEvent: state = .fixed(need: 6)
                case MessageType.clientCutText: state = .fixed(need: 8)
                case MessageType.setDesktopSize: state = .fixed(need: 8)
                case MessageType.qemu: state = .fixed(need: 2)
                default: throw ProtocolError("unknown client message type \(t)")
                }
            case .fixed(let need):
                let take = min(need - header.count, n - i)
                header.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<i + take]))
                i += take
                if header.count == need { try complete(handle) }
            case .encodings(let remaining):
                // Whole 4-byte entries straight from the input when possible.
                var left = remaining
                while left > 0 && i < n {
                    if encodingBytes.isEmpty && n - i >= 4 {
                        append(encoding: bytes.loadUnaligned(fromByteOffset: i, as: UInt32.self))
                        i += 4
                        left -= 1
                    } else {
                        encodingBytes.append(bytes[i])
                        i += 1
                        if encodingBytes.count == 4 {
                            let v = encodingBytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                            encodingBytes.removeAll(keepingCapacity: true)
                            append(encoding: v)
                            left -= 1
                        }
                    }
                }
                if left == 0 {
                    state = .type
                    let list = encodings
                    encodings = []
                    try handle(.setEncodings(list))
                } else {
                    state = .encodings(remaining: left)
                }
            case .skip(let remaining, let message):
                let take = min(remaining, n - i)
                i += take
                if take == remaining {
                    state = .type
                    try handle(message)
                } else {
                    state = .skip(remaining: remaining - take, then: message)
                }
            }
        }
    }

    /// `feed` for an array (tests, the fuzzer).
    mutating func feed(_ bytes: [UInt8], _ handle: (ClientMessage) -> Void) throws(ProtocolError) {
        var failure: ProtocolError?
        bytes.withUnsafeBytes { raw in
            do throws(ProtocolError) { try feed(raw) { handle($0) } } catch { failure = error }
        }
        if let failure { throw failure }
    }

    private mutating func append(encoding raw: UInt32) {
        if encodings.count < Self.maxEncodings { encodings.append(Int32(bitPattern: UInt32(bigEndian: raw))) }
    }

    private func u16(_ at: Int) -> UInt16 { UInt16(header[at]) << 8 | UInt16(header[at + 1]) }
    private func u32(_ at: Int) -> UInt32 {
        UInt32(header[at]) << 24 | UInt32(header[at + 1]) << 16 | UInt32(header[at + 2]) << 8 | UInt32(header[at + 3])
    }

    /// A fixed part is complete: report it or move on to its variable part.
    private mutating func complete(_ handle: (ClientMessage) throws(ProtocolError) -> Void) throws(ProtocolError) {
        state = .type
        switch header[0] {
        case MessageType.setPixelFormat:
            let format = header.withUnsafeBytes { RFBPixelFormat(wire: UnsafeRawBufferPointer(rebasing: $0[4..<20])) }
            try handle(.setPixelFormat(format))
        case MessageType.setEncodings:
            let count = Int(u16(2))
            encodings.removeAll(keepingCapacity: true)
            encodingBytes.removeAll(keepingCapacity: true)
            if count == 0 {
                try handle(.setEncodings([]))
            } else {
                encodings.reserveCapacity(min(count, Self.maxEncodings))
                state = .encodings(remaining: count)
            }
        case MessageType.framebufferUpdateRequest:
            try handle(.framebufferUpdateRequest(incremental: header[1] != 0, x: u16(2), y: u16(4), width: u16(6), height: u16(8)))
        case MessageType.keyEvent:
            try handle(.keyEvent(down: header[1] != 0, keysym: u32(4)))
        case MessageType.pointerEvent:
            try handle(.pointerEvent(buttons: header[1], x: u16(2), y: u16(4)))
        case MessageType.clientCutText:
            // A negative length is the extended clipboard; its size is |length|.
            let length = Int(Int32(bitPattern: u32(4)).magnitude)
            guard length <= Self.maxCutText else {
                throw ProtocolError("clipboard text of \(length) bytes (at most \(Self.maxCutText))")
            }
            if length == 0 { try handle(.clientCutText(length: 0)) } else {
                state = .skip(remaining: length, then: .clientCutText(length: length))
            }
        case MessageType.setDesktopSize:
            let screens = header[6]
            let message = ClientMessage.setDesktopSize(width: u16(2), height: u16(4), screens: screens)
            if screens == 0 { try handle(message) } else { state = .skip(remaining: Int(screens) * 16, then: message) }
        case MessageType.qemu:
            if header.count == 2 {
                guard header[1] == 0 else {
                    throw ProtocolError("unsupported QEMU client message \(header[1]) (only extended key events are)")
                }
                state = .fixed(need: 12)
            } else {
                try handle(.qemuExtendedKeyEvent(down: u16(2) != 0, keysym: u32(4), keycode: u32(8)))
            }
        default:
            throw ProtocolError("unknown client message type \(header[0])")
        }
    }
}
