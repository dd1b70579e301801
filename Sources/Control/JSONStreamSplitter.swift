/// Cuts a QMP byte stream into messages the way QEMU's json-streamer does:
/// a message is a balanced `{...}` or `[...]`, however it is split over
/// reads and with or without line ends between messages (python's qemu.qmp
/// sends none, libxl sends `\r\n`). Anything else is taken up to the next
/// line end and handed on as one piece, so the caller can answer it with a
/// parse error and carry on.
///
/// Bounded: a piece longer than `maxBytes` is reported as `.tooLong` and the
/// stream cannot be resynchronised (the caller drops the connection).
public struct JSONStreamSplitter {
    public enum Piece: Equatable {
        /// A balanced object or array (not yet parsed).
        case message([UInt8])
        /// Text outside any object, up to a line end (without it).
        case stray([UInt8])
        /// More than `maxBytes` without the end of a piece.
        case tooLong
    }

    private enum State { case idle, message, stray }

    public let maxBytes: Int
    private var buffer: [UInt8] = []
    /// Where the current piece starts, and how far it has been scanned.
    private var start = 0
    private var scan = 0
    private var state = State.idle
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var failed = false

    public init(maxBytes: Int = 64 * 1024) { self.maxBytes = maxBytes }

    /// Bytes received but not yet part of a returned piece.
    public var pendingBytes: Int { buffer.count - start }

    public mutating func append(_ bytes: some Collection<UInt8>) {
        guard !failed else { return }
        if start > 0 {
            buffer.removeFirst(start)
            scan -= start
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete piece, or nil until more bytes arrive.
    public mutating func next() -> Piece? {
        guard !failed else { return nil }
        while scan < buffer.count {
            let c = buffer[scan]
            switch state {
            case .idle:
                switch c {
                case 0x20, 0x09, 0x0A, 0x0D:
                    start += 1 // whitespace between messages
                    scan += 1
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    state = .message
                    depth = 1
                default:
                    state = .stray
                }
            case .message:
                if inString {
                    if escaped { escaped = false }
                    else if c == UInt8(ascii: "\\") { escaped = true }
                    else if c == UInt8(ascii: "\"") { inString = false }
                } else {
                    switch c {
                    case UInt8(ascii: "\""): inString = true
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        depth -= 1
                        if depth == 0 { return cut(through: scan) }
                    default: break
                    }
                }
            case .stray:
                if c == 0x0A || c == 0x0D {
                    let piece = Array(buffer[start..<scan])
                    start = scan + 1
                    reset()
                    return .stray(piece)
                }
            }
            scan += 1
            if scan - start > maxBytes {
                failed = true
                buffer = []
                return .tooLong
            }
        }
        return nil
    }

    private mutating func cut(through end: Int) -> Piece {
        let piece = Array(buffer[start...end])
        start = end + 1
        reset()
        return .message(piece)
    }

    private mutating func reset() {
        scan = start
        state = .idle
        depth = 0
        inString = false
        escaped = false
    }
}
