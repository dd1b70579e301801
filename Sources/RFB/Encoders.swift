/// The rectangle encoders. Each takes one rectangle of pixel values already
/// in the client's format (`values`, `width` × `height`, row after row) and
/// appends the rectangle header and its encoded data to `out`. The layouts
/// (PIXEL, CPIXEL, TPIXEL) are decided once per update. Loops over pixels
/// write through a `ByteCursor` and look colours up in a local copy of the
/// colour table: no closures, no dynamic dispatch and no object property
/// accesses (with their exclusivity checks) per pixel.
///
/// What is emitted, and why (see also README.md):
/// - Raw (0): the values.
/// - RRE (2) / CoRRE (4): background plus greedy single-colour subrectangles;
///   when that would be larger than the raw data the rectangle goes as Raw
///   (which every client must accept), as libvncserver does.
/// - Hextile (5): per 16×16 tile the smallest of solid, two-colour
///   (foreground subrectangles), coloured subrectangles, or raw; background and
///   foreground are carried over only where RFC 6143 §7.7.4 allows.
/// - Zlib (6): raw data through the connection's zlib stream.
/// - Tight (7), lossless only: fill, palette (2–256 colours; 1 bit per pixel
///   for 2) or copy filter, zlib streams 0 (copy) and 1 (palette); data under
///   12 bytes uncompressed, as the format requires. Never JPEG, never gradient.
/// - ZRLE (16) / TRLE (15): per 64×64 / 16×16 tile the smallest of raw, solid,
///   packed palette (2–16), plain RLE and palette RLE (2–127); ZRLE through
///   its zlib stream. TRLE's palette-reuse subencodings are not used.
final class Encoders {
    private var table = ColourTable()
    /// Serialised or filtered data before compression.
    let staging = ByteBuffer(capacity: 1 << 16)
    /// Compressed data, when its length must precede it.
    let compressed = ByteBuffer(capacity: 1 << 16)
    /// A copy of the rectangle that RRE may overwrite.
    private var work: UnsafeMutablePointer<UInt32>
    private var workCapacity = 0
    /// One Hextile tile, and its subrectangles.
    private let tile = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
    private let subrects = UnsafeMutablePointer<Subrect>.allocate(capacity: 257)

    private struct Subrect { var colour: UInt32; var x, y, w, h: Int }

    init() { work = .allocate(capacity: 1) }

    deinit {
        work.deallocate()
        tile.deallocate()
        subrects.deallocate()
        table.deallocate()
    }

    private func workBuffer(_ n: Int) -> UnsafeMutablePointer<UInt32> {
        if n > workCapacity {
            work.deallocate()
            work = .allocate(capacity: n)
            workCapacity = n
        }
        return work
    }

    // MARK: Raw and Zlib

    func raw(_ values: UnsafePointer<UInt32>, x: Int, y: Int, width: Int, height: Int, layout: PixelLayout, out: ByteBuffer) {
        out.rectHeader(x: x, y: y, width: width, height: height, encoding: Encoding.raw)
        layout.append(values, count: width * height, to: out)
    }

    func zlib(_ values: UnsafePointer<UInt32>, x: Int, y: Int, width: Int, height: Int, layout: PixelLayout,
              stream: Deflater, level: Int32, out: ByteBuffer) {
        out.rectHeader(x: x, y: y, width: width, height: height, encoding: Encoding.zlib)
        staging.clear()
        layout.append(values, count: width * height, to: staging)
        let lengthAt = out.count
        out.u32(0)
        stream.compress(staging.bytes, level: level, into: out)
        out.setU32(UInt32(out.count - lengthAt - 4), at: lengthAt)
    }

    // MARK: RRE and CoRRE

