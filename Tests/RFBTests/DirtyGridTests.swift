import Testing
@testable import RFB

@Suite struct DirtyGridTests {
    /// The set of pixels the rectangles cover.
    private func pixels(_ rects: [RFBRect]) -> Set<Int> {
        var s = Set<Int>()
        for r in rects { for y in r.y..<r.maxY { for x in r.x..<r.maxX { s.insert(y * 10_000 + x) } } }
        return s
    }

    @Test func takenRectanglesCoverTheMarkedAreaAlignedToTilesAndClipped() {
        var g = DirtyGrid(width: 100, height: 50)
        g.mark(RFBRect(x: 5, y: 5, width: 3, height: 3))
        g.mark(RFBRect(x: 90, y: 40, width: 100, height: 100))
        let rects = g.take(within: 100, 50, limit: 4096)
        #expect(Set(rects) == [RFBRect(x: 0, y: 0, width: 16, height: 16), RFBRect(x: 80, y: 32, width: 20, height: 18)])
        #expect(g.isEmpty)
    }

    @Test func runsOfTheSameSpanMergeDownwards() {
        var g = DirtyGrid(width: 64, height: 64)
        g.mark(RFBRect(x: 0, y: 0, width: 64, height: 64))
        #expect(g.take(within: 64, 64, limit: 4096) == [RFBRect(x: 0, y: 0, width: 64, height: 64)])
        g.mark(RFBRect(x: 16, y: 0, width: 16, height: 48))
        g.mark(RFBRect(x: 0, y: 16, width: 48, height: 16))
        let rects = g.take(within: 64, 64, limit: 4096)
        #expect(pixels(rects) == pixels([RFBRect(x: 16, y: 0, width: 16, height: 48), RFBRect(x: 0, y: 16, width: 48, height: 16)]))
        #expect(Set(rects).count == rects.count)
    }

    @Test func theLimitLeavesTheRestDirtyAndALaterTakeGetsIt() {
        var g = DirtyGrid(width: 1024, height: 64)
        for x in stride(from: 0, to: 1024, by: 32) { g.mark(RFBRect(x: x, y: 0, width: 1, height: 64)) } // 32 columns of tiles
        for y in stride(from: 0, to: 64, by: 32) { g.mark(RFBRect(x: 8, y: y, width: 900, height: 1)) }
        let all = pixels(g.take(within: 1024, 64, limit: 4096))
        var h = DirtyGrid(width: 1024, height: 64)
        for x in stride(from: 0, to: 1024, by: 32) { h.mark(RFBRect(x: x, y: 0, width: 1, height: 64)) }
        for y in stride(from: 0, to: 64, by: 32) { h.mark(RFBRect(x: 8, y: y, width: 900, height: 1)) }
        var got = Set<Int>()
        var rounds = 0
        while !h.isEmpty && rounds < 100 {
            let part = h.take(within: 1024, 64, limit: 40)
            #expect(part.count <= 40)
            got.formUnion(pixels(part))
            rounds += 1
        }
        #expect(got == all)
        #expect(rounds > 1)
    }

    @Test func onlyTheClientsAreaIsTaken() {
        var g = DirtyGrid(width: 200, height: 100)
        g.markAll()
        let rects = g.take(within: 50, 40, limit: 4096)
        #expect(pixels(rects) == pixels([RFBRect(x: 0, y: 0, width: 50, height: 40)]))
        #expect(!g.isEmpty)
        #expect(g.hasDirty(within: 200, 100))
        #expect(!g.hasDirty(within: 48, 32))
    }

    @Test func hostileRectanglesAreClippedWithoutTrapping() {
        var g = DirtyGrid(width: 100, height: 100)
        for r in [RFBRect(x: Int.max, y: Int.max, width: Int.max, height: Int.max), RFBRect(x: Int.min, y: -5, width: Int.max, height: 10),
                  RFBRect(x: -10, y: -10, width: 15, height: 15), RFBRect(x: -10, y: 0, width: 5, height: 5), RFBRect(x: 50, y: 50, width: -3, height: 7)] {
            g.mark(r)
        }
        #expect(pixels(g.take(within: 100, 100, limit: 4096)) == pixels([RFBRect(x: 0, y: 0, width: 16, height: 16)]))
    }
}
