import Testing
import Damage

@Suite struct GeometryTests {
    let g = FramebufferGeometry(width: 1920, height: 1080, lineLength: 7680)!

    @Test func invalidGeometriesAreRejected() {
        #expect(FramebufferGeometry(width: 0, height: 10, lineLength: 40) == nil)
        #expect(FramebufferGeometry(width: 10, height: 10, lineLength: 39) == nil)
        #expect(FramebufferGeometry(width: 10, height: 10, lineLength: 40, depth: 12) == nil)
        #expect(FramebufferGeometry(width: 10, height: 10, lineLength: 40, offset: -1) == nil)
        #expect(FramebufferGeometry(width: .max / 2, height: 10, lineLength: 40) == nil)
        #expect(FramebufferGeometry(width: 10, height: .max / 8, lineLength: 40) == nil)
        #expect(FramebufferGeometry(width: 10, height: 10, lineLength: 40, offset: .max - 100) == nil)
    }

    @Test func aRangeInsideOneRowIsOneShortRect() {
        #expect(g.rects(forBytes: 400, 480) == [Rect(x: 100, y: 0, width: 20, height: 1)])
        #expect(g.rects(forBytes: 401, 402) == [Rect(x: 100, y: 0, width: 1, height: 1)])
    }

    @Test func aPageAcrossARowEndIsTwoDisjointPieces() {
        // Page 1 = bytes 4096..<8192: row 0 from x 1024, row 1 up to x 128.
        #expect(g.rects(for: PageRun(first: 1, count: 1), pageSize: 4096)
            == [Rect(x: 1024, y: 0, width: 896, height: 1), Rect(x: 0, y: 1, width: 128, height: 1)])
    }

    @Test func longRunsAreFullWidthBandsAndClipToTheFrame() {
        #expect(g.rects(for: PageRun(first: 0, count: 4), pageSize: 4096) == [Rect(x: 0, y: 0, width: 1920, height: 3)])
        #expect(g.rects(for: PageRun(first: 2020, count: 10), pageSize: 4096) == [Rect(x: 0, y: 1077, width: 1920, height: 3)])
    }

    @Test func offsetAndRowPaddingAreHonoured() {
        let padded = FramebufferGeometry(width: 100, height: 50, lineLength: 512, offset: 1000)!
        #expect(padded.rects(forBytes: 0, 1000) == [])                         // before the frame
        #expect(padded.rects(forBytes: 1000 + 400, 1000 + 512) == [])          // row padding only
        #expect(padded.rects(forBytes: 1000 + 396, 1000 + 520) == [Rect(x: 99, y: 0, width: 1, height: 1), Rect(x: 0, y: 1, width: 2, height: 1)])
        let rgb = FramebufferGeometry(width: 10, height: 10, lineLength: 30, depth: 24)!
        #expect(rgb.rects(forBytes: 4, 8) == [Rect(x: 1, y: 0, width: 2, height: 1)])
    }
}

@Suite struct CoalescerTests {
    /// Marks every pixel of `rects` in a small bitmap.
    func coverage(_ rects: [Rect], width: Int, height: Int) -> [Bool] {
        var bits = [Bool](repeating: false, count: width * height)
        for r in rects {
            for y in r.y ..< r.maxY { for x in r.x ..< r.maxX { bits[y * width + x] = true } }
        }
        return bits
    }

    @Test(arguments: [UInt64(11), 12, 13, 14, 15, 16])
    func coalescedRectsStayWithinTheBoundAndCoverAllDamage(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        let width = 320, height = 200
        let geometry = FramebufferGeometry(width: width, height: height, lineLength: width * 4)!
        for round in 0 ..< 40 {
            let maxRects = Int.random(in: 1 ... 12, using: &rng)
            var c = Coalescer(geometry: geometry, maxRects: maxRects, mergeSlack: Int.random(in: 0 ... 2000, using: &rng))
            var input: [Rect] = []
            for _ in 0 ..< Int.random(in: 1 ... 60, using: &rng) {
                let r = Rect(x: Int.random(in: -10 ..< width, using: &rng), y: Int.random(in: -10 ..< height, using: &rng),
                             width: Int.random(in: 0 ... 50, using: &rng), height: Int.random(in: 0 ... 30, using: &rng))
                input.append(r)
                c.add(r)
            }
            let out = c.take()
            #expect(out.count <= maxRects, "round \(round)")
            #expect(c.isEmpty)
            let want = coverage(input.map { $0.intersection(geometry.bounds) }, width: width, height: height)
            let got = coverage(out, width: width, height: height)
            #expect(zip(want, got).allSatisfy { !$0 || $1 }, "round \(round): damage not covered")
            #expect(out.allSatisfy { geometry.bounds.intersection($0) == $0 })
        }
    }

    @Test func distantWindowsStaySeparateWhileNearbyBandsMerge() {
        let geometry = FramebufferGeometry(width: 1920, height: 1080, lineLength: 7680)!
        var c = Coalescer(geometry: geometry)
        c.add(Rect(x: 10, y: 10, width: 100, height: 100))
        c.add(Rect(x: 1500, y: 900, width: 200, height: 100))
        #expect(c.take() == [Rect(x: 10, y: 10, width: 100, height: 100), Rect(x: 1500, y: 900, width: 200, height: 100)])
        // Pages 0-1 and 3-4 leave one page of gap: the bands touch and merge.
        c.add(runs: [PageRun(first: 0, count: 2), PageRun(first: 3, count: 2)], pageSize: 4096)
        #expect(c.take() == [Rect(x: 0, y: 0, width: 1920, height: 3)])
    }

    @Test func scatteredPagesBecomeAtMostMaxRects() {
        let geometry = FramebufferGeometry(width: 1920, height: 1080, lineLength: 7680)!
        var c = Coalescer(geometry: geometry, maxRects: 8)
        let runs = stride(from: 0, to: 2025, by: 10).map { PageRun(first: $0, count: 1) }
        c.add(runs: runs, pageSize: 4096)
        let out = c.take()
        #expect(out.count <= 8)
        for run in runs {
            for piece in geometry.rects(for: run, pageSize: 4096) {
                #expect(out.contains { $0.intersection(piece) == piece }, "\(piece) not covered")
            }
        }
    }
}
