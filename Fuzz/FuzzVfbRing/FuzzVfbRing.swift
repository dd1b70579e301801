// libFuzzer target: the vfb backend's shared-page header check and OUT ring.
//
// Input: byte 0 picks the `protocol` key (none, x86_32-abi, x86_64-abi, junk);
// the next 40 bytes are the head of `struct xenfb_page` (ring indices,
// width, height, line_length, mem_length, depth); then a u32 `out_cons` and
// two rounds of { u32 out_prod, a count n, n events of 40 bytes written
// into the slots from the backend's consumer index on }. Each round is parsed by
// `processOutRing` and copied into the frame by `flush` (the damage
// pipeline's tick), then the invariants are checked: the geometry stays
// inside the mapped framebuffer, every pending rectangle inside the
// geometry, and after the tick the frame has the geometry's size.
import Devices
import EventLoop
import Console
import FuzzSupport
import Host
import XenProtocol

let fbLimit = 64 << 10
let fallback = try! VfbGeometry.configure(fbLen: 64 << 10, width: 64, height: 48, depth: 32, stride: 256, offset: 0)

/// One loop for every input: the pipeline needs one for its timers, and
/// making one per input (an epoll, a timerfd, an eventfd) was most of the cost.
let loop = try! EventLoop()

/// Guest memory made once: the shared page is cleared for every input; the
/// framebuffer (read-only to the backend) keeps its pixels.
nonisolated(unsafe) let pageMemory = allocateGuestMemory(bytes: 4096)
nonisolated(unsafe) let framebufferMemory: UnsafeMutableRawPointer = {
    let p = allocateGuestMemory(bytes: fbLimit)
    // Some pixels, so the copy has something to convert.
    for i in stride(from: 0, to: fbLimit, by: 97) { p.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
    return p
}()

func checkInvariants(_ vfb: VfbDevice, _ console: Console, fbLen: Int, afterTick: Bool) {
    guard let g = vfb.geometry else { return require(false, "geometry lost") }
    require([8, 16, 24, 32].contains(g.depth), "depth \(g.depth)")
    require(g.width > 0 && g.height > 0 && g.stride > 0 && g.offset >= 0, "geometry \(g)")
    require(g.width * g.bytesPerPixel <= g.stride, "row \(g) wider than stride")
    require(g.offset + g.height * g.stride <= fbLen, "geometry \(g) leaves the \(fbLen)-byte framebuffer")
    if afterTick {
        require(console.frame.width == g.width && console.frame.height == g.height, "frame \(console.frame.width)x\(console.frame.height) vs \(g)")
    }
    for r in vfb.pendingRects {
        require(r.x >= 0 && r.y >= 0 && r.width > 0 && r.height > 0 && r.maxX <= g.width && r.maxY <= g.height,
                "queued \(r) outside \(g)")
    }
}

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    var input = FuzzInput(raw)
    let proto: String? = [nil, "x86_32-abi", "x86_64-abi", "junk"][Int(input.u8() & 3)]
    pageMemory.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
    let page = GuestMapping(base: pageMemory, byteCount: 4096, writable: true) { _, _ in }
    let head = input.take(40)
    _ = head.withUnsafeBytes { page.write($0, at: 0) }

    var fbLen = fallback.offset + fallback.height * fallback.stride
    var geometry = fallback
    if let header = page.bytes(at: 0, count: XenfbLayout.inRingOffset),
       let (layout, directories, g) = try? VfbDevice.describeFramebuffer(header: header, protocol: proto, limit: fbLimit) {
        require(layout.length > 0 && layout.length <= fbLimit, "length \(layout.length)")
        require(layout.pages * 4096 >= layout.length, "pages \(layout.pages) for \(layout.length)")
        require(directories.count * (4096 / layout.entrySize) >= layout.pages, "directories \(directories.count)")
        let pdEnd = (layout.entrySize == 8 ? XenfbLayout.pd64 : XenfbLayout.pd32) + directories.count * layout.entrySize
        require(pdEnd <= XenfbLayout.inRingOffset, "page directory reaches \(pdEnd), into the ring")
        fbLen = layout.length
        geometry = g
    }
    let framebuffer = GuestMapping(base: framebufferMemory, byteCount: fbLen, writable: false) { _, _ in }

    let console = Console(width: 16, height: 16)
    var config = BackendConfig()
    config.maxFramebufferBytes = fbLimit
    let vfb = VfbDevice(console: console, config: config)
    page.store(input.u32(), at: XenfbLayout.outCons)
    vfb.attach(page: page, framebuffer: framebuffer, fbLen: fbLen, geometry: geometry, loop: loop)
    checkInvariants(vfb, console, fbLen: fbLen, afterTick: false)
    var cons = page.load(UInt32.self, at: XenfbLayout.outCons) ?? 0
    for _ in 0..<2 {
        let prod = input.u32()
        // Fill slots from the consumer on, as a frontend would (at most a ring's worth).
        let count = Int(input.u8()) % (XenfbLayout.outRingLength + 1)
        for i in 0..<count {
            let event = input.take(XenfbLayout.eventSize)
            let slot = (cons &+ UInt32(i)) % UInt32(XenfbLayout.outRingLength)
            _ = event.withUnsafeBytes { page.write($0, at: XenfbLayout.outRingOffset + Int(slot) * XenfbLayout.eventSize) }
        }
        page.store(prod, at: XenfbLayout.outProd)
        vfb.processOutRing()
        checkInvariants(vfb, console, fbLen: fbLen, afterTick: false)
        vfb.flush()
        checkInvariants(vfb, console, fbLen: fbLen, afterTick: true)
        cons = page.load(UInt32.self, at: XenfbLayout.outCons) ?? 0
    }
    page.unmap()
    framebuffer.unmap()
}

@_cdecl("FuzzVfbRing_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
