/// Where the pixels of a framebuffer lie in its memory region: the Xen PV
/// framebuffer's `width`, `height`, `line_length`, `depth` and `offset`
/// (xen/io/fbif.h), validated.
public struct FramebufferGeometry: Hashable, Sendable, CustomStringConvertible {
    public let width: Int
    public let height: Int
    /// Bytes from one row to the next (>= width × bytes per pixel).
    public let lineLength: Int
    /// Bits per pixel: 8, 16, 24 or 32.
    public let depth: Int
    /// Byte offset of pixel (0, 0) in the region.
    public let offset: Int

    /// Nil when the values are inconsistent or overflow: non-positive sizes,
    /// an unsupported depth, rows shorter than `width` pixels, or a frame whose
    /// end does not fit in an Int.
    public init?(width: Int, height: Int, lineLength: Int, depth: Int = 32, offset: Int = 0) {
        guard width > 0, height > 0, offset >= 0, [8, 16, 24, 32].contains(depth) else { return nil }
        let (rowBytes, o1) = width.multipliedReportingOverflow(by: depth / 8)
        guard !o1, lineLength >= rowBytes else { return nil }
        let (frame, o2) = lineLength.multipliedReportingOverflow(by: height)
        guard !o2, !offset.addingReportingOverflow(frame).overflow else { return nil }
        self.width = width
        self.height = height
        self.lineLength = lineLength
        self.depth = depth
        self.offset = offset
    }

    public var bytesPerPixel: Int { depth / 8 }
    /// Bytes from the start of the region to the end of the last row.
    public var byteCount: Int { offset + lineLength * height }
    public var bounds: Rect { Rect(x: 0, y: 0, width: width, height: height) }
    public var description: String { "\(width)x\(height)x\(depth) line \(lineLength) offset \(offset)" }

    /// The pixels whose bytes meet region bytes `start ..< end`: one rect for
    /// a range inside a row, two when it covers the end of one row and the
    /// start of the next without overlapping in x, else a band of full rows.
    public func rects(forBytes start: Int, _ end: Int) -> [Rect] {
        let a = max(start, offset) - offset
        let b = min(end, byteCount) - offset
        guard b > a else { return [] }
        let bpp = bytesPerPixel
        let y0 = a / lineLength, y1 = (b - 1) / lineLength
        let x0 = (a - y0 * lineLength) / bpp                 // first pixel touched in row y0
        let x1 = min(width, (b - 1 - y1 * lineLength) / bpp + 1) // one past last pixel in row y1
        if y0 == y1 {
            guard x0 < width, x1 > x0 else { return [] }      // only row padding was written
            return [Rect(x: x0, y: y0, width: x1 - x0, height: 1)]
        }
        if y1 == y0 + 1 && x1 <= x0 {
            return [Rect(x: x0, y: y0, width: width - x0, height: 1),
                    Rect(x: 0, y: y1, width: x1, height: 1)].filter { !$0.isEmpty }
        }
        return [Rect(x: 0, y: y0, width: width, height: y1 - y0 + 1)]
    }

    /// The pixels of a page run of the region.
    public func rects(for run: PageRun, pageSize: Int) -> [Rect] {
        rects(forBytes: run.first * pageSize, (run.first + run.count) * pageSize)
    }
}

/// Batches damage into a few update rectangles.
///
/// Dirty page runs (turned into scanline bands through the geometry) or
/// rectangles go in; `take()` gives at most `maxRects` rectangles that cover
/// all of it. Rectangles are merged when the pixels their bounding box adds
/// cost less than a rectangle (`mergeSlack`), so two windows far apart stay
/// two updates, while a scatter of nearby bands becomes one.
public struct Coalescer: Sendable {
    public let geometry: FramebufferGeometry
    /// The most rectangles `take()` returns (>= 1).
    public var maxRects: Int
    /// Extra pixels one merge may add before two rects are worth sending
    /// apart: the per-rectangle overhead, in pixels.
    public var mergeSlack: Int
    /// Damage added since the last `take()`, not yet coalesced.
    public private(set) var pending: [Rect] = []

