import Testing
import Glibc
import CPNG
import Damage
import EventLoop
import Console
@testable import Displays

/// Decodes a PNG with libpng's simplified read API into packed RGB.
func decodeWithLibpng(_ path: String) throws -> (width: Int, height: Int, rgb: [UInt8]) {
    var image = png_image()
    image.version = UInt32(PNG_IMAGE_VERSION)
    guard png_image_begin_read_from_file(&image, path) != 0 else { throw TestFailure("libpng cannot open \(path)") }
    image.format = UInt32(PNG_FORMAT_RGB)
    let w = Int(image.width), h = Int(image.height)
    var rgb = [UInt8](repeating: 0, count: w * h * 3)
    let ok = rgb.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, Int32(w * 3), nil) }
    guard ok != 0 else { throw TestFailure("libpng cannot decode \(path)") }
    return (w, h, rgb)
}

@Suite struct CaptureTests {
    func syntheticFrame(width: Int = 173, height: Int = 61) -> Frame {
        let frame = Frame(width: width, height: height)
        paint(frame, frame.bounds, seed: 3)
        fill(frame, Rect(x: 10, y: 5, width: 20, height: 9), rgb: 0x00FF_0000)
        fill(frame, Rect(x: 40, y: 20, width: 7, height: 30), rgb: 0xFF00_FF00)
        return frame
    }

    @Test func pngDecodesToTheFrameByteForByteInLibpngAndPillow() throws {
        let dir = try makeTempDir("cap")
        defer { removeTree(dir) }
        let frame = syntheticFrame()
        let path = dir + "/shot.png"
        try capture(frame, to: path, format: .png)
        let expected = rgbBytes(frame)
        let viaLibpng = try decodeWithLibpng(path)
        #expect(viaLibpng.width == frame.width && viaLibpng.height == frame.height)
        #expect(firstDifference(viaLibpng.rgb, expected, width: frame.width) == nil)
        let viaPillow = try decodeWithPillow(path)
        #expect(viaPillow.width == frame.width && viaPillow.height == frame.height)
        #expect(firstDifference(viaPillow.rgb, expected, width: frame.width) == nil)
    }

    @Test func ppmIsAP6HeaderAndDecodesInPillowByteForByte() throws {
        let dir = try makeTempDir("cap")
        defer { removeTree(dir) }
        let frame = syntheticFrame(width: 1000, height: 90) // several 64 KiB chunks, a partial last one
        let path = dir + "/shot.ppm"
        try capture(frame, to: path, format: .ppm)
        let bytes = try #require(readFile(path))
        let header = Array("P6\n1000 90\n255\n".utf8)
        #expect(Array(bytes.prefix(header.count)) == header)
        #expect(bytes.count == header.count + 1000 * 90 * 3)
        let decoded = try decodeWithPillow(path)
        #expect(decoded.width == 1000 && decoded.height == 90)
        #expect(firstDifference(decoded.rgb, rgbBytes(frame), width: 1000) == nil)
    }

    @Test func captureToAnUnwritablePathThrowsWithThePath() throws {
        let frame = Frame(width: 4, height: 4)
        for format in CaptureFormat.allCases {
            #expect(throws: CaptureError.self) {
                try capture(frame, to: "/nonexistent-dir/x.\(format)", format: format)
            }
        }
        do {
            try capture(frame, to: "/nonexistent-dir/x.ppm", format: .ppm)
        } catch {
            #expect(error.description.contains("/nonexistent-dir/x.ppm"))
        }
    }

    @Test func formatNamesParse() {
        #expect(CaptureFormat(name: "png") == .png)
        #expect(CaptureFormat(name: "PPM") == .ppm)
        #expect(CaptureFormat(name: "jpeg") == nil)
    }
}
