// libFuzzer target: the geometry validator (`xenfb_configure_fb`'s checks)
// on any six 32-bit values, as a RESIZE event or the shared page carries
// them, against framebuffer lengths up to the 512 MiB ceiling.
import Devices
import FuzzSupport
import XenProtocol

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    var input = FuzzInput(raw)
    while input.remaining > 0 {
        let fbLen = Int(input.u32() & ((512 << 20) - 1))
        let width = Int(input.i32()), height = Int(input.i32()), depth = Int(input.i32())
        let stride = Int(input.i32()), offset = Int(input.i32())
        guard let g = try? VfbGeometry.configure(fbLen: fbLen, width: width, height: height, depth: depth,
                                                         stride: stride, offset: offset) else { continue }
        require([8, 16, 24, 32].contains(g.depth), "depth \(g.depth)")
        require(g.depth == depth && g.stride == stride && g.offset == offset, "\(g) changed a checked value")
        require(g.width > 0 && g.height > 0, "empty \(g)")
        require(g.width <= max(width, 0) && g.height <= max(height, 0), "\(g) grew past \(width)x\(height)")
        require(g.width <= VfbGeometry.maxDimension && g.height <= VfbGeometry.maxDimension, "\(g) too large")
        require(g.width * g.bytesPerPixel <= g.stride, "\(g): row wider than stride")
        require(g.offset >= 0 && g.offset + g.height * g.stride <= fbLen, "\(g) leaves a \(fbLen)-byte framebuffer")
    }
}

@_cdecl("FuzzGeometry_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