    /// RRE, or CoRRE when `compact` (then width and height are at most 255).
    func rre(_ values: UnsafePointer<UInt32>, x: Int, y: Int, width: Int, height: Int, layout: PixelLayout,
             compact: Bool, out: ByteBuffer) {
        let n = width * height
        let buf = workBuffer(n)
        buf.update(from: values, count: n)
        var t = table
        let bg = Self.mostCommon(buf, count: n, &t)
        table = t
        let start = out.count
        out.rectHeader(x: x, y: y, width: width, height: height, encoding: compact ? Encoding.coRRE : Encoding.rre)
        let rawSize = n * layout.bytes
        let subrectSize = layout.bytes + (compact ? 4 : 8)
        // Stop as soon as the subrectangles outgrow the raw data.
        let fits = out.write(maxBytes: 4 + layout.bytes + rawSize + subrectSize) { c -> Bool in
            c.u32(0)
            c.pixel(bg, layout)
            var count: UInt32 = 0
            let ok = Self.findSubrects(buf, width: width, height: height, background: bg) { colour, sx, sy, sw, sh in
                c.pixel(colour, layout)
                if compact {
                    c.u8(UInt8(sx)); c.u8(UInt8(sy)); c.u8(UInt8(sw)); c.u8(UInt8(sh))
                } else {
                    c.u16(UInt16(sx)); c.u16(UInt16(sy)); c.u16(UInt16(sw)); c.u16(UInt16(sh))
                }
                count += 1
                return c.count - 4 <= rawSize
            }
            c.base.storeBytes(of: count.bigEndian, as: UInt32.self)
            return ok
        }
        if !fits {
            out.truncate(to: start)
            raw(values, x: x, y: y, width: width, height: height, layout: layout, out: out)
        }
    }

    /// The most frequent value (the first seen among equals), counting at
    /// most 1024 distinct values.
    private static func mostCommon(_ v: UnsafePointer<UInt32>, count n: Int, _ t: inout ColourTable) -> UInt32 {
        t.reset(limit: 1024)
        var best = v[0]
        var bestCount: UInt32 = 0
        for i in 0..<n {
            guard let k = t.index(of: v[i]) else { continue }
            let c = t.bump(k)
            if c > bestCount { bestCount = c; best = v[i] }
        }
        return best
    }

    /// Covers every pixel of `buf` that differs from `background` with
    /// single-colour rectangles, greedily (the larger of the row-first and
    /// column-first rectangle at the first uncovered pixel), overwriting
    /// covered pixels with the background. `emit` returns false to stop;
    /// the result says whether it ran to the end.
    @inline(__always)
    private static func findSubrects(_ buf: UnsafeMutablePointer<UInt32>, width w: Int, height h: Int, background bg: UInt32,
                                     _ emit: (UInt32, Int, Int, Int, Int) -> Bool) -> Bool {
        for y in 0..<h {
            var x = 0
            while x < w {
                let c = buf[y * w + x]
                if c == bg { x += 1; continue }
                // Row first: the run in this row, then down while it repeats.
                var rw = 1
                while x + rw < w && buf[y * w + x + rw] == c { rw += 1 }
                var rh = 1
                rows: while y + rh < h {
                    let row = buf + (y + rh) * w + x
                    for i in 0..<rw where row[i] != c { break rows }
                    rh += 1
                }
                // Column first: the run in this column, then right while it repeats.
                var ch = 1
                while y + ch < h && buf[(y + ch) * w + x] == c { ch += 1 }
                var cw = 1
                columns: while x + cw < w {
                    for j in 0..<ch where buf[(y + j) * w + x + cw] != c { break columns }
                    cw += 1
                }
                let (sw, sh) = rw * rh >= cw * ch ? (rw, rh) : (cw, ch)
                for j in 0..<sh {
                    let row = buf + (y + j) * w + x
                    for i in 0..<sw { row[i] = bg }
                }
                if !emit(c, x, y, sw, sh) { return false }
                x += sw
            }
        }
        return true
    }

    // MARK: Hextile

