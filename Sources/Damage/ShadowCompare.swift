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
    /// returns rects covering exactly the rows that changed, each narrowed to
    /// the changed columns. Rects are clipped to both buffers.
    public static func confirm(_ candidates: [Rect], live: PixelBuffer, shadow: PixelBuffer) -> [Rect] {
        let clip = live.bounds.intersection(shadow.bounds)
        var out: [Rect] = []
        for candidate in candidates {
            let r = candidate.intersection(clip)
            guard !r.isEmpty else { continue }
            // A run of changed rows becomes one rect (x range = union).
            var runStart = -1, runX0 = 0, runX1 = 0
            for y in r.y ..< r.maxY {
                let changed = syncRow(y: y, x0: r.x, x1: r.maxX, live: live, shadow: shadow)
                if let (a, b) = changed {
                    if runStart < 0 {
                        runStart = y; runX0 = a; runX1 = b
                    } else {
                        runX0 = min(runX0, a); runX1 = max(runX1, b)
                    }
                } else if runStart >= 0 {
                    out.append(Rect(x: runX0, y: runStart, width: runX1 - runX0, height: y - runStart))
                    runStart = -1
                }
            }
            if runStart >= 0 {
                out.append(Rect(x: runX0, y: runStart, width: runX1 - runX0, height: r.maxY - runStart))
            }
        }
        return out
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

    /// Syncs pixels [x0, x1) of row y; returns the changed column range.
    private static func syncRow(y: Int, x0: Int, x1: Int, live: PixelBuffer, shadow: PixelBuffer) -> (Int, Int)? {
        let src = (live.pixels + y * live.stride).assumingMemoryBound(to: UInt32.self)
        let dst = (shadow.pixels + y * shadow.stride).assumingMemoryBound(to: UInt32.self)
        guard memcmp(src + x0, dst + x0, (x1 - x0) * 4) != 0 else { return nil }
        var a = x0
        while a < x1 && src[a] == dst[a] { a += 1 }
        var b = x1
        while b > a && src[b - 1] == dst[b - 1] { b -= 1 }
        (dst + a).update(from: src + a, count: b - a)
        return (a, b)
    }
}
