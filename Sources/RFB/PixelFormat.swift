/// An RFB pixel format (RFC 6143 §7.4): how a pixel value is laid out on the wire.
public struct RFBPixelFormat: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var bitsPerPixel: UInt8
    public var depth: UInt8
    public var bigEndian: Bool
    public var trueColour: Bool
    public var redMax: UInt16
    public var greenMax: UInt16
    public var blueMax: UInt16
    public var redShift: UInt8
    public var greenShift: UInt8
    public var blueShift: UInt8

    public init(bitsPerPixel: UInt8, depth: UInt8, bigEndian: Bool, trueColour: Bool,
                redMax: UInt16, greenMax: UInt16, blueMax: UInt16,
                redShift: UInt8, greenShift: UInt8, blueShift: UInt8) {
        self.bitsPerPixel = bitsPerPixel
        self.depth = depth
        self.bigEndian = bigEndian
        self.trueColour = trueColour
        self.redMax = redMax
        self.greenMax = greenMax
        self.blueMax = blueMax
        self.redShift = redShift
        self.greenShift = greenShift
        self.blueShift = blueShift
    }

    /// What the server announces for an XRGB8888 frame, as QEMU does:
    /// 32 bpp, depth 24, little-endian, true colour, 8 bits per channel at 16/8/0.
    public static let xrgb8888 = RFBPixelFormat(bitsPerPixel: 32, depth: 24, bigEndian: false, trueColour: true,
                                                redMax: 255, greenMax: 255, blueMax: 255,
                                                redShift: 16, greenShift: 8, blueShift: 0)

    /// The 16 bytes of a PIXEL_FORMAT (RFC 6143 §7.4).
    init(wire b: UnsafeRawBufferPointer) {
        precondition(b.count >= 16)
        bitsPerPixel = b[0]
        depth = b[1]
        bigEndian = b[2] != 0
        trueColour = b[3] != 0
        redMax = UInt16(b[4]) << 8 | UInt16(b[5])
        greenMax = UInt16(b[6]) << 8 | UInt16(b[7])
        blueMax = UInt16(b[8]) << 8 | UInt16(b[9])
        redShift = b[10]
        greenShift = b[11]
        blueShift = b[12]
    }

    func write(to out: ByteBuffer) {
        out.u8(bitsPerPixel)
        out.u8(depth)
        out.u8(bigEndian ? 1 : 0)
        out.u8(trueColour ? 1 : 0)
        out.u16(redMax)
        out.u16(greenMax)
        out.u16(blueMax)
        out.u8(redShift)
        out.u8(greenShift)
        out.u8(blueShift)
        out.u8(0); out.u8(0); out.u8(0)
    }

    public var bytesPerPixel: Int { Int(bitsPerPixel) / 8 }

    /// The format the server will actually produce for what a client asked
    /// for, or nil (with the reason) if it cannot be served.
    ///
    /// True colour: 8, 16 or 32 bits per pixel; every channel maximum at
    /// least 1 and, shifted, inside the pixel. Colour map: any of those sizes;
    /// the server then fixes the map to BGR233 (red 3 bits at 0, green 3 at
    /// 3, blue 2 at 6), as QEMU and libvncserver do, and sends it with
    /// SetColourMapEntries.
    public func validated() -> Result<RFBPixelFormat, RFBPixelFormatError> {
        guard bitsPerPixel == 8 || bitsPerPixel == 16 || bitsPerPixel == 32 else {
            return .failure(.init("\(bitsPerPixel) bits per pixel (8, 16 or 32 are supported)"))
        }
        guard trueColour else {
            var f = self
            f.redMax = 7; f.greenMax = 7; f.blueMax = 3
            f.redShift = 0; f.greenShift = 3; f.blueShift = 6
            return .success(f)
        }
        for (name, maxValue, shift) in [("red", redMax, redShift), ("green", greenMax, greenShift), ("blue", blueMax, blueShift)] {
            guard maxValue >= 1 else { return .failure(.init("\(name)-max is 0")) }
            let bits = 16 - maxValue.leadingZeroBitCount
            guard Int(shift) + bits <= Int(bitsPerPixel) else {
                return .failure(.init("\(name)-max \(maxValue) shifted by \(shift) does not fit in \(bitsPerPixel) bits"))
            }
        }
        return .success(self)
    }

    /// The bits that carry colour.
    var colourMask: UInt32 {
        UInt32(redMax) << UInt32(redShift) | UInt32(greenMax) << UInt32(greenShift) | UInt32(blueMax) << UInt32(blueShift)
    }

    public var description: String {
        let kind = trueColour ? "rgb max \(redMax)/\(greenMax)/\(blueMax) shift \(redShift)/\(greenShift)/\(blueShift)" : "colour map"
        return "\(bitsPerPixel)bpp depth \(depth) \(bigEndian ? "BE" : "LE") \(kind)"
    }

    /// One channel of the frame (0…255) reduced to 0…max: the top bits for a
    /// maximum below 255 (floor(v·(max+1)/256), which for max = 2^n−1 is
    /// v >> (8−n), what QEMU sends), scaled up (rounded) for a larger one.
    static func reduce(_ v: UInt32, max m: UInt16) -> UInt32 {
        let maxValue = UInt32(m)
        if maxValue <= 255 { return (v * (maxValue + 1)) >> 8 }
        return (v * maxValue + 127) / 255
    }

    // MARK: Layouts for the encodings

    /// How a PIXEL goes on the wire.
    var pixelLayout: PixelLayout {
        switch bitsPerPixel {
        case 8: return .u8
        case 16: return bigEndian ? .u16be : .u16le
        default: return bigEndian ? .u32be : .u32le
        }
    }

    /// ZRLE/TRLE's CPIXEL (RFC 6143 §7.7.5): 3 bytes when true colour, 32 bpp,
    /// depth ≤ 24 and the colour bits fit in the 3 least (preferred) or most
    /// significant bytes; else a PIXEL. nil when 32 bpp colour fits in 3 bytes
    /// but depth > 24: clients disagree there, so such a format is not served
    /// ZRLE or TRLE.
    var cpixelLayout: PixelLayout? {
        guard trueColour, bitsPerPixel == 32 else { return pixelLayout }
        let mask = colourMask
        let fitsLow = mask < (1 << 24)
        let fitsHigh = mask & 0xff == 0
        if depth > 24 { return (fitsLow || fitsHigh) ? nil : pixelLayout }
        if fitsLow { return bigEndian ? .c24beLow : .c24leLow }
        if fitsHigh { return bigEndian ? .c24beHigh : .c24leHigh }
        return pixelLayout
    }

    /// Tight's TPIXEL (rfbproto, Tight encoding): 3 bytes R, G, B when true
    /// colour, 32 bpp, depth 24 and 8-bit channels; else a PIXEL. nil for 32 bpp
    /// with 8-bit channels and another depth: QEMU sends 3 bytes there and
    /// libvncserver 4, so clients cannot agree and Tight is not used.
    var tpixelLayout: PixelLayout? {
        guard trueColour, bitsPerPixel == 32, redMax == 255, greenMax == 255, blueMax == 255 else { return pixelLayout }
        guard depth == 24 else { return nil }
        return .tpixel(red: UInt32(redShift), green: UInt32(greenShift), blue: UInt32(blueShift))
    }
}