    func hextile(_ values: UnsafePointer<UInt32>, x: Int, y: Int, width: Int, height: Int, layout: PixelLayout, out: ByteBuffer) {
        out.rectHeader(x: x, y: y, width: width, height: height, encoding: Encoding.hextile)
        let bpp = layout.bytes
        var t = table
        defer { table = t }
        let tile = self.tile
        let subrects = self.subrects
        var lastBackground: UInt32? = nil
        var lastForeground: UInt32? = nil
        // Per tile at most: mask, background, foreground, count, 255 coloured
        // subrectangles; or mask and 256 raw pixels.
        let tileMax = 1 + 2 * bpp + 1 + 256 * (bpp + 2)
        for ty in stride(from: 0, to: height, by: 16) {
            let th = min(16, height - ty)
            for tx in stride(from: 0, to: width, by: 16) {
                let tw = min(16, width - tx)
                for j in 0..<th {
                    (tile + j * tw).update(from: values + (ty + j) * width + tx, count: tw)
                }
                // Colours and their counts (a tile has at most 256 pixels).
                t.reset(limit: 256)
                var bg = tile[0]
                var bgCount: UInt32 = 0
                for i in 0..<(tw * th) {
                    let k = t.index(of: tile[i])!
                    let c = t.bump(k)
                    if c > bgCount { bgCount = c; bg = tile[i] }
                }
                let colours = t.count
                let newBackground = lastBackground != bg
                out.write(maxBytes: tileMax) { c in
                    var mask: UInt8 = newBackground ? 2 : 0
                    if colours == 1 {
                        c.u8(mask)
                        if newBackground { c.pixel(bg, layout) }
                        lastBackground = bg
                        return
                    }
                    var count = 0
                    _ = Self.findSubrects(tile, width: tw, height: th, background: bg) { colour, sx, sy, sw, sh in
                        subrects[count] = Subrect(colour: colour, x: sx, y: sy, w: sw, h: sh)
                        count += 1
                        return count <= 255
                    }
                    let mono = colours == 2
                    let foreground = subrects[0].colour
                    let newForeground = mono && lastForeground != foreground
                    let size = 1 + (newBackground ? bpp : 0) + 1
                        + (mono ? (newForeground ? bpp : 0) + 2 * count : (bpp + 2) * count)
                    if count > 255 || size >= 1 + tw * th * bpp {
                        c.u8(1)
                        for j in 0..<th { c.pixels(values + (ty + j) * width + tx, count: tw, layout) }
                        lastBackground = nil
                        lastForeground = nil
                        return
                    }
                    mask |= 8
                    if mono { if newForeground { mask |= 4 } } else { mask |= 16 }
                    c.u8(mask)
                    if newBackground { c.pixel(bg, layout) }
                    if newForeground { c.pixel(foreground, layout) }
                    c.u8(UInt8(count))
                    for k in 0..<count {
                        let s = subrects[k]
                        if !mono { c.pixel(s.colour, layout) }
                        c.u8(UInt8(s.x << 4 | s.y))
                        c.u8(UInt8((s.w - 1) << 4 | (s.h - 1)))
                    }
                    lastBackground = bg
                    lastForeground = mono ? foreground : nil
                }
            }
        }
    }

    // MARK: ZRLE and TRLE

    func zrle(_ values: UnsafePointer<UInt32>, x: Int, y: Int, width: Int, height: Int, layout: PixelLayout,
              stream: Deflater, level: Int32, out: ByteBuffer) {
        out.rectHeader(x: x, y: y, width: width, height: height, encoding: Encoding.zrle)
        staging.clear()
        rleTiles(values, width: width, height: height, tileSize: 64, layout: layout, out: staging)
        let lengthAt = out.count
        out.u32(0)
        stream.compress(staging.bytes, level: level, into: out)
        out.setU32(UInt32(out.count - lengthAt - 4), at: lengthAt)
    }

    func trle(_ values: UnsafePointer<UInt32>, x: Int, y: Int, width: Int, height: Int, layout: PixelLayout, out: ByteBuffer) {
        out.rectHeader(x: x, y: y, width: width, height: height, encoding: Encoding.trle)
        rleTiles(values, width: width, height: height, tileSize: 16, layout: layout, out: out)
    }

    private func rleTiles(_ values: UnsafePointer<UInt32>, width: Int, height: Int, tileSize: Int, layout: PixelLayout, out: ByteBuffer) {
        var t = table
        defer { table = t }
        for ty in stride(from: 0, to: height, by: tileSize) {
            let th = min(tileSize, height - ty)
            for tx in stride(from: 0, to: width, by: tileSize) {
                let tw = min(tileSize, width - tx)
                // The smallest choice is at most the raw tile; a palette adds at most 127 pixels.
                out.write(maxBytes: 1 + (tw * th + 127) * layout.bytes) { c in
                    Self.rleTile(values + ty * width + tx, stride: width, width: tw, height: th, layout: layout, &t, &c)
                }
            }
        }
    }

