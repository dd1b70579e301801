/// What one client has not been sent yet, as a bitmap of 16×16 tiles.
///
/// Damage of any shape and any amount costs one bit per tile (1 KiB at
/// 1920×1080), so a client that does not read lets changes pile up here,
/// merged, and never anywhere else. Taking the dirty area out gives
/// rectangles aligned to tiles: runs of dirty tiles in a tile row, merged
/// downwards while the next row has the same run (as QEMU's dirty bitmap does).
struct DirtyGrid {
    static let tile = 16

    private(set) var width = 0
    private(set) var height = 0
    private var tilesX = 0
    private var tilesY = 0
    private var wordsPerRow = 0
    private var bits: [UInt64] = []
    private(set) var dirtyTiles = 0

    init(width: Int, height: Int) { reset(width: width, height: height, dirty: false) }

    /// New geometry; everything dirty (or clean).
    mutating func reset(width w: Int, height h: Int, dirty: Bool) {
        width = max(w, 0)
        height = max(h, 0)
        tilesX = (width + Self.tile - 1) / Self.tile
        tilesY = (height + Self.tile - 1) / Self.tile
        wordsPerRow = (tilesX + 63) / 64
        bits = [UInt64](repeating: 0, count: wordsPerRow * tilesY)
        dirtyTiles = 0
        if dirty { mark(RFBRect(x: 0, y: 0, width: width, height: height)) }
    }

    var isEmpty: Bool { dirtyTiles == 0 }

    mutating func markAll() { mark(RFBRect(x: 0, y: 0, width: width, height: height)) }

    mutating func mark(_ r: RFBRect) {
        let c = r.clipped(width: width, height: height)
        guard !c.isEmpty else { return }
        let tx0 = c.x / Self.tile, tx1 = (c.maxX + Self.tile - 1) / Self.tile
        let ty0 = c.y / Self.tile, ty1 = (c.maxY + Self.tile - 1) / Self.tile
        for ty in ty0..<ty1 {
            for tx in tx0..<tx1 {
                let i = ty * wordsPerRow + tx / 64
                let bit = UInt64(1) << UInt64(tx % 64)
                if bits[i] & bit == 0 {
                    bits[i] |= bit
                    dirtyTiles += 1
                }
            }
        }
    }

    func isDirty(tileX tx: Int, tileY ty: Int) -> Bool {
        bits[ty * wordsPerRow + tx / 64] & (UInt64(1) << UInt64(tx % 64)) != 0
    }

    private mutating func clear(tileX tx: Int, tileY ty: Int) {
        let i = ty * wordsPerRow + tx / 64
        let bit = UInt64(1) << UInt64(tx % 64)
        if bits[i] & bit != 0 {
            bits[i] &= ~bit
            dirtyTiles -= 1
        }
    }

    /// Whether any dirty tile lies inside 0..<w × 0..<h.
    func hasDirty(within w: Int, _ h: Int) -> Bool {
        guard dirtyTiles > 0 else { return false }
        let tx1 = min((max(w, 0) + Self.tile - 1) / Self.tile, tilesX)
        let ty1 = min((max(h, 0) + Self.tile - 1) / Self.tile, tilesY)
        for ty in 0..<ty1 {
            for tx in 0..<tx1 where isDirty(tileX: tx, tileY: ty) { return true }
        }
        return false
    }

    /// Takes the dirty tiles inside 0..<w × 0..<h out of the grid as at most
    /// `limit` rectangles (clipped to w × h); rows past the limit stay dirty.
    /// `limit` must exceed half the tiles in a row (4096 always does).
    mutating func take(within w: Int, _ h: Int, limit: Int) -> [RFBRect] {
        guard dirtyTiles > 0, limit > 0 else { return [] }
        let tx1 = min((max(w, 0) + Self.tile - 1) / Self.tile, tilesX)
        let ty1 = min((max(h, 0) + Self.tile - 1) / Self.tile, tilesY)
        typealias Span = (x0: Int, x1: Int, y0: Int)
        var open: [Span] = []          // sorted by x0, from the row above
        var closed: [(x0: Int, x1: Int, y0: Int, y1: Int)] = []
        var stopRow = ty1
        for ty in 0..<ty1 {
            var next: [Span] = []
            var ended: [Span] = []
            var k = 0
            var tx = 0
            while tx < tx1 {
                if !isDirty(tileX: tx, tileY: ty) { tx += 1; continue }
                let a = tx
                while tx < tx1 && isDirty(tileX: tx, tileY: ty) { tx += 1 }
                // Both lists are sorted by x0: walk the open spans alongside.
                while k < open.count && open[k].x0 < a { ended.append(open[k]); k += 1 }
                if k < open.count && open[k].x0 == a && open[k].x1 == tx {
                    next.append(open[k]); k += 1
                } else {
                    next.append((a, tx, ty))
                }
            }
            while k < open.count { ended.append(open[k]); k += 1 }
            if closed.count + ended.count + next.count > limit {
                stopRow = ty
                for s in ended + next where s.y0 < ty { closed.append((s.x0, s.x1, s.y0, ty)) }
                open = []
                break
            }
            for s in ended { closed.append((s.x0, s.x1, s.y0, ty)) }
            open = next
        }
        for s in open { closed.append((s.x0, s.x1, s.y0, stopRow)) }
        var rects: [RFBRect] = []
        rects.reserveCapacity(closed.count)
        for c in closed {
            for ty in c.y0..<c.y1 {
                for tx in c.x0..<c.x1 { clear(tileX: tx, tileY: ty) }
            }
            let r = RFBRect(x: c.x0 * Self.tile, y: c.y0 * Self.tile,
                            width: (c.x1 - c.x0) * Self.tile, height: (c.y1 - c.y0) * Self.tile)
                .clipped(width: min(w, width), height: min(h, height))
            if !r.isEmpty { rects.append(r) }
        }
        return rects
    }
}
