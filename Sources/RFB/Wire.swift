/// A rectangle of the frame in pixels.
public struct RFBRect: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int

    public init(x: Int, y: Int, width: Int, height: Int) {
        self.x = x
        self.y = y
        self.width = width
        self.height = height
    }

    public var maxX: Int { x + width }
    public var maxY: Int { y + height }
    public var isEmpty: Bool { width <= 0 || height <= 0 }

    /// The part of the rectangle inside 0..<width × 0..<height (empty if none);
    /// safe for any input, including negative or huge values.
    public func clipped(width w: Int, height h: Int) -> RFBRect {
        let x0 = min(max(x, 0), max(w, 0))
        let y0 = min(max(y, 0), max(h, 0))
        let x1 = min(max(x.addingReportingOverflow(width).overflow ? Int.max : x + width, x0), max(w, 0))
        let y1 = min(max(y.addingReportingOverflow(height).overflow ? Int.max : y + height, y0), max(h, 0))
        return RFBRect(x: x0, y: y0, width: x1 - x0, height: y1 - y0)
    }

    public var description: String { "\(width)x\(height)+\(x)+\(y)" }
}

/// Encoding numbers (RFC 6143 §7.7, and the community rfbproto document for
/// the pseudo-encodings), as clients send them in SetEncodings.
enum Encoding {
    static let raw: Int32 = 0
    static let copyRect: Int32 = 1
    static let rre: Int32 = 2
    static let coRRE: Int32 = 4
    static let hextile: Int32 = 5
    static let zlib: Int32 = 6
    static let tight: Int32 = 7
    static let trle: Int32 = 15
    static let zrle: Int32 = 16

    static let desktopSize: Int32 = -223
    static let extendedDesktopSize: Int32 = -308
    /// QEMU: the pointer is absolute (x = 1) or relative (x = 0).
    static let qemuPointerTypeChange: Int32 = -257
    /// QEMU: the client may send extended key events (keysym + XT scancode).
    static let qemuExtendedKeyEvent: Int32 = -258
    static let qemuLEDState: Int32 = -261
    /// -256 (level 0) … -247 (level 9).
    static let tightCompressLevel0: Int32 = -256
    /// -32 (quality 0) … -23 (quality 9): JPEG, never used (lossless server).
    static let tightQualityLevel0: Int32 = -32

    static func name(_ e: Int32) -> String {
        switch e {
        case raw: return "raw"
        case rre: return "rre"
        case coRRE: return "corre"
        case hextile: return "hextile"
        case zlib: return "zlib"
        case tight: return "tight"
        case trle: return "trle"
        case zrle: return "zrle"
        case copyRect: return "copyrect"
        case desktopSize: return "DesktopSize"
        case extendedDesktopSize: return "ExtendedDesktopSize"
        case qemuPointerTypeChange: return "QEMUPointerType"
        case qemuExtendedKeyEvent: return "QEMUExtendedKey"
        case qemuLEDState: return "QEMULEDState"
        case -224: return "LastRect"
        case -260: return "TightPNG"
        case -309: return "XVP"
        case -239: return "Cursor"
        case -240: return "XCursor"
        case -307: return "DesktopName"
        case -312: return "Fence"
        case -313: return "ContinuousUpdates"
        case -314: return "CursorWithAlpha"
        case -1063131698: return "ExtendedClipboard"
        case 0x574d_5664: return "VMwareCursor"
        case 0x574d_5666: return "VMwareLEDState"
        case tightCompressLevel0...(tightCompressLevel0 + 9): return "compress\(e - tightCompressLevel0)"
        case tightQualityLevel0...(tightQualityLevel0 + 9): return "quality\(e - tightQualityLevel0)"
        default: return String(e)
        }
    }
}

/// Message types (RFC 6143 §7.5 and §7.6; 251 and 255 from rfbproto).
enum MessageType {
    // client → server
    static let setPixelFormat: UInt8 = 0
    static let setEncodings: UInt8 = 2
    static let framebufferUpdateRequest: UInt8 = 3
    static let keyEvent: UInt8 = 4
    static let pointerEvent: UInt8 = 5
    static let clientCutText: UInt8 = 6
    static let setDesktopSize: UInt8 = 251
    static let qemu: UInt8 = 255
    // server → client
    static let framebufferUpdate: UInt8 = 0
    static let setColourMapEntries: UInt8 = 1
}

extension ByteBuffer {
    /// A rectangle header inside a FramebufferUpdate.
    func rectHeader(x: Int, y: Int, width: Int, height: Int, encoding: Int32) {
        u16(UInt16(truncatingIfNeeded: x))
        u16(UInt16(truncatingIfNeeded: y))
        u16(UInt16(truncatingIfNeeded: width))
        u16(UInt16(truncatingIfNeeded: height))
        s32(encoding)
    }

    /// A FramebufferUpdate message header.
    func updateHeader(rects: Int) {
        u8(MessageType.framebufferUpdate)
        u8(0)
        u16(UInt16(truncatingIfNeeded: rects))
    }

    /// Tight's compact length: 1 to 3 bytes, 7 bits per byte, low bits first.
    func tightLength(_ n: Int) {
        u8(UInt8(n & 0x7f) | (n > 0x7f ? 0x80 : 0))
        if n > 0x7f {
            u8(UInt8((n >> 7) & 0x7f) | (n > 0x3fff ? 0x80 : 0))
            if n > 0x3fff { u8(UInt8(truncatingIfNeeded: n >> 14)) }
        }
    }
}