public struct RFBPixelFormatError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

/// How one pixel value (already in the client's format, as a UInt32) is
/// written: its byte count and order. A `switch` outside the per-pixel loops
/// picks a specialised loop; nothing is dispatched per pixel.
enum PixelLayout: Equatable {
    case u8
    case u16le, u16be
    case u32le, u32be
    /// CPIXEL: the 3 least significant bytes of a little/big-endian pixel.
    case c24leLow, c24beLow
    /// CPIXEL: the 3 most significant bytes.
    case c24leHigh, c24beHigh
    /// TPIXEL: red, green, blue bytes taken from these shifts.
    case tpixel(red: UInt32, green: UInt32, blue: UInt32)

    var bytes: Int {
        switch self {
        case .u8: return 1
        case .u16le, .u16be: return 2
        case .u32le, .u32be: return 4
        default: return 3
        }
    }

    /// Writes one value at `p` (which has room for `bytes`).
    @inline(__always)
    func store(_ v: UInt32, at p: UnsafeMutableRawPointer) {
        switch self {
        case .u8:
            p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
        case .u16le:
            p.storeBytes(of: UInt16(truncatingIfNeeded: v).littleEndian, as: UInt16.self)
        case .u16be:
            p.storeBytes(of: UInt16(truncatingIfNeeded: v).bigEndian, as: UInt16.self)
        case .u32le:
            p.storeBytes(of: v.littleEndian, as: UInt32.self)
        case .u32be:
            p.storeBytes(of: v.bigEndian, as: UInt32.self)
        case .c24leLow:
            p.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: 0, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: 2, as: UInt8.self)
        case .c24beLow:
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: 0, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: 2, as: UInt8.self)
        case .c24leHigh:
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: 0, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 24), toByteOffset: 2, as: UInt8.self)
        case .c24beHigh:
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 24), toByteOffset: 0, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 16), toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: 2, as: UInt8.self)
        case .tpixel(let r, let g, let b):
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> r), toByteOffset: 0, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> g), toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: v >> b), toByteOffset: 2, as: UInt8.self)
        }
    }

    /// Appends one value.
    @inline(__always)
    func append(_ v: UInt32, to out: ByteBuffer) {
        let n = bytes
        out.appendUninitialized(n) { store(v, at: $0) }
    }

    /// Appends `count` values.
    func append(_ values: UnsafePointer<UInt32>, count: Int, to out: ByteBuffer) {
        guard count > 0 else { return }
        out.appendUninitialized(bytes * count) { store(values, count: count, at: $0) }
    }

    /// Writes `count` values at `p` (room for `bytes * count`), one
    /// specialised loop per layout.
    func store(_ values: UnsafePointer<UInt32>, count: Int, at p: UnsafeMutableRawPointer) {
        switch self {
        case .u32le:
            #if _endian(little)
            p.copyMemory(from: values, byteCount: 4 * count)
            #else
            for i in 0..<count { p.storeBytes(of: values[i].littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            #endif
        case .u8:
            let d = p.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count { d[i] = UInt8(truncatingIfNeeded: values[i]) }
        case .u16le:
            for i in 0..<count { p.storeBytes(of: UInt16(truncatingIfNeeded: values[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .u16be:
            for i in 0..<count { p.storeBytes(of: UInt16(truncatingIfNeeded: values[i]).bigEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .u32be:
            for i in 0..<count { p.storeBytes(of: values[i].bigEndian, toByteOffset: 4 * i, as: UInt32.self) }
        case .tpixel(16, 8, 0):
            // Tight's 24-bit pixels of the usual 32-bit format (red at bit 16):
            // byte-swapped and shifted, a value is its R, G, B bytes in order.
            Self.store24(values, count: count, at: p) { $0.byteSwapped &>> 8 }
        case .c24leLow:
            // ZRLE's and TRLE's 3-byte CPIXELs of the usual format: the low
            // three bytes, little-endian.
            Self.store24(values, count: count, at: p) { $0 & 0xff_ffff }
        case .tpixel(let r, let g, let b):
            let d = p.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count {
                let v = values[i]
                d[3 * i] = UInt8(truncatingIfNeeded: v >> r)
                d[3 * i + 1] = UInt8(truncatingIfNeeded: v >> g)
                d[3 * i + 2] = UInt8(truncatingIfNeeded: v >> b)
            }
        default:
            for i in 0..<count { store(values[i], at: p + 3 * i) }
        }
    }

    /// Three bytes per value, where `bytes(v)` puts them in its low 24 bits
    /// in output order (first byte lowest): four values go out as three
    /// 32-bit stores instead of a per-pixel switch and three byte stores
    /// (Tight spent 6.3% of its CPU on the full-colour band packing pixels
    /// one at a time, 3.1% this way; xenvfb-bench backend under perf).
    @inline(__always)
    private static func store24(_ values: UnsafePointer<UInt32>, count: Int, at p: UnsafeMutableRawPointer,
                                _ bytes: (UInt32) -> UInt32) {
        let quads = count / 4
        for q in 0..<quads {
            let a = bytes(values[4 * q]), b = bytes(values[4 * q + 1])
            let c = bytes(values[4 * q + 2]), e = bytes(values[4 * q + 3])
            p.storeBytes(of: (a | b &<< 24).littleEndian, toByteOffset: 12 * q, as: UInt32.self)
            p.storeBytes(of: (b &>> 8 | c &<< 16).littleEndian, toByteOffset: 12 * q + 4, as: UInt32.self)
            p.storeBytes(of: (c &>> 16 | e &<< 8).littleEndian, toByteOffset: 12 * q + 8, as: UInt32.self)
        }
        for i in 4 * quads ..< count {
            let v = bytes(values[i])
            for k in 0..<3 { p.storeBytes(of: UInt8(truncatingIfNeeded: v &>> (8 * UInt32(k))), toByteOffset: 3 * i + k, as: UInt8.self) }
        }
    }
}

/// Turns XRGB8888 frame pixels into pixel values of one client format.
///
/// The common formats get their own loop (the server's own format is a mask,
/// 5-6-5 is three shifts); every other format goes through three 256-entry
/// tables, one per channel, already shifted into place.
struct PixelTranslator {
    enum Kind { case xrgb, rgb565, table }
    let kind: Kind
    private let tables: [UInt32]

    init(_ f: RFBPixelFormat) {
        if f.trueColour && f.redMax == 255 && f.greenMax == 255 && f.blueMax == 255
            && f.redShift == 16 && f.greenShift == 8 && f.blueShift == 0 {
            kind = .xrgb
        } else if f.trueColour && f.redMax == 31 && f.greenMax == 63 && f.blueMax == 31
                    && f.redShift == 11 && f.greenShift == 5 && f.blueShift == 0 {
            kind = .rgb565
        } else {
            kind = .table
        }
        var t = [UInt32](repeating: 0, count: 768)
        for v in 0..<256 {
            t[v] = RFBPixelFormat.reduce(UInt32(v), max: f.redMax) << UInt32(f.redShift)
            t[256 + v] = RFBPixelFormat.reduce(UInt32(v), max: f.greenMax) << UInt32(f.greenShift)
            t[512 + v] = RFBPixelFormat.reduce(UInt32(v), max: f.blueMax) << UInt32(f.blueShift)
        }
        tables = t
    }

    /// One XRGB pixel (tests, palettes).
    func translate(_ p: UInt32) -> UInt32 {
        tables[Int((p >> 16) & 0xff)] | tables[256 + Int((p >> 8) & 0xff)] | tables[512 + Int(p & 0xff)]
    }

    /// Translates `count` pixels from `src` (4-byte aligned XRGB words) to `dst`.
    func translate(_ src: UnsafePointer<UInt32>, into dst: UnsafeMutablePointer<UInt32>, count: Int) {
        switch kind {
        case .xrgb:
            for i in 0..<count { dst[i] = UInt32(littleEndian: src[i]) & 0x00ff_ffff }
        case .rgb565:
            for i in 0..<count {
                let p = UInt32(littleEndian: src[i])
                dst[i] = (p >> 8) & 0xf800 | (p >> 5) & 0x07e0 | (p >> 3) & 0x001f
            }
        case .table:
            tables.withUnsafeBufferPointer { t in
                let t = t.baseAddress!
                for i in 0..<count {
                    let p = UInt32(littleEndian: src[i])
                    dst[i] = t[Int((p >> 16) & 0xff)] | t[256 + Int((p >> 8) & 0xff)] | t[512 + Int(p & 0xff)]
                }
            }
        }
    }
}
