import Testing
@testable import Devices
import XenProtocol

@Suite struct GeometryTests {
    let mib = 1 << 20

    @Test func validGeometryIsAcceptedAndClamped() throws {
        let g = try VfbGeometry.configure(fbLen: 2 * mib, width: 800, height: 600, depth: 32, stride: 3200, offset: 0)
        #expect(g == VfbGeometry(width: 800, height: 600, depth: 32, stride: 3200, offset: 0))
        let clamped = try VfbGeometry.configure(fbLen: 2 * mib, width: 5000, height: 5000, depth: 16, stride: 1000, offset: 1000)
        #expect(clamped.width == 500 && clamped.height == (2 * mib - 1000) / 1000)
    }

    @Test(arguments: [0, 1, 7, 12, 15, 31, 33, 64, 255, -32])
    func depthsOtherThan8_16_24_32AreRefused(depth: Int) {
        #expect(throws: GeometryError.badDepth(depth)) {
            try VfbGeometry.configure(fbLen: 2 * mib, width: 800, height: 600, depth: depth, stride: 3200, offset: 0)
        }
    }

    @Test(arguments: [0, -1, -3200, Int(Int32.min), 2 * (1 << 20) + 1, Int(Int32.max)])
    func strideOutside1ToFbLenIsRefused(stride: Int) {
        #expect(throws: GeometryError.badStride(stride, fbLen: 2 * mib)) {
            try VfbGeometry.configure(fbLen: 2 * mib, width: 800, height: 600, depth: 32, stride: stride, offset: 0)
        }
    }

    @Test(arguments: [-1, Int(Int32.min), 2 * (1 << 20), Int(Int32.max)])
    func offsetOutsideTheFramebufferIsRefused(offset: Int) {
        #expect(throws: GeometryError.badOffset(offset, fbLen: 2 * mib)) {
            try VfbGeometry.configure(fbLen: 2 * mib, width: 800, height: 600, depth: 32, stride: 3200, offset: offset)
        }
    }

    @Test func widthTimesHeightTimesDepthCannotOverflow() throws {
        // i32 maxima: the result is clamped to what the mapped length holds.
        let g = try VfbGeometry.configure(fbLen: 2 * mib, width: Int(Int32.max), height: Int(Int32.max),
                                                  depth: 32, stride: 3200, offset: 0)
        #expect(g.width == 800 && g.height == 655)
        #expect(g.offset + g.height * g.stride <= 2 * mib)
        #expect(throws: GeometryError.self) {
            try VfbGeometry.configure(fbLen: 2 * mib, width: -5, height: 600, depth: 32, stride: 3200, offset: 0)
        }
        #expect(throws: GeometryError.self, "wider than any display") {
            try VfbGeometry.configure(fbLen: 256 * mib, width: 40000, height: 10, depth: 8, stride: 40000, offset: 0)
        }
    }

    /// A page header as a frontend writes it.
    func header(width: Int32 = 800, height: Int32 = 600, lineLength: UInt32 = 3200, memLength: UInt32,
                depth: UInt8 = 32, pd: [UInt64] = [5], wide: Bool = true) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 1024)
        func set<T: FixedWidthInteger>(_ v: T, at o: Int) {
            bytes.withUnsafeMutableBytes { $0.storeBytes(of: v.littleEndian, toByteOffset: o, as: T.self) }
        }
        set(width, at: XenfbLayout.width); set(height, at: XenfbLayout.height)
        set(lineLength, at: XenfbLayout.lineLength); set(memLength, at: XenfbLayout.memLength)
        set(depth, at: XenfbLayout.depth)
        for (i, f) in pd.enumerated() {
            if wide { set(f, at: XenfbLayout.pd64 + 8 * i) } else { set(UInt32(truncatingIfNeeded: f), at: XenfbLayout.pd32 + 4 * i) }
        }
        return bytes
    }

    @Test func theDirectoryListComesFromTheChosenLayout() throws {
        let (fb, dirs, g) = try VfbDevice.describeFramebuffer(header: header(memLength: 2 << 20), protocol: "x86_64-abi", limit: 32 << 20)
        #expect(fb.pages == 512 && fb.entrySize == 8 && dirs == [5] && g.height == 600)
        let (fb32, dirs32, _) = try VfbDevice.describeFramebuffer(header: header(memLength: 2 << 20, pd: [7], wide: false),
                                                                 protocol: "x86_32-abi", limit: 32 << 20)
        #expect(fb32.entrySize == 4 && dirs32 == [7])
        // No protocol key: pd[1] of a 32-bit guest (offset 40) is 0, so the 32-bit layout is used.
        let (guess, guessDirs, _) = try VfbDevice.describeFramebuffer(header: header(memLength: 2 << 20, pd: [9], wide: false),
                                                                     protocol: nil, limit: 32 << 20)
        #expect(guess.entrySize == 4 && guessDirs == [9])
    }

    @Test func memLengthOverTheConfiguredLimitIsRefused() {
        #expect(throws: GeometryError.memLengthOverLimit(33 << 20, limit: 32 << 20)) {
            try VfbDevice.describeFramebuffer(header: header(memLength: 33 << 20), protocol: "x86_64-abi", limit: 32 << 20)
        }
        #expect(throws: GeometryError.emptyFramebuffer) {
            try VfbDevice.describeFramebuffer(header: header(memLength: 0), protocol: "x86_64-abi", limit: 32 << 20)
        }
        var config = BackendConfig()
        config.maxFramebufferBytes = 4 << 30
        #expect(config.framebufferLimit == 512 << 20, "never more than QEMU's fb_len_max")
    }

    @Test func pageDirectoriesInRingSpaceAreRefused() throws {
        // 246 MiB = 123 directories: the last one that ends before the IN ring.
        _ = try VfbDevice.describeFramebuffer(header: header(memLength: 246 << 20, pd: Array(1...123)), protocol: "x86_64-abi", limit: 512 << 20)
        #expect(throws: GeometryError.tooManyDirectories(124, max: 123)) {
            try VfbDevice.describeFramebuffer(header: header(memLength: 247 << 20), protocol: "x86_64-abi", limit: 512 << 20)
        }
    }
}
