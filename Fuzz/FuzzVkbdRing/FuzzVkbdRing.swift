// libFuzzer target: the vkbd backend's IN-ring producer and OUT-ring
// consumer against a guest that writes anything into `in_cons`, `out_prod`
// and the ring slots between the backend's writes.
//
// Input: byte 0 picks the pointer mode; then operations, one byte each with
// their operands: set in_cons, set out_prod and notify, scribble on a slot,
// send a key / absolute / relative / wheel event, resize the frame.
// Invariants: the backend's producer never runs more than a ring ahead of a
// consistent consumer, the waiting queue stays under its cap, and nothing
// it writes leaves the page (GuestMapping would refuse it).
import Devices
import Console
import FuzzSupport
import Host
import XenProtocol

func fuzzOne(_ raw: UnsafeRawBufferPointer) {
    var input = FuzzInput(raw)
    let mode = input.u8()
    let pagePointer = allocateGuestMemory(bytes: 4096)
    let page = GuestMapping(base: pagePointer, byteCount: 4096, writable: true) { p, _ in p.deallocate() }
    let console = Console(width: 64, height: 48)
    var config = BackendConfig()
    config.inputQueueLimit = 300
    let vkbd = VkbdDevice(console: console, config: config)
    page.store(input.u32(), at: XenkbdLayout.inProd)
    page.store(page.load(UInt32.self, at: XenkbdLayout.inProd) ?? 0, at: XenkbdLayout.inCons)
    vkbd.attach(page: page, absolutePointer: mode & 1 != 0, rawPointer: mode & 2 != 0)
    var steps = 0
    while !input.isAtEnd && steps < 4096 {
        steps += 1
        switch input.u8() % 9 {
        case 0: page.store(input.u32(), at: XenkbdLayout.inCons)
        case 1:
            // A consumer that keeps up: in_cons = in_prod.
            page.store(page.load(UInt32.self, at: XenkbdLayout.inProd) ?? 0, at: XenkbdLayout.inCons)
            vkbd.guestNotified()
        case 2:
            page.store(input.u32(), at: XenkbdLayout.outProd)
            vkbd.guestNotified()
        case 3:
            let slot = Int(input.u8()) % XenkbdLayout.outRingLength
            _ = input.take(XenkbdLayout.eventSize).withUnsafeBytes {
                page.write($0, at: XenkbdLayout.outRingOffset + slot * XenkbdLayout.eventSize)
            }
        case 4: vkbd.send(.key(code: input.u32(), pressed: input.u8() & 1 == 1))
        case 5: vkbd.send(.absolute(x: input.i32(), y: input.i32()))
        case 6: vkbd.send(.relative(dx: input.i32(), dy: input.i32()))
        case 7: vkbd.send(.wheel(input.i32()))
        default:
            console.resize(width: Int(input.u8()) + 1, height: Int(input.u8()) + 1)
        }
        require(vkbd.queuedEvents <= config.inputQueueLimit, "queue \(vkbd.queuedEvents) past its cap")
    }
    page.unmap()
}

@_cdecl("FuzzVkbdRing_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzOne)
}

// Entry for libFuzzer's own main (`swift build --sanitize=fuzzer`).
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
