#if canImport(Glibc)
import Glibc
#endif
import Console
import CPNG
import Support

/// The file formats a frame can be captured to (QMP `screendump` spells
/// them `png` and `ppm`).
public enum CaptureFormat: String, Sendable, CaseIterable {
    case png
    case ppm

    /// The lower-case name as QMP and the command line spell it, or nil.
    public init?(name: String) {
        switch name.lowercased() {
        case "png": self = .png
        case "ppm", "pnm": self = .ppm
        default: return nil
        }
    }

    public var fileExtension: String { rawValue }
}

/// Why a capture failed: the path, and what the system or libpng said.
public struct CaptureError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let reason: String

    public var description: String { "cannot write \(path): \(reason)" }
}

/// Writes `frame` to `path` as PNG or PPM (P6), replacing the file. The
/// frame is read inside the call only (call it on the loop's thread).
///
/// This is what QMP `screendump` and `xenvfb screenshot` call. It writes in
/// place, as QEMU does; `PNGDisplay` writes to a temporary name and renames.
public func capture(_ frame: Frame, to path: String, format: CaptureFormat) throws(CaptureError) {
    switch format {
    case .png: try writePNG(frame, to: path)
    case .ppm: try writePPM(frame, to: path)
    }
}

/// PNG through libpng's simplified API with `PNG_IMAGE_FLAG_FAST` (no
/// filtering, fast zlib level): about 20 ms for 1080p desktop content. The
/// simplified API reports errors by return value, so no setjmp is needed.
func writePNG(_ frame: Frame, to path: String) throws(CaptureError) {
    // libpng has no XRGB input format (BGRA would take the padding byte as
    // alpha), so the frame is converted to packed RGB first.
    let rowBytes = frame.width * 3
    let rgb = UnsafeMutableRawPointer.allocate(byteCount: rowBytes * frame.height, alignment: 16)
    defer { rgb.deallocate() }
    for y in 0..<frame.height {
        convertRowToRGB(frame, y: y, into: rgb + y * rowBytes)
    }
    var image = png_image()
    image.version = UInt32(PNG_IMAGE_VERSION)
    image.width = UInt32(frame.width)
    image.height = UInt32(frame.height)
    image.format = UInt32(PNG_FORMAT_RGB)
    image.flags = UInt32(PNG_IMAGE_FLAG_FAST)
    let ok = png_image_write_to_file(&image, path, 0, rgb, Int32(rowBytes), nil)
    if ok == 0 {
        let message = withUnsafeBytes(of: image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        png_image_free(&image)
        throw CaptureError(path: path, reason: message.isEmpty ? "libpng failed" : message)
    }
}

/// PPM P6 (binary RGB, maxval 255), written in chunks of rows so no copy of
/// the whole frame is made.
func writePPM(_ frame: Frame, to path: String) throws(CaptureError) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw CaptureError(path: path, reason: String(cString: strerror(errno))) }
    defer { close(fd) }
    let header = Array("P6\n\(frame.width) \(frame.height)\n255\n".utf8)
    let rowBytes = frame.width * 3
    let rowsPerChunk = max(1, 65536 / rowBytes)
    let chunk = UnsafeMutableRawPointer.allocate(byteCount: max(rowBytes * rowsPerChunk, header.count), alignment: 16)
    defer { chunk.deallocate() }
    chunk.copyMemory(from: header, byteCount: header.count)
    try writeAll(fd, UnsafeRawBufferPointer(start: chunk, count: header.count), path: path)
    var y = 0
    while y < frame.height {
        let rows = min(rowsPerChunk, frame.height - y)
        for r in 0..<rows { convertRowToRGB(frame, y: y + r, into: chunk + r * rowBytes) }
        try writeAll(fd, UnsafeRawBufferPointer(start: chunk, count: rows * rowBytes), path: path)
        y += rows
    }
}

/// One frame row (XRGB little-endian words) as packed R, G, B bytes.
@inline(__always)
func convertRowToRGB(_ frame: Frame, y: Int, into out: UnsafeMutableRawPointer) {
    let src = (frame.pixels + y * frame.stride).assumingMemoryBound(to: UInt8.self)
    let dst = out.assumingMemoryBound(to: UInt8.self)
    for x in 0..<frame.width {
        // Memory order of 0x00RRGGBB little-endian: B, G, R, X.
        dst[3 * x] = src[4 * x + 2]
        dst[3 * x + 1] = src[4 * x + 1]
        dst[3 * x + 2] = src[4 * x]
    }
}

func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws(CaptureError) {
    var offset = 0
    while offset < bytes.count {
        let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if n < 0 {
            if errno == EINTR { continue }
            throw CaptureError(path: path, reason: String(cString: strerror(errno)))
        }
        offset += n
    }
}
