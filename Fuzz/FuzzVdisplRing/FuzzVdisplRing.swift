// libFuzzer target: the vdispl backend's request ring, page directories and
// the copy into the consoles (VdisplDevice.attach, processRequests, refreshNow).
//
// Input: byte 0 picks one or two connectors (bit 0) and their resolution
// (bits 1-2). Then the guest's 16 pages of memory, which grant references
// 8 to 23 name (anything else is not granted): a u8 count of edits, each
// { u8 page, u16 offset, u8 length, bytes } (directory pages and pixels).
// Then up to four rounds of { u8 connector, u8 count, count requests of 64
// bytes written into the ring from the producer index on, u8 mode, u32 }:
// mode 0 publishes req_prod after the requests, 1 writes the u32 as
// req_prod, 2 writes it as the event page's in_cons, 3 as rsp_event. Each
// round is processed and copied, then the invariants are checked: every
// limit holds, each console keeps its connector's size, at most one ring's
// worth of responses and of flip events appear, and what the device maps
// is what the guest granted.
import Console
import Devices
import EventLoop
import FuzzSupport
import Host
import Support
import XenProtocol

let memoryPages = 16
let firstRef: UInt32 = 8
let loop = try! EventLoop()

/// Grants of a guest with 16 pages: references 8...23 are pages 0...15. A
/// map returns a copy (what the device reads; the guest cannot change it).
final class FuzzHost: Host {
    let memory: UnsafeMutableRawPointer
    var domid: UInt32 { 0 }
    private(set) var mappedGrants = 0

    init(memory: UnsafeMutableRawPointer) { self.memory = memory }

    func openEventChannels() throws(HostError) -> EventChannels { throw .unavailable("no event channels in the fuzz target") }
    func mapForeign(domid: UInt32, frames: [UInt64], writable: Bool) throws(HostError) -> GuestMapping {
        throw .unavailable("no foreign mapping in the fuzz target")
    }

    func mapGrants(domid: UInt32, refs: [UInt32], writable: Bool) throws(HostError) -> GuestMapping {
        require(!writable, "a buffer or directory mapped writable")
        require(refs.count <= 1 << 14, "\(refs.count) grants in one map")
        guard domid == 1, !refs.isEmpty else { throw .invalidArgument("domain \(domid)") }
        let copy = allocateGuestMemory(bytes: refs.count * 4096)
        for (i, r) in refs.enumerated() {
            guard r >= firstRef, r < firstRef + UInt32(memoryPages) else {
                copy.deallocate()
                throw .grantMapFailed(domid: domid, ref: r, reason: "not granted")
            }
            (copy + i * 4096).copyMemory(from: memory + Int(r - firstRef) * 4096, byteCount: 4096)
        }
        mappedGrants += refs.count
        return GuestMapping(base: copy, byteCount: refs.count * 4096, writable: false) { p, _ in p.deallocate() }
    }
}

func page() -> GuestMapping {
    GuestMapping(base: allocateGuestMemory(bytes: 4096), byteCount: 4096, writable: true) { p, _ in p.deallocate() }
}

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    var input = FuzzInput(raw)
    let first = input.u8()
    let resolutions = [DisplifResolution(width: 16, height: 8), DisplifResolution(width: 64, height: 48),
                       DisplifResolution(width: 8, height: 2), DisplifResolution(width: 33, height: 7)]
    let count = 1 + Int(first & 1)
    let chosen = (0..<count).map { resolutions[(Int(first >> 1) + $0) & 3] }

    let memory = allocateGuestMemory(bytes: memoryPages * 4096)
    defer { memory.deallocate() }
    for i in stride(from: 0, to: memoryPages * 4096, by: 61) { memory.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
    for _ in 0..<Int(input.u8() % 9) {
        let p = Int(input.u8()) % memoryPages, offset = Int(input.u16()) % 4096
        let bytes = input.take(Int(input.u8()))
        let n = min(bytes.count, 4096 - offset)
        bytes.withUnsafeBytes { (memory + p * 4096 + offset).copyMemory(from: $0.baseAddress!, byteCount: n) }
    }

    var config = BackendConfig()
    config.vdisplMaxBuffers = 4
    config.vdisplMaxFramebuffers = 6
    config.vdisplMaxMappedBytes = 12 * 4096
    let consoles = Consoles(primary: Console(width: 4, height: 4), limit: 3)
    let device = VdisplDevice(consoles: consoles, config: config)
    let host = FuzzHost(memory: memory)
    let pages = chosen.map { _ in (request: page(), events: page()) }
    defer { for p in pages { p.request.unmap(); p.events.unmap() } }
    do {
        try device.attach(resolutions: chosen, pages: pages, host: host, domid: 1, loop: loop)
    } catch {
        require(false, "attach failed: \(error)")
    }
    var prods = [UInt32](repeating: 0, count: count)
    for _ in 0..<4 where !input.isAtEnd {
        let c = Int(input.u8()) % count
        let ring = pages[c].request
        let n = Int(input.u8()) % 33
        for i in 0..<n {
            let e = RingEntry64(bytes: input.take(64))
            e.write(to: ring, at: SharedRingLayout.headerSize + Int((prods[c] &+ UInt32(i)) & 31) * 64)
        }
        prods[c] &+= UInt32(n)
        let mode = input.u8() & 3, value = input.u32()
        switch mode {
        case 1: ring.store(value, at: SharedRingLayout.reqProd)
        case 2: pages[c].events.store(value, at: DisplifLayout.eventInCons)
        case 3: ring.store(value, at: SharedRingLayout.rspEvent)
        default: break
        }
        if mode != 1 { ring.store(prods[c], at: SharedRingLayout.reqProd) }
        let rspBefore = ring.load(UInt32.self, at: SharedRingLayout.rspProd) ?? 0
        let eventsBefore = pages[c].events.load(UInt32.self, at: DisplifLayout.eventInProd) ?? 0
        device.processRequests(device.connectors[c])
        device.refreshNow()
        let rspAfter = ring.load(UInt32.self, at: SharedRingLayout.rspProd) ?? 0
        let eventsAfter = pages[c].events.load(UInt32.self, at: DisplifLayout.eventInProd) ?? 0
        require(rspAfter &- rspBefore <= 32, "\(rspAfter &- rspBefore) responses in one round")
        require(eventsAfter &- eventsBefore <= UInt32(DisplifLayout.eventRingLength), "\(eventsAfter &- eventsBefore) events in one round")
        require(device.bufferCount <= config.vdisplMaxBuffers, "\(device.bufferCount) buffers")
        require(device.framebufferCount <= config.vdisplMaxFramebuffers, "\(device.framebufferCount) framebuffers")
        require(device.mappedPages * 4096 <= config.vdisplMaxMappedBytes, "\(device.mappedPages) pages mapped")
        for (i, conn) in device.connectors.enumerated() {
            require(conn.console.frame.width == chosen[i].width && conn.console.frame.height == chosen[i].height,
                    "console \(conn.consoleIndex) is \(conn.console.frame.width)x\(conn.console.frame.height), not \(chosen[i])")
            require(conn.pendingFlipCount <= DisplifLayout.eventRingLength, "\(conn.pendingFlipCount) flips pending")
        }
    }
}

@_cdecl("FuzzVdisplRing_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