    public init(geometry: FramebufferGeometry, maxRects: Int = 16, mergeSlack: Int = 4096) {
        self.geometry = geometry
        self.maxRects = max(1, maxRects)
        self.mergeSlack = max(0, mergeSlack)
    }

    public var isEmpty: Bool { pending.isEmpty }

    /// Adds the pixels of dirty page runs of the framebuffer's region.
    public mutating func add(runs: [PageRun], pageSize: Int) {
        for run in runs { append(contentsOf: geometry.rects(for: run, pageSize: pageSize)) }
    }

    /// Adds a rectangle of damage (clipped to the frame; empty ones are ignored).
    public mutating func add(_ rect: Rect) {
        let r = rect.intersection(geometry.bounds)
        guard !r.isEmpty else { return }
        append(contentsOf: [r])
    }

    private mutating func append(contentsOf rects: [Rect]) {
        pending.append(contentsOf: rects)
        // Keep memory bounded under a flood of small updates.
        if pending.count > 1024 { pending = Self.coalesce(pending, maxRects: 256, mergeSlack: mergeSlack) }
    }

    /// The coalesced damage since the last `take()`; empties the batch.
    public mutating func take() -> [Rect] {
        defer { pending.removeAll(keepingCapacity: true) }
        return Self.coalesce(pending, maxRects: maxRects, mergeSlack: mergeSlack)
    }

    /// At most `maxRects` rectangles covering every pixel of `rects`.
    public static func coalesce(_ rects: [Rect], maxRects: Int, mergeSlack: Int) -> [Rect] {
        var list = rects.filter { !$0.isEmpty }
        guard list.count > 1 else { return list }
        list.sort { $0.y != $1.y ? $0.y < $1.y : $0.x < $1.x }
        list = mergeCheap(list, slack: mergeSlack)
        if list.count > maxRects {
            list = clusterRows(list, into: maxRects)
            list = mergeCheap(list, slack: mergeSlack)
        }
        return list
    }

    /// Pixels the bounding box of `a` and `b` adds to what they cover.
    static func waste(_ a: Rect, _ b: Rect) -> Int {
        a.union(b).area - a.area - b.area + a.intersection(b).area
    }

    /// Greedy merging, in y order, of rects whose union wastes at most
    /// `slack` pixels, until nothing more merges. Input sorted by y.
    static func mergeCheap(_ sorted: [Rect], slack: Int) -> [Rect] {
        var current = sorted
        while true {
            var out: [Rect] = []
            out.reserveCapacity(current.count)
            var merged = false
            for r in current {
                var into: Int? = nil
                // Outputs stay sorted by y; look back over the last few.
                var j = out.count - 1
                while j >= 0 && j >= out.count - 8 {
                    if waste(out[j], r) <= slack { into = j; break }
                    j -= 1
                }
                if let j = into {
                    out[j] = out[j].union(r)
                    merged = true
                } else {
                    out.append(r)
                }
            }
            current = out
            if !merged { return current }
            current.sort { $0.y != $1.y ? $0.y < $1.y : $0.x < $1.x }
        }
    }

    /// Groups y-sorted rects into at most `count` bands by cutting at the
    /// widest vertical gaps, and returns each group's bounding box.
    static func clusterRows(_ sorted: [Rect], into count: Int) -> [Rect] {
        guard sorted.count > count else { return sorted }
        // Gap before rect i = its top minus the lowest bottom seen so far.
        var gaps: [(gap: Int, index: Int)] = []
        var bottom = sorted[0].maxY
        for i in 1 ..< sorted.count {
            gaps.append((sorted[i].y - bottom, i))
            bottom = max(bottom, sorted[i].maxY)
        }
        let cuts = Set(gaps.sorted { $0.gap != $1.gap ? $0.gap > $1.gap : $0.index < $1.index }
            .prefix(count - 1).map(\.index))
        var out: [Rect] = []
        var box = sorted[0]
        for i in 1 ..< sorted.count {
            if cuts.contains(i) {
                out.append(box)
                box = sorted[i]
            } else {
                box = box.union(sorted[i])
            }
        }
        out.append(box)
        return out
    }
}
