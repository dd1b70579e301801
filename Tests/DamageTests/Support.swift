import Glibc
import CShims
import Damage
import WriteFault
import CWriteFault
import Synchronization

/// SplitMix64: reproducible randomness (the seed is in the test's name/arguments).
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A page-aligned test region: anonymous memory or a memfd mapping.
final class Region {
    let base: UnsafeMutableRawPointer
    let byteCount: Int
    private let fd: Int32

    init(bytes: Int, memfd: Bool = false) {
        let page = Int(getpagesize())
        byteCount = (bytes + page - 1) / page * page
        if memfd {
            fd = wf_memfd("damage-test", byteCount)
            precondition(fd >= 0)
            base = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        } else {
            fd = -1
            base = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        }
        precondition(base != MAP_FAILED)
    }

    deinit {
        munmap(base, byteCount)
        if fd >= 0 { close(fd) }
    }

    func store(_ value: UInt8, at offset: Int) {
        base.storeBytes(of: value, toByteOffset: offset, as: UInt8.self)
    }
}

/// A consumer's copy of a region, kept in step only through what a tracker
/// reports: if any write were lost, the copy would differ at the end.
final class Mirror {
    let shadow: UnsafeMutableRawPointer
    let byteCount: Int
    init(of region: Region) {
        byteCount = region.byteCount
        shadow = .allocate(byteCount: byteCount, alignment: 64)
        shadow.copyMemory(from: region.base, byteCount: byteCount)
    }
    deinit { shadow.deallocate() }

    func apply(_ runs: [PageRun], from region: Region, pageSize: Int) {
        for run in runs {
            let start = run.first * pageSize
            (shadow + start).copyMemory(from: region.base + start, byteCount: run.count * pageSize)
        }
    }

    /// Copies the pixel bytes of `rects` (framebuffer coordinates).
    func apply(_ rects: [Rect], from region: Region, geometry g: FramebufferGeometry) {
        for r in rects {
            for y in r.y ..< r.maxY {
                let start = g.offset + y * g.lineLength + r.x * g.bytesPerPixel
                (shadow + start).copyMemory(from: region.base + start, byteCount: r.width * g.bytesPerPixel)
            }
        }
    }

    /// The first differing byte offset, or nil.
    func firstDifference(from region: Region) -> Int? {
        guard memcmp(shadow, region.base, byteCount) != 0 else { return nil }
        for i in 0 ..< byteCount where shadow.load(fromByteOffset: i, as: UInt8.self)
            != region.base.load(fromByteOffset: i, as: UInt8.self) {
            return i
        }
        return nil
    }
}

/// Runs `body` on `count` threads and waits for all of them.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Box: @unchecked Sendable {
        let body: @Sendable (Int) -> Void; let index: Int
        init(_ b: @escaping @Sendable (Int) -> Void, _ i: Int) { body = b; index = i }
    }
    var threads: [pthread_t] = []
    for i in 0 ..< count {
        var t = pthread_t()
        let arg = Unmanaged.passRetained(Box(body, i)).toOpaque()
        let rc = pthread_create(&t, nil, { p in
            let box = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue()
            box.body(box.index)
            return nil
        }, arg)
        precondition(rc == 0)
        threads.append(t)
    }
    for t in threads { pthread_join(t, nil) }
}

/// A flag threads can poll.
final class AtomicFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
