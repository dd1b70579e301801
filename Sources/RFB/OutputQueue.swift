/// Bytes waiting to be written to one client: whole chunks (a rectangle, a
/// server message), in order. A transport that frames its data (WebSocket)
/// sets `frameHeader`: every chunk then becomes one frame when it is queued
/// (the header goes into the chunk's headroom), so the transport's own
/// messages (pong, close) can go between chunks and never inside one.
///
/// The queue has no hard limit of its own: the session stops producing
/// updates while `count` is above its threshold and the connection stops
/// reading input then, so what is queued is bounded by the threshold plus one
/// rectangle plus a few small messages (see README.md, Bounds).
final class OutputQueue {
    /// The header to put in front of a chunk of `n` bytes, if the transport frames.
    var frameHeader: ((_ n: Int) -> [UInt8])?
    private var chunks: [ByteBuffer] = []
    private var head = 0
    /// Bytes of the first chunk already written.
    private var offset = 0
    private(set) var count = 0
    /// Where written chunks go back to, and new ones come from.
    private let pool: BufferPool

    /// `pool`: the server's (shared by its clients); a queue of its own by default.
    init(pool: BufferPool = BufferPool(maxBuffers: 2)) {
        self.pool = pool
    }

    var isEmpty: Bool { count == 0 }

    /// A buffer to fill and then `enqueue`.
    func makeChunk(capacity: Int = 512) -> ByteBuffer {
        pool.take(capacity: capacity)
    }

    /// Queues a chunk (framed, if the transport frames).
    func enqueue(_ chunk: ByteBuffer) {
        guard !chunk.isEmpty else { recycle(chunk); return }
        if let frameHeader {
            frameHeader(chunk.count).withUnsafeBytes { chunk.prependHeader($0) }
        }
        chunks.append(chunk)
        count += chunk.count
    }

    /// Queues bytes exactly as given (the transport's own messages).
    func enqueueUnframed(_ bytes: [UInt8]) {
        let chunk = makeChunk(capacity: bytes.count)
        chunk.append(bytes)
        chunks.append(chunk)
        count += chunk.count
    }

    /// Up to `max` pieces of the queued bytes, in order, for one writev.
    func withPieces<R>(max: Int, _ body: ([UnsafeRawBufferPointer]) -> R) -> R {
        var pieces: [UnsafeRawBufferPointer] = []
        pieces.reserveCapacity(min(max, chunks.count - head))
        var i = head
        while i < chunks.count && pieces.count < max {
            let b = chunks[i].bytes
            pieces.append(i == head ? UnsafeRawBufferPointer(rebasing: b[offset...]) : b)
            i += 1
        }
        return body(pieces)
    }

    /// Drops the first `n` queued bytes (they were written).
    func consume(_ n: Int) {
        var left = n
        count -= n
        while left > 0 && head < chunks.count {
            let available = chunks[head].count - offset
            if left >= available {
                left -= available
                recycle(chunks[head])
                head += 1
                offset = 0
            } else {
                offset += left
                left = 0
            }
        }
        if head == chunks.count {
            chunks.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 64 {
            chunks.removeFirst(head)
            head = 0
        }
    }

    private func recycle(_ b: ByteBuffer) {
        pool.give(b)
    }

    /// Lets go of the list's storage (the client is idle: nothing queued, no
    /// update in progress), so an idle client holds no output memory; its
    /// buffers are already back in the pool.
    func trim() {
        guard chunks.isEmpty else { return }
        chunks = []
    }
}

/// Output buffers kept for reuse, shared by every client of one server (its
/// thread only). An update of a few hundred KiB goes out in chunks of 64–192
/// KiB: without reuse each would be allocated, grown and freed again, and
/// past malloc's mmap threshold every page of it faulted in anew on each
/// update (37 page faults per Raw update of an 800×168 band, measured with
/// `xenvfb-bench backend`). The pool keeps at most `maxBuffers` buffers of at
/// most `maxCapacity` bytes each (1 MiB at most with the server's 4), which
/// is what one client's queue holds at its bound anyway.
final class BufferPool {
    static let maxCapacity = 256 << 10
    let maxBuffers: Int
    private var free: [ByteBuffer] = []

    init(maxBuffers: Int) { self.maxBuffers = maxBuffers }

    /// A buffer with room for at least `capacity` bytes, empty.
    func take(capacity: Int) -> ByteBuffer {
        if let b = free.popLast() {
            b.reserve(capacity)
            return b
        }
        return ByteBuffer(capacity: capacity)
    }

    /// Takes a buffer back (its contents are forgotten).
    func give(_ b: ByteBuffer) {
        guard free.count < maxBuffers else { return }
        b.clear(keepingAtMost: Self.maxCapacity)
        free.append(b)
    }
}
