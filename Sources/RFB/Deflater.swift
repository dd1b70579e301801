import CZlib

/// One zlib deflate stream, kept for a connection's lifetime as Zlib, ZRLE
/// and Tight require (the client inflates with one continuous stream).
///
/// Each call compresses one rectangle's data and ends with a sync flush, so
/// the client can decode the rectangle from the bytes sent so far. The window
/// and hash sizes are zlib's largest, as QEMU's VNC server uses (32 KiB
/// window, memLevel 9: about 384 KiB per stream once used): compressing a
/// full-colour 800x160 band at level 2 took 2.5 ms instead of 3.2 ms with a
/// 16 KiB window and memLevel 7 (about 130 KiB), since a larger memLevel
/// means larger deflate blocks (fewer Huffman trees to build) and fewer hash
/// collisions. Output grows by about 5% on such data.
///
/// The stream is raw deflate behind a zlib header written by hand: the
/// client's inflater reads a zlib stream, but an RFB stream never ends, so
/// the Adler-32 checksum of a zlib trailer is never sent nor checked, and
/// zlib would compute it over every byte for nothing (3% of the CPU of a
/// Tight update of full-colour pixels, measured with perf).
final class Deflater {
    static let windowBits: Int32 = 15
    static let memoryLevel: Int32 = 9
    /// CMF 0x78 (deflate, 32 KiB window), FLG 0x01 (no dictionary, fastest;
    /// 0x7801 is a multiple of 31, as RFC 1950 requires).
    static let zlibHeader: [UInt8] = [0x78, 0x01]

    private let stream: UnsafeMutablePointer<z_stream>
    private(set) var level: Int32
    private var headerSent = false

    init(level: Int32) {
        self.level = level
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let rc = deflateInit2_(stream, level, Z_DEFLATED, -Self.windowBits, Self.memoryLevel, Z_DEFAULT_STRATEGY,
                               zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        // Only fails for bad arguments or out of memory; the arguments are fixed.
        precondition(rc == Z_OK, "deflateInit2 failed: \(rc)")
    }

    deinit {
        deflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    /// Compresses `input` and appends the output (ending in a sync flush) to `out`.
    func compress(_ input: UnsafeRawBufferPointer, level newLevel: Int32, into out: ByteBuffer) {
        if !headerSent {
            headerSent = true
            out.append(Self.zlibHeader)
        }
        if newLevel != level {
            // deflateParams may emit what it had buffered: catch it in `out`.
            level = newLevel
            var spare = 64
            while true {
                out.reserve(spare)
                let before = out.count
                var rc: Int32 = Z_OK
                out.appendUninitialized(spare) { p in
                    stream.pointee.next_in = nil
                    stream.pointee.avail_in = 0
                    stream.pointee.next_out = p.assumingMemoryBound(to: Bytef.self)
                    stream.pointee.avail_out = UInt32(spare)
                    rc = deflateParams(stream, newLevel, Z_DEFAULT_STRATEGY)
                }
                let produced = spare - Int(stream.pointee.avail_out)
                out.truncate(to: before + produced)
                if rc != Z_BUF_ERROR || stream.pointee.avail_out != 0 { break }
                spare *= 2
            }
        }
        stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = UInt32(input.count)
        while true {
            let room = Int(deflateBound(stream, UInt(stream.pointee.avail_in))) + 64
            let before = out.count
            out.appendUninitialized(room) { p in
                stream.pointee.next_out = p.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_out = UInt32(room)
                _ = deflate(stream, Z_SYNC_FLUSH)
            }
            let produced = room - Int(stream.pointee.avail_out)
            out.truncate(to: before + produced)
            // Done once all input is taken and the flush did not run out of room.
            if stream.pointee.avail_in == 0 && stream.pointee.avail_out != 0 { break }
        }
        stream.pointee.next_in = nil
        stream.pointee.next_out = nil
    }
}
