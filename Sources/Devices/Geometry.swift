import XenProtocol

/// A validated framebuffer layout inside the mapped guest framebuffer.
public struct VfbGeometry: Equatable, Sendable, CustomStringConvertible {
    public var width: Int
    public var height: Int
    /// Bits per pixel: 8 (RGB 3-3-2), 16 (RGB 5-6-5), 24 (packed B,G,R) or 32 (XRGB).
    public var depth: Int
    /// Bytes per row (`line_length`).
    public var stride: Int
    /// Byte offset of the first pixel in the framebuffer.
    public var offset: Int

    public init(width: Int, height: Int, depth: Int, stride: Int, offset: Int) {
        self.width = width
        self.height = height
        self.depth = depth
        self.stride = stride
        self.offset = offset
    }

    public var bytesPerPixel: Int { depth / 8 }
    public var description: String { "\(width)x\(height)x\(depth) stride \(stride) offset \(offset)" }

    /// Largest width or height the displays accept.
    public static let maxDimension = 16384

    /// QEMU's `xenfb_configure_fb` checks (hw/display/xenfb.c; the fixes for
    /// CVE-2008-1943/1944): depth in
    /// {8,16,24,32}; stride in (0, fbLen]; offset in [0, fbLen); width clamped
    /// to stride/Bpp and height to (fbLen-offset)/stride. Values come straight
    /// from the guest, so everything is done in Int (64-bit) from 32-bit inputs
    /// and cannot overflow. An empty or oversized result is refused as well.
    /// `maxFrameBytes` bounds the XRGB frame the geometry needs (width ×
    /// height × 4): at depth 8 a guest's framebuffer describes a frame four
    /// times its own size.
    public static func configure(fbLen: Int, width: Int, height: Int, depth: Int, stride: Int, offset: Int,
                                 maxFrameBytes: Int = .max) throws(GeometryError) -> VfbGeometry {
        guard fbLen > 0 else { throw .emptyFramebuffer }
        guard [8, 16, 24, 32].contains(depth) else { throw .badDepth(depth) }
        guard stride > 0, stride <= fbLen else { throw .badStride(stride, fbLen: fbLen) }
        guard offset >= 0, offset < fbLen else { throw .badOffset(offset, fbLen: fbLen) }
        let w = min(max(width, 0), stride / (depth / 8))
        let h = min(max(height, 0), (fbLen - offset) / stride)
        guard w > 0, h > 0 else { throw .empty(width: w, height: h) }
        guard w <= maxDimension, h <= maxDimension else { throw .tooLarge(width: w, height: h) }
        guard w * h * 4 <= maxFrameBytes else { throw .frameOverLimit(width: w, height: h, limit: maxFrameBytes) }
        return VfbGeometry(width: w, height: h, depth: depth, stride: stride, offset: offset)
    }
}

/// Why a framebuffer description was refused.
public enum GeometryError: Error, Equatable, CustomStringConvertible {
    case badDepth(Int)
    case badStride(Int, fbLen: Int)
    case badOffset(Int, fbLen: Int)
    case empty(width: Int, height: Int)
    case tooLarge(width: Int, height: Int)
    case emptyFramebuffer
    case memLengthOverLimit(Int, limit: Int)
    case tooManyDirectories(Int, max: Int)
    case wouldGrow(Int, mapped: Int)
    case frameOverLimit(width: Int, height: Int, limit: Int)

    public var description: String {
        switch self {
        case .badDepth(let d): return "depth \(d) is not 8, 16, 24 or 32"
        case .badStride(let s, let len): return "line length \(s) is not in 1...\(len) (framebuffer length)"
        case .badOffset(let o, let len): return "offset \(o) is not in 0..<\(len) (framebuffer length)"
        case .empty(let w, let h): return "framebuffer is empty after clamping (\(w)x\(h))"
        case .tooLarge(let w, let h): return "framebuffer \(w)x\(h) exceeds \(VfbGeometry.maxDimension) pixels a side"
        case .emptyFramebuffer: return "mem_length is 0"
        case .memLengthOverLimit(let m, let limit): return "mem_length \(m) exceeds the configured limit of \(limit) bytes"
        case .tooManyDirectories(let n, let max): return "framebuffer needs \(n) page directories; at most \(max) fit before the ring"
        case .wouldGrow(let n, let mapped): return "resize needs \(n) bytes but \(mapped) are mapped"
        case .frameOverLimit(let w, let h, let limit): return "a \(w)x\(h) frame needs \(w * h * 4) bytes, over the limit of \(limit)"
        }
    }
}

