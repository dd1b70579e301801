// libFuzzer target: the QMP stream splitter (and the parser behind it) on a
// byte stream cut into reads at fuzzer-chosen places.
//
// Input: byte 0 seeds the read sizes; the rest is the stream. The stream is
// split twice, in one read and in many small ones; both must give the same
// pieces (unless the stream is too long to resynchronise), each message
// piece is balanced and the buffered bytes stay within the limit.
import Control
import FuzzSupport

let maxBytes = 512

func split(_ stream: ArraySlice<UInt8>, readSizes seed: UInt8) -> ([JSONStreamSplitter.Piece], Bool) {
    var splitter = JSONStreamSplitter(maxBytes: maxBytes)
    var pieces: [JSONStreamSplitter.Piece] = []
    var tooLong = false
    var position = stream.startIndex
    var size = Int(seed)
    while position < stream.endIndex {
        let n = seed == 0 ? stream.count : max(size % 17, 1)
        size = size &* 31 &+ 7
        let end = min(position + n, stream.endIndex)
        splitter.append(stream[position..<end])
        position = end
        while let piece = splitter.next() {
            if piece == .tooLong { tooLong = true }
            pieces.append(piece)
        }
        require(splitter.pendingBytes <= maxBytes + 1 + n || tooLong, "\(splitter.pendingBytes) bytes buffered")
    }
    return (pieces, tooLong)
}

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    let bytes = Array(raw)
    guard let seed = bytes.first else { return }
    let stream = bytes.dropFirst()
    let (whole, wholeTooLong) = split(stream, readSizes: 0)
    let (pieces, tooLong) = split(stream, readSizes: seed | 1)
    if !wholeTooLong && !tooLong {
        require(whole == pieces, "pieces depend on how the stream was read")
    }
    for piece in pieces {
        guard case .message(let m) = piece else { continue }
        require(m.first == UInt8(ascii: "{") || m.first == UInt8(ascii: "["), "message starts with \(m.first ?? 0)")
        require(m.count <= maxBytes + 1, "message of \(m.count) bytes")
        if let request = try? JSON.parse(m, limits: .init(maxBytes: maxBytes, maxDepth: 64)) {
            _ = request["execute"]?.stringValue
            _ = request["arguments"]?.objectValue
        }
    }
}

@_cdecl("FuzzQMPStream_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
