// Shared pieces of the libFuzzer targets (see scripts/fuzz.sh).
//
// Each target exports `LLVMFuzzerTestOneInput`, which libFuzzer's own `main`
// calls when the package is built with `--sanitize=fuzzer` (scripts/fuzz.sh).
// Built with `-Xswiftc -sanitize=fuzzer` instead, SwiftPM links `main` to
// `<Module>_main`, so each target exports that too and hands its body to
// `runFuzzer`, which starts libFuzzer's driver (SwiftPM links an executable with `--defsym main=<Target>_main`). The targets
// are only in the package when XENVFB_FUZZ=1.

import Logging

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

nonisolated(unsafe) private var fuzzBody: ((UnsafeRawBufferPointer) -> Void)?

/// Runs libFuzzer with `body` as the per-input function; returns its exit code.
public func runFuzzer(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ body: @escaping (UnsafeRawBufferPointer) -> Void) -> Int32 {
    fuzzBody = body
    LoggingSystem.bootstrap { FuzzLogHandler(label: $0) }
    var argc = argc
    var argv = argv
    return withUnsafeMutablePointer(to: &argv) { argvPointer in
        LLVMFuzzerRunDriver(&argc, argvPointer) { data, size in
            fuzzBody?(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
    }
}

/// Fails the run (libFuzzer keeps the input) when an invariant is broken.
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                    file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("invariant broken: \(message())", file: file, line: line) }
}

/// Reads the fuzz input front to back; past the end every read gives zeros.
public struct FuzzInput {
    public let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ raw: UnsafeRawBufferPointer) { bytes = Array(raw) }
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var isAtEnd: Bool { position >= bytes.count }
    public var remaining: Int { max(bytes.count - position, 0) }

    public mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }

    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }

    public mutating func i32() -> Int32 { Int32(bitPattern: u32()) }

    /// The next `count` bytes (fewer at the end).
    public mutating func take(_ count: Int) -> [UInt8] {
        let n = min(max(count, 0), remaining)
        defer { position += n }
        return Array(bytes[position..<position + n])
    }

    /// Everything not read yet.
    public mutating func rest() -> [UInt8] { take(remaining) }
}

/// Zeroed memory for a simulated shared page or framebuffer, freed on unmap.
public func allocateGuestMemory(bytes: Int) -> UnsafeMutableRawPointer {
    let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 4096)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
    return p
}

/// Every message at every level is rendered (its interpolations of hostile
/// values run, as with `XENVFB_LOG=trace`) and then dropped: writing a
/// timestamped line to stderr for each refused request was up to a third of
/// a ring target's time, and libFuzzer's output is for libFuzzer.
struct FuzzLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    let label: String

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var line = "\(event.level) \(label): \(event.message)"
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { line += " \(key)=\(value)" }
        blackHole(line)
    }
}

/// Keeps the optimizer from dropping the rendering of a log line.
@inline(never)
func blackHole(_ line: String) { if line.utf8.count == Int.max { print(line) } }
