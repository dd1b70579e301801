// libFuzzer target: the QMP JSON parser on any bytes. A text that parses
// must serialize to a text that parses back to the same value.
import Control
import FuzzSupport

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    guard let value = try? JSON.parse(raw, limits: .init(maxBytes: 1 << 16, maxDepth: 64)) else { return }
    let text = value.serializedBytes
    guard let again = try? JSON.parse(text, limits: .init(maxBytes: 1 << 20, maxDepth: 64)) else {
        return require(false, "serialized form does not parse: \(String(decoding: text, as: UTF8.self))")
    }
    require(again == value, "round trip changed \(value) into \(again)")
    _ = value.prettySerialized
}

@_cdecl("FuzzJSON_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
