#if canImport(Glibc)
import Glibc
#endif

/// A growable run of bytes: one chunk of output (a rectangle, a server
/// message) or a scratch area an encoder fills before compressing.
///
/// Writes are appends that grow the storage as needed, so no write can land
/// outside it; multi-byte integers are written big-endian (network order),
/// as RFB wants everything but pixel values. The first `headroom` bytes are
/// kept free so a WebSocket frame header can be put in front of the payload
/// without copying it (`prependHeader`).
final class ByteBuffer {
    static let headroom = 14

    private(set) var storage: UnsafeMutableRawPointer
    private(set) var capacity: Int
    /// Offset of the first byte (below `headroom` once a header was prepended).
    private(set) var start = ByteBuffer.headroom
    /// Offset one past the last byte.
    private(set) var end = ByteBuffer.headroom

    init(capacity: Int = 256) {
        self.capacity = max(capacity, 64) + ByteBuffer.headroom
        guard let p = malloc(self.capacity) else { fatalError("out of memory allocating \(self.capacity) bytes") }
        storage = p
    }

    deinit { free(storage) }

    var count: Int { end - start }
    var isEmpty: Bool { end == start }

    /// The bytes written so far (valid until the next write).
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: storage + start, count: end - start) }

    /// Makes room for `n` more bytes.
    @inline(__always)
    func reserve(_ n: Int) {
        if capacity - end < n { grow(n) }
    }

    private func grow(_ n: Int) {
        var newCapacity = capacity * 2
        while newCapacity - end < n { newCapacity *= 2 }
        guard let p = realloc(storage, newCapacity) else { fatalError("out of memory growing a buffer to \(newCapacity) bytes") }
        storage = p
        capacity = newCapacity
    }

    /// Forgets the contents; keeps the storage unless it grew past `keep` bytes.
    func clear(keepingAtMost keep: Int = 1 << 20) {
        start = ByteBuffer.headroom
        end = ByteBuffer.headroom
        if capacity > keep + ByteBuffer.headroom, let p = realloc(storage, keep + ByteBuffer.headroom) {
            storage = p
            capacity = keep + ByteBuffer.headroom
        }
    }

    @inline(__always) func u8(_ v: UInt8) {
        reserve(1)
        storage.storeBytes(of: v, toByteOffset: end, as: UInt8.self)
        end += 1
    }

    @inline(__always) func u16(_ v: UInt16) {
        reserve(2)
        storage.storeBytes(of: v.bigEndian, toByteOffset: end, as: UInt16.self)
        end += 2
    }

    @inline(__always) func u32(_ v: UInt32) {
        reserve(4)
        storage.storeBytes(of: v.bigEndian, toByteOffset: end, as: UInt32.self)
        end += 4
    }

    @inline(__always) func s32(_ v: Int32) { u32(UInt32(bitPattern: v)) }

    func append(_ source: UnsafeRawBufferPointer) {
        guard let base = source.baseAddress, source.count > 0 else { return }
        reserve(source.count)
        (storage + end).copyMemory(from: base, byteCount: source.count)
        end += source.count
    }

    func append(_ array: [UInt8]) {
        array.withUnsafeBytes { append($0) }
    }

    func append(_ other: ByteBuffer) { append(other.bytes) }

    /// Appends `n` bytes written by `body` into uninitialised space. `body`
    /// must write exactly `n` bytes (the count is trusted; keep it exact).
    @inline(__always)
    func appendUninitialized(_ n: Int, _ body: (UnsafeMutableRawPointer) -> Void) {
        guard n > 0 else { return }
        reserve(n)
        body(storage + end)
        end += n
    }

    /// Overwrites 4 bytes at `offset` (relative to the start) with `v` big-endian.
    func setU32(_ v: UInt32, at offset: Int) {
        precondition(offset >= 0 && offset + 4 <= count)
        storage.storeBytes(of: v.bigEndian, toByteOffset: start + offset, as: UInt32.self)
    }

    /// Drops the last `n` bytes.
    func truncate(to n: Int) {
        precondition(n >= 0 && n <= count)
        end = start + n
    }

    /// Drops the first `n` bytes (they were written elsewhere).
    func removeFirst(_ n: Int) {
        precondition(n >= 0 && n <= count)
        if n == count {
            start = ByteBuffer.headroom
            end = ByteBuffer.headroom
        } else {
            start += n
        }
    }

    /// Puts `header` (at most `headroom` bytes) in front of the contents.
    func prependHeader(_ header: UnsafeRawBufferPointer) {
        precondition(header.count <= start)
        start -= header.count
        if let base = header.baseAddress { (storage + start).copyMemory(from: base, byteCount: header.count) }
    }
}

extension ByteBuffer {
    /// Lets `body` write up to `maxBytes` through a cursor, then keeps what it
    /// wrote. For loops that write per pixel: the cursor is a local value, so
    /// its writes cost a bounds check each and nothing else (no access to
    /// this object's properties per byte).
    @inline(__always)
    func write<R>(maxBytes: Int, _ body: (inout ByteCursor) -> R) -> R {
        reserve(maxBytes)
        var cursor = ByteCursor(base: storage + end, limit: maxBytes)
        let result = body(&cursor)
        end += cursor.count
        return result
    }
}

/// Where a hot loop writes its bytes (see `ByteBuffer.write`). Every write is
/// checked against the space reserved: a wrong size estimate traps, it never
/// writes past the buffer.
struct ByteCursor {
    let base: UnsafeMutableRawPointer
    let limit: Int
    private(set) var count = 0

    @inline(__always) mutating func u8(_ v: UInt8) {
        precondition(count < limit, "encoder wrote past its reserved space")
        base.storeBytes(of: v, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    @inline(__always) mutating func u16(_ v: UInt16) {
        precondition(count + 2 <= limit, "encoder wrote past its reserved space")
        base.storeBytes(of: v.bigEndian, toByteOffset: count, as: UInt16.self)
        count += 2
    }

    @inline(__always) mutating func u32(_ v: UInt32) {
        precondition(count + 4 <= limit, "encoder wrote past its reserved space")
        base.storeBytes(of: v.bigEndian, toByteOffset: count, as: UInt32.self)
        count += 4
    }

    /// One pixel value in `layout`.
    @inline(__always) mutating func pixel(_ v: UInt32, _ layout: PixelLayout) {
        let n = layout.bytes
        precondition(count + n <= limit, "encoder wrote past its reserved space")
        layout.store(v, at: base + count)
        count += n
    }

    /// `n` pixel values in `layout`.
    mutating func pixels(_ values: UnsafePointer<UInt32>, count n: Int, _ layout: PixelLayout) {
        let size = n * layout.bytes
        precondition(count + size <= limit, "encoder wrote past its reserved space")
        layout.store(values, count: n, at: base + count)
        count += size
    }
}
