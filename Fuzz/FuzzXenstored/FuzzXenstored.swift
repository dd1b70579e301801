// libFuzzer target: the embedded xenstored's wire parser and request
// handling, fed through real server connections.
//
// Input: byte 0 picks the caller (dom0, or guest domain 5 whose home
// /local/domain/5 it owns, as libxl makes it); the rest is written to the
// connection in pieces while the server's loop runs, then the write side is
// shut. A dom0 connection watching "/" receives every event. The quotas are
// set low so that inputs reach them. After each input the server's
// bookkeeping must be consistent (`consistencyProblems`), and it must
// neither crash nor spin.
//
// Per input the work is the server's own: one event loop serves the whole
// run, each input gets a fresh server on it (store, domains, quotas) and two
// socket pairs; nothing is set up through the loop before the input. (The
// first version made a loop, wrote the set-up as requests and drained with a
// fresh 64 KiB buffer each time: 330-615 inputs/s.)
#if canImport(Glibc)
import Glibc
#endif
import CShims
import EventLoop
import FuzzSupport
import Support
@testable import XenStore

/// A request in the wire format (header + payload).
func message(_ type: XSMessageType, _ strings: [String], reqID: UInt32 = 0) -> [UInt8] {
    var payload: [UInt8] = []
    for s in strings { payload += Array(s.utf8) + [0] }
    var out: [UInt8] = []
    for v in [type.rawValue, reqID, 0, UInt32(payload.count)] { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    return out + payload
}

let loop = try! EventLoop()
nonisolated(unsafe) var sink = [UInt8](repeating: 0, count: 1 << 16)

let limits: XenstoreServer.Limits = {
    var l = XenstoreServer.Limits()
    l.maxQueuedBytes = 1 << 16
    l.maxQueuedBytesPerDomain = 1 << 17
    l.maxNodesPerDomain = 40
    l.maxWatchesPerDomain = 4
    l.maxTransactionsPerDomain = 2
    l.maxTransactionNodes = 24
    l.maxMemoryPerDomain = 24 << 10
    return l
}()

/// The requests that make the guest's home, sent by dom0 ahead of the input.
let guestHome = message(.mkdir, ["/local/domain/5"]) + message(.setPerms, ["/local/domain/5", "n5", "r0"])
let watchAll = message(.watch, ["/", "all"]) + message(.watch, ["@releaseDomain", "rel"])

func writeSome(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> Int {
    bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
}

/// Reads and drops what the server sent; whether there was anything.
@discardableResult
func drain(_ fd: Int32) -> Bool {
    sink.withUnsafeMutableBytes { buffer in
        var any = false
        while recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT)) > 0 { any = true }
        return any
    }
}

/// Runs the loop until a round finds nothing to do and nothing to read.
func settle(_ a: Int32, _ b: Int32) -> Bool {
    for _ in 0..<10_000 {
        let events = loop.runOnce(timeoutMilliseconds: 0)
        let readA = drain(a), readB = drain(b)
        if events == 0 && !readA && !readB { return true }
    }
    return false
}

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    guard let first = raw.first else { return }
    let guest = first & 1 == 1
    let data = Array(raw.dropFirst())
    let server = XenstoreServer(loop: loop, limits: limits)
    let watcher = try! server.connect(asDomain: 0)
    let fd = try! server.connect(asDomain: guest ? 5 : 0)
    _ = cshims_set_nonblocking(watcher)
    _ = cshims_set_nonblocking(fd)
    _ = writeSome(watcher, (guest ? watchAll + guestHome : watchAll)[...])
    require(settle(watcher, fd), "xenstored kept busy with the set-up")

    var position = 0
    var rounds = 0
    while position < data.count && rounds < 10_000 {
        rounds += 1
        let n = writeSome(fd, data[position..<min(position + 1024, data.count)])
        if n > 0 { position += n } else if n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { break }
        loop.runOnce(timeoutMilliseconds: 0)
        drain(fd)
        drain(watcher)
    }
    shutdown(fd, Int32(SHUT_WR))
    // Let the server take in the rest; an idle server has nothing to do.
    require(settle(watcher, fd), "xenstored kept busy after the client went quiet")
    let problems = server.consistencyProblems()
    require(problems.isEmpty, "inconsistent after the input: \(problems)")
    server.stop()
    close(fd)
    close(watcher)
}

@_cdecl("FuzzXenstored_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    // A killed connection logs a warning: runFuzzer renders it and drops it.
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
