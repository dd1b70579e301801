#if canImport(Glibc)
import Glibc
#endif

/// A picture in memory: 32-bit pixels, rows `stride` bytes apart. Used for
/// both sides of a shadow compare (a framebuffer mapping and the displays'
/// `Frame`).
public struct PixelBuffer {
    public var pixels: UnsafeMutableRawPointer
    public var width: Int
    public var height: Int
    public var stride: Int

    public init(pixels: UnsafeMutableRawPointer, width: Int, height: Int, stride: Int) {
        precondition(width > 0 && height > 0 && stride >= width * 4)
        self.pixels = pixels
        self.width = width
        self.height = height
        self.stride = stride
    }

    public var bounds: Rect { Rect(x: 0, y: 0, width: width, height: height) }
}

/// Keeps a shadow copy in step with a live framebuffer and tells exactly
/// which pixels changed.
///
/// `confirm` takes candidate rectangles (from the damage engine or a
/// frontend's update events, which may over-report), compares them row by row
/// against the shadow, copies the changed pixels over, and returns tight
/// rectangles around what really changed. `scanTiles` does the same for the
/// whole frame in tiles, for frontends that send no updates.
///
/// Both sides are XRGB8888 (32 bits per pixel); the live side is the guest's
/// mapping (`offset` applied by the caller), the shadow the displays' `Frame`.
public enum ShadowCompare {
    /// Copies the changed pixels of `candidates` from `live` to `shadow` and
    /// returns at most `maxRects` rects around what really changed.
    ///
    /// Each row of a candidate is compared with one memcmp; a row that
    /// differs is examined in columns of `column` pixels, each narrowed to its
    /// changed pixels, which are copied. Within a column, a run of
    /// changed rows becomes one rect, so a window moving sideways yields its
    /// two edge strips, not its whole width. The pieces are then coalesced.
    /// Rects are clipped to both buffers.
    public static func confirm(_ candidates: [Rect], live: PixelBuffer, shadow: PixelBuffer,
                               maxRects: Int = 16, column: Int = 128) -> [Rect] {
        precondition(column > 0)
        let clip = live.bounds.intersection(shadow.bounds)
        var out: [Rect] = []
        for candidate in candidates {
            let r = candidate.intersection(clip)
            guard !r.isEmpty else { continue }
            confirmRect(r, live: live, shadow: shadow, column: column, into: &out)
        }
        return Coalescer.coalesce(out, maxRects: maxRects, mergeSlack: 4096)
    }

    /// One open run of changed rows in a column.
    private struct Run { var start = -1, x0 = 0, x1 = 0 }

    private static func confirmRect(_ r: Rect, live: PixelBuffer, shadow: PixelBuffer, column: Int,
                                    into out: inout [Rect]) {
        let firstColumn = r.x / column
        var runs = [Run](repeating: Run(), count: (r.maxX - 1) / column - firstColumn + 1)
        var open = 0
        func close(_ k: Int, at y: Int) {
            let run = runs[k]
            out.append(Rect(x: run.x0, y: run.start, width: run.x1 - run.x0, height: y - run.start))
            runs[k].start = -1
            open -= 1
        }
        for y in r.y ..< r.maxY {
            let src = (live.pixels + y * live.stride).assumingMemoryBound(to: UInt32.self)
            let dst = (shadow.pixels + y * shadow.stride).assumingMemoryBound(to: UInt32.self)
            if memcmp(src + r.x, dst + r.x, r.width * 4) == 0 {
                if open > 0 { for k in runs.indices where runs[k].start >= 0 { close(k, at: y) } }
                continue
            }
            var c = r.x
            while c < r.maxX {
                let end = min(r.maxX, (c / column + 1) * column)
                let k = c / column - firstColumn
                // The live side may be written while we look (a guest's
                // framebuffer): every scan is bounded by the column, and only
                // what is reported is copied, so a write we miss now still
                // differs next time.
                var a = c, b = end
                var changed = false
                if memcmp(src + c, dst + c, (end - c) * 4) != 0 {
                    while a < end && src[a] == dst[a] { a += 1 }
                    while b > a && src[b - 1] == dst[b - 1] { b -= 1 }
                    changed = b > a
                }
                if changed {
                    (dst + a).update(from: src + a, count: b - a)
                    if runs[k].start < 0 {
                        runs[k] = Run(start: y, x0: a, x1: b)
                        open += 1
                    } else {
                        runs[k].x0 = min(runs[k].x0, a)
                        runs[k].x1 = max(runs[k].x1, b)
                    }
                } else if runs[k].start >= 0 {
                    close(k, at: y)
                }
                c = end
            }
        }
        for k in runs.indices where runs[k].start >= 0 { close(k, at: r.maxY) }
    }

    /// Compares the whole frame in `tile`×`tile` squares, copies the changed
    /// tiles to the shadow and returns them (unmerged; feed them to a
    /// `Coalescer`).
    public static func scanTiles(live: PixelBuffer, shadow: PixelBuffer, tile: Int = 64) -> [Rect] {
        precondition(tile > 0)
        let clip = live.bounds.intersection(shadow.bounds)
        var out: [Rect] = []
        var ty = 0
        while ty < clip.height {
            let h = min(tile, clip.height - ty)
            var tx = 0
            while tx < clip.width {
                let w = min(tile, clip.width - tx)
                var differs = false
                for y in ty ..< ty + h where memcmp(live.pixels + y * live.stride + tx * 4,
                                                    shadow.pixels + y * shadow.stride + tx * 4, w * 4) != 0 {
                    differs = true
                    break
                }
                if differs {
                    for y in ty ..< ty + h {
                        (shadow.pixels + y * shadow.stride + tx * 4)
                            .copyMemory(from: live.pixels + y * live.stride + tx * 4, byteCount: w * 4)
                    }
                    out.append(Rect(x: tx, y: ty, width: w, height: h))
                }
                tx += tile
            }
            ty += tile
        }
        return out
    }
}
