// libFuzzer target: the embedded xenstored's wire parser and request
// handling, fed through a real server connection.
//
// Input: byte 0 picks the caller (dom0, or guest domain 5 whose home
// /local/domain/5 exists, as libxl makes it); the rest is written to the
// connection in pieces while the server's loop runs, then the write side is
// shut. A dom0 connection watching "/" receives every event. Replies are
// read and dropped. The server must neither crash nor spin.
#if canImport(Glibc)
import Glibc
#endif
import CShims
import EventLoop
import FuzzSupport
import XenStore

/// A request in the wire format (header + payload).
func message(_ type: XSMessageType, _ strings: [String], reqID: UInt32 = 0) -> [UInt8] {
    var payload: [UInt8] = []
    for s in strings { payload += Array(s.utf8) + [0] }
    var out: [UInt8] = []
    for v in [type.rawValue, reqID, 0, UInt32(payload.count)] { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    return out + payload
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Int {
    bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

func drain(_ fd: Int32) {
    var buffer = [UInt8](repeating: 0, count: 65536)
    while buffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
}

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    guard let first = raw.first else { return }
    let guest = first & 1 == 1
    let data = Array(raw.dropFirst())
    let loop = try! EventLoop()
    var limits = XenstoreServer.Limits()
    limits.maxQueuedBytes = 1 << 16
    let server = XenstoreServer(loop: loop, limits: limits)
    let watcher = try! server.connect(asDomain: 0)
    _ = cshims_set_nonblocking(watcher)
    var setup = message(.watch, ["/", "all"]) + message(.watch, ["@releaseDomain", "rel"])
    if guest {
        setup += message(.mkdir, ["/local/domain/5"]) + message(.setPerms, ["/local/domain/5", "n5", "r0"])
    }
    _ = writeAll(watcher, setup)
    for _ in 0..<8 { loop.runOnce(timeoutMilliseconds: 0) }
    drain(watcher)

    let fd = try! server.connect(asDomain: guest ? 5 : 0)
    _ = cshims_set_nonblocking(fd)
    var position = 0
    var rounds = 0
    while position < data.count && rounds < 10_000 {
        rounds += 1
        let n = writeAll(fd, Array(data[position..<min(position + 1024, data.count)]))
        if n > 0 { position += n } else if n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { break }
        loop.runOnce(timeoutMilliseconds: 0)
        drain(fd)
        drain(watcher)
    }
    shutdown(fd, Int32(SHUT_WR))
    // Let the server take in the rest; an idle server has nothing to do.
    var idle = 0
    rounds = 0
    while idle < 3 && rounds < 10_000 {
        rounds += 1
        idle = loop.runOnce(timeoutMilliseconds: 0) == 0 ? idle + 1 : 0
        drain(fd)
        drain(watcher)
    }
    require(rounds < 10_000, "xenstored kept busy after the client went quiet")
    server.stop()
    close(fd)
    close(watcher)
}

@_cdecl("FuzzXenstored_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
