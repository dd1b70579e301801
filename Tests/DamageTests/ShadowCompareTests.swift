import Testing
import Glibc
import Damage

@Suite struct ShadowCompareTests {
    final class Picture {
        let buffer: PixelBuffer
        init(width: Int, height: Int, stride: Int, fill: UInt32) {
            let p = UnsafeMutableRawPointer.allocate(byteCount: stride * height, alignment: 64)
            for i in 0 ..< stride * height / 4 { p.storeBytes(of: fill, toByteOffset: i * 4, as: UInt32.self) }
            buffer = PixelBuffer(pixels: p, width: width, height: height, stride: stride)
        }
        deinit { buffer.pixels.deallocate() }
        subscript(x: Int, y: Int) -> UInt32 {
            get { buffer.pixels.load(fromByteOffset: y * buffer.stride + x * 4, as: UInt32.self) }
            set { buffer.pixels.storeBytes(of: newValue, toByteOffset: y * buffer.stride + x * 4, as: UInt32.self) }
        }
    }

    /// Property: after confirming a candidate that covers every change, the
    /// shadow equals the live picture, and the result covers exactly the
    /// changed pixels (plus at most what merging adds), within the bound.
    @Test(arguments: [UInt64(21), 22, 23, 24])
    func confirmCopiesEveryChangeAndReportsIt(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        let width = 300, height = 120
        let live = Picture(width: width, height: height, stride: width * 4 + 64, fill: 0x112233)
        let shadow = Picture(width: width, height: height, stride: width * 4, fill: 0x112233)
        for round in 0 ..< 30 {
            var changed: [(Int, Int)] = []
            var box = Rect(x: 0, y: 0, width: 0, height: 0)
            for _ in 0 ..< Int.random(in: 0 ... 40, using: &rng) {
                let x = Int.random(in: 0 ..< width, using: &rng), y = Int.random(in: 0 ..< height, using: &rng)
                live[x, y] = live[x, y] &+ 1
                changed.append((x, y))
                box = box.union(Rect(x: x, y: y, width: 1, height: 1))
            }
            // Over-reporting candidates: the bounding box plus a random extra rect.
            let extra = Rect(x: Int.random(in: 0 ..< width, using: &rng), y: Int.random(in: 0 ..< height, using: &rng), width: 50, height: 30)
            let out = ShadowCompare.confirm([box, extra], live: live.buffer, shadow: shadow.buffer, maxRects: 6)
            #expect(out.count <= 6)
            for (x, y) in changed {
                #expect(out.contains { $0.contains(x: x, y: y) }, "round \(round): (\(x),\(y)) changed but not reported")
            }
            for y in 0 ..< height {
                #expect(memcmp(live.buffer.pixels + y * live.buffer.stride, shadow.buffer.pixels + y * shadow.buffer.stride, width * 4) == 0)
            }
            if changed.isEmpty { #expect(out.isEmpty) }
        }
    }

    @Test func aWindowMovingSidewaysYieldsItsTwoEdgeStrips() {
        let live = Picture(width: 1024, height: 400, stride: 4096, fill: 0)
        let shadow = Picture(width: 1024, height: 400, stride: 4096, fill: 0)
        for y in 100 ..< 300 { for x in 200 ..< 600 { live[x, y] = 7; shadow[x, y] = 7 } }
        // Move right by 8: old left strip becomes background, new right strip window.
        for y in 100 ..< 300 {
            for x in 200 ..< 208 { live[x, y] = 0 }
            for x in 600 ..< 608 { live[x, y] = 7 }
        }
        let out = ShadowCompare.confirm([Rect(x: 0, y: 100, width: 1024, height: 200)], live: live.buffer, shadow: shadow.buffer)
        #expect(Set(out) == [Rect(x: 200, y: 100, width: 8, height: 200), Rect(x: 600, y: 100, width: 8, height: 200)])
    }

    @Test func tileScanFindsChangedTilesAndSyncsThem() {
        let live = Picture(width: 200, height: 130, stride: 800, fill: 5)
        let shadow = Picture(width: 200, height: 130, stride: 800, fill: 5)
        live[0, 0] = 1
        live[199, 129] = 2
        live[70, 70] = 3
        let tiles = ShadowCompare.scanTiles(live: live.buffer, shadow: shadow.buffer, tile: 64)
        #expect(tiles == [Rect(x: 0, y: 0, width: 64, height: 64), Rect(x: 64, y: 64, width: 64, height: 64),
                          Rect(x: 192, y: 128, width: 8, height: 2)])
        #expect(shadow[199, 129] == 2 && shadow[70, 70] == 3)
        #expect(ShadowCompare.scanTiles(live: live.buffer, shadow: shadow.buffer) == [])
    }
}