    /// One ZRLE/TRLE tile: measures every subencoding in one pass, writes the smallest.
    private static func rleTile(_ v: UnsafePointer<UInt32>, stride: Int, width w: Int, height h: Int, layout: PixelLayout,
                                _ t: inout ColourTable, _ out: inout ByteCursor) {
        let cpp = layout.bytes
        t.reset(limit: 127)
        var tooManyColours = false
        var plainBytes = 0      // plain RLE: pixel + length bytes per run
        var paletteRunBytes = 0 // palette RLE: index (+ length bytes) per run
        var runColour = v[0]
        var runLength = 0
        for j in 0..<h {
            let row = v + j * stride
            for i in 0..<w {
                let p = row[i]
                if p == runColour && runLength > 0 {
                    runLength += 1
                    continue
                }
                if !tooManyColours && t.index(of: p) == nil { tooManyColours = true }
                if runLength > 0 {
                    let lengthBytes = (runLength - 1) / 255 + 1
                    plainBytes += cpp + lengthBytes
                    paletteRunBytes += runLength == 1 ? 1 : 1 + lengthBytes
                }
                runColour = p
                runLength = 1
            }
        }
        let lastLengthBytes = (runLength - 1) / 255 + 1
        plainBytes += cpp + lastLengthBytes
        paletteRunBytes += runLength == 1 ? 1 : 1 + lastLengthBytes
        let colours = tooManyColours ? Int.max : t.count

        if colours == 1 {
            out.u8(1)
            out.pixel(v[0], layout)
            return
        }
        enum Choice { case raw, packed(bits: Int), plainRLE, paletteRLE }
        var choice = Choice.raw
        var best = w * h * cpp
        if colours <= 16 {
            let bits = colours == 2 ? 1 : colours <= 4 ? 2 : 4
            let size = colours * cpp + (w * bits + 7) / 8 * h
            if size < best { best = size; choice = .packed(bits: bits) }
        }
        if plainBytes < best { best = plainBytes; choice = .plainRLE }
        if colours <= 127 && colours * cpp + paletteRunBytes < best {
            best = colours * cpp + paletteRunBytes
            choice = .paletteRLE
        }
        switch choice {
        case .raw:
            out.u8(0)
            for j in 0..<h { out.pixels(v + j * stride, count: w, layout) }
        case .packed(let bits):
            out.u8(UInt8(colours))
            for k in 0..<colours { out.pixel(t.colour(k), layout) }
            for j in 0..<h {
                let row = v + j * stride
                var byte: UInt8 = 0
                var used = 0
                var last = row[0]
                var lastIndex = UInt8(t.index(of: last)!)
                for i in 0..<w {
                    if row[i] != last { last = row[i]; lastIndex = UInt8(t.index(of: last)!) }
                    byte = byte << UInt8(bits) | lastIndex
                    used += bits
                    if used == 8 { out.u8(byte); byte = 0; used = 0 }
                }
                if used > 0 { out.u8(byte << UInt8(8 - used)) }
            }
        case .plainRLE, .paletteRLE:
            let palette: Bool
            if case .paletteRLE = choice { palette = true } else { palette = false }
            if palette {
                out.u8(UInt8(128 + colours))
                for k in 0..<colours { out.pixel(t.colour(k), layout) }
            } else {
                out.u8(128)
            }
            var colour = v[0]
            var length = 0
            @inline(__always) func emitRun(_ out: inout ByteCursor, _ t: inout ColourTable) {
                if palette {
                    let index = UInt8(t.index(of: colour)!)
                    if length == 1 { out.u8(index); return }
                    out.u8(index | 128)
                } else {
                    out.pixel(colour, layout)
                }
                var rest = length - 1
                while rest >= 255 { out.u8(255); rest -= 255 }
                out.u8(UInt8(rest))
            }
            for j in 0..<h {
                let row = v + j * stride
                for i in 0..<w {
                    if row[i] == colour && length > 0 { length += 1 } else {
                        if length > 0 { emitRun(&out, &t) }
                        colour = row[i]
                        length = 1
                    }
                }
            }
            emitRun(&out, &t)
        }
    }

    // MARK: Tight (lossless)