/// Converts rows of guest pixels into the frame's XRGB8888.
enum PixelConversion {
    /// Converts `count` pixels of `depth` from `source` into 32-bit XRGB at `dest`.
    static func convert(depth: Int, source: UnsafeRawBufferPointer, count: Int, dest: UnsafeMutableRawPointer) {
        let out = dest.assumingMemoryBound(to: UInt32.self)
        switch depth {
        case 32:
            dest.copyMemory(from: source.baseAddress!, byteCount: count * 4)
        case 24:
            for i in 0..<count {
                let b = UInt32(source[i * 3]), g = UInt32(source[i * 3 + 1]), r = UInt32(source[i * 3 + 2])
                out[i] = r << 16 | g << 8 | b
            }
        case 16:
            for i in 0..<count {
                let v = UInt32(source[i * 2]) | UInt32(source[i * 2 + 1]) << 8
                let r = (v >> 11) & 0x1f, g = (v >> 5) & 0x3f, b = v & 0x1f
                out[i] = (r << 3 | r >> 2) << 16 | (g << 2 | g >> 4) << 8 | (b << 3 | b >> 2)
            }
        case 8:
            for i in 0..<count {
                let v = UInt32(source[i])
                let r = (v >> 5) & 7, g = (v >> 2) & 7, b = v & 3
                out[i] = (r * 255 / 7) << 16 | (g * 255 / 7) << 8 | (b * 255 / 3)
            }
        default:
            break
        }
    }
}

extension PixelConversion {
    /// The source bytes that pixels `x ..< x + count` of a row in `format`
    /// occupy: YUYV stores two pixels in four bytes, so its range starts at
    /// the pair holding pixel `x`.
    static func byteRange(format: DisplifPixelFormat, x: Int, count: Int) -> Range<Int> {
        if format == .yuyv { return (x / 2) * 4 ..< ((x + count + 1) / 2) * 4 }
        return x * format.bytesPerPixel ..< (x + count) * format.bytesPerPixel
    }

    /// Converts `count` pixels of `format` into XRGB8888 words at `dest`;
    /// `source` holds `byteRange(format:x:count:)` of the row (for YUYV,
    /// `x` odd means the first pixel is the second of its pair). Alpha is
    /// dropped: the screen is opaque. Reads at most `source.count` bytes.
    static func convert(format: DisplifPixelFormat, source: UnsafeRawBufferPointer, x: Int, count: Int, dest: UnsafeMutableRawPointer) {
        let out = dest.assumingMemoryBound(to: UInt32.self)
        guard count > 0, source.count >= byteRange(format: format, x: x, count: count).count else { return }
        func u16(_ i: Int) -> UInt32 { UInt32(source[2 * i]) | UInt32(source[2 * i + 1]) << 8 }
        func expand(_ v: UInt32, bits: UInt32) -> UInt32 { (v << (8 - bits)) | (v >> (2 * bits - 8)) }
        switch format {
        case .xrgb8888:
            dest.copyMemory(from: source.baseAddress!, byteCount: count * 4)
        case .argb8888:
            for i in 0..<count {
                out[i] = source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) & 0x00ff_ffff
            }
        case .rgb888:
            for i in 0..<count {
                out[i] = UInt32(source[3 * i + 2]) << 16 | UInt32(source[3 * i + 1]) << 8 | UInt32(source[3 * i])
            }
        case .rgb565:
            for i in 0..<count {
                let v = u16(i)
                out[i] = expand((v >> 11) & 0x1f, bits: 5) << 16 | expand((v >> 5) & 0x3f, bits: 6) << 8 | expand(v & 0x1f, bits: 5)
            }
        case .xrgb4444, .argb4444:
            for i in 0..<count {
                let v = u16(i)
                out[i] = ((v >> 8) & 0xf) * 0x11 << 16 | ((v >> 4) & 0xf) * 0x11 << 8 | (v & 0xf) * 0x11
            }
        case .xrgb1555, .argb1555:
            for i in 0..<count {
                let v = u16(i)
                out[i] = expand((v >> 10) & 0x1f, bits: 5) << 16 | expand((v >> 5) & 0x1f, bits: 5) << 8 | expand(v & 0x1f, bits: 5)
            }
        case .yuyv:
            // BT.601, limited range (DRM's default colour encoding for YUV planes).
            let skip = x & 1
            for i in 0..<count {
                let p = i + skip
                let pair = (p / 2) * 4
                let y = Int(source[pair + (p & 1) * 2]), u = Int(source[pair + 1]) - 128, v = Int(source[pair + 3]) - 128
                let c = 298 * (y - 16)
                func clamp(_ n: Int) -> UInt32 { UInt32(min(max((n + 128) >> 8, 0), 255)) }
                out[i] = clamp(c + 409 * v) << 16 | clamp(c - 100 * u - 208 * v) << 8 | clamp(c + 516 * u)
            }
        }
    }
}
