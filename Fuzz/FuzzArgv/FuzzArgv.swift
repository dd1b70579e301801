// libFuzzer target: the device model's command-line parser (QEMU-style argv
// as libxl writes it) and the display option strings it hands on.
//
// Input: byte 0 picks the mode (device model or demo); the rest is split at
// NUL bytes into arguments.
import Control
import Displays
import FuzzSupport

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    guard let first = raw.first else { return }
    let mode: DeviceModelOptions.Mode = first & 1 == 0 ? .deviceModel : .demo
    let args = raw.dropFirst().split(separator: 0, omittingEmptySubsequences: false).map {
        String(decoding: $0, as: UTF8.self)
    }
    guard let options = try? DeviceModelOptions.parse(args, mode: mode) else { return }
    if let vnc = options.vnc { _ = try? VNCOptions(spec: vnc) }
    for case .png(let spec) in options.displays { _ = try? PNGDisplay.Options(spec: spec) }
}

@_cdecl("FuzzArgv_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