    func tight(_ values: UnsafePointer<UInt32>, x: Int, y: Int, width: Int, height: Int, layout: PixelLayout,
               streams: (copy: Deflater, palette: Deflater), level: Int32, out: ByteBuffer) {
        out.rectHeader(x: x, y: y, width: width, height: height, encoding: Encoding.tight)
        let n = width * height
        var t = table
        defer { table = t }
        t.reset(limit: 256)
        var colours = 0
        var last = values[0]
        _ = t.index(of: last)
        for i in 0..<n where values[i] != last {
            last = values[i]
            if t.index(of: last) == nil { colours = Int.max; break }
        }
        if colours == 0 { colours = t.count }
        let tpp = layout.bytes
        if colours == 1 {
            out.u8(0x80) // FillCompression
            layout.append(values[0], to: out)
            return
        }
        staging.clear()
        if colours <= 256 {
            let dataSize = colours == 2 ? (width + 7) / 8 * height : n
            if 1 + colours * tpp + dataSize < n * tpp {
                out.u8(0x40 | 0x10) // basic compression, stream 1, filter id follows
                out.u8(1)           // PaletteFilter
                out.u8(UInt8(colours - 1))
                for k in 0..<colours { layout.append(t.colour(k), to: out) }
                staging.write(maxBytes: dataSize) { c in
                    if colours == 2 {
                        let first = t.colour(0)
                        for j in 0..<height {
                            let row = values + j * width
                            var byte: UInt8 = 0
                            var used = 0
                            for i in 0..<width {
                                byte = byte << 1 | (row[i] == first ? 0 : 1)
                                used += 1
                                if used == 8 { c.u8(byte); byte = 0; used = 0 }
                            }
                            if used > 0 { c.u8(byte << UInt8(8 - used)) }
                        }
                    } else {
                        var last = values[0]
                        var lastIndex = UInt8(t.index(of: last)!)
                        for i in 0..<n {
                            if values[i] != last { last = values[i]; lastIndex = UInt8(t.index(of: last)!) }
                            c.u8(lastIndex)
                        }
                    }
                }
                tightData(stream: streams.palette, level: level, out: out)
                return
            }
        }
        out.u8(0x00) // basic compression, stream 0, CopyFilter
        layout.append(values, count: n, to: staging)
        tightData(stream: streams.copy, level: level, out: out)
    }

    /// Appends `staging` as Tight wants it: raw below 12 bytes, else compact length + zlib data.
    private func tightData(stream: Deflater, level: Int32, out: ByteBuffer) {
        if staging.count < 12 {
            out.append(staging)
            return
        }
        compressed.clear()
        stream.compress(staging.bytes, level: level, into: compressed)
        out.tightLength(compressed.count)
        out.append(compressed)
    }
}

/// A small hash table of pixel values → palette index (insertion order),
/// with counts. Emptied in O(1) by bumping a generation number. A value
/// type over storage allocated once: encoders work on a local copy, so a
/// lookup touches only that copy and the storage (see `Encoders`).
struct ColourTable {
    private static let slotBits = 11
    private static let slots = 1 << slotBits
    private let keys = UnsafeMutablePointer<UInt32>.allocate(capacity: slots)
    private let stamps: UnsafeMutablePointer<UInt32> = {
        let p = UnsafeMutablePointer<UInt32>.allocate(capacity: slots)
        p.initialize(repeating: 0, count: slots)
        return p
    }()
    private let indices = UnsafeMutablePointer<UInt16>.allocate(capacity: slots)
    private let counts = UnsafeMutablePointer<UInt32>.allocate(capacity: 1024)
    private let colours = UnsafeMutablePointer<UInt32>.allocate(capacity: 1024)
    private var generation: UInt32 = 1
    private(set) var count = 0
    private var limit = 0

    /// Frees the storage (the owner calls this once).
    func deallocate() {
        keys.deallocate(); stamps.deallocate(); indices.deallocate(); counts.deallocate(); colours.deallocate()
    }

    /// Empties the table; it will hold at most `limit` (≤ 1024) colours.
    mutating func reset(limit: Int) {
        generation &+= 1
        if generation == 0 {
            stamps.update(repeating: 0, count: Self.slots)
            generation = 1
        }
        count = 0
        self.limit = min(limit, 1024)
    }

    /// The index of `v`, added if new; nil if it is new and the table is full.
    @inline(__always)
    mutating func index(of v: UInt32) -> Int? {
        var slot = Int((v &* 0x9E37_79B1) >> UInt32(32 - Self.slotBits))
        while true {
            if stamps[slot] != generation {
                guard count < limit else { return nil }
                stamps[slot] = generation
                keys[slot] = v
                indices[slot] = UInt16(count)
                colours[count] = v
                counts[count] = 0
                count += 1
                return count - 1
            }
            if keys[slot] == v { return Int(indices[slot]) }
            slot = (slot + 1) & (Self.slots - 1)
        }
    }

    /// Adds one to the count of index `k`; returns the new count.
    @inline(__always)
    func bump(_ k: Int) -> UInt32 {
        counts[k] += 1
        return counts[k]
    }

    func colour(_ k: Int) -> UInt32 { colours[k] }
}
