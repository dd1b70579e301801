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
    /// Spare buffers for reuse (keeps allocation off the update path).
    private var spares: [ByteBuffer] = []

    var isEmpty: Bool { count == 0 }

    /// A buffer to fill and then `enqueue`.
    func makeChunk(capacity: Int = 512) -> ByteBuffer {
        if let b = spares.popLast() { return b }
        return ByteBuffer(capacity: capacity)
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
        guard spares.count < 2 else { return }
        b.clear(keepingAtMost: 64 << 10)
        spares.append(b)
    }

    /// Lets go of the spare buffers (the client is idle: nothing queued, no
    /// update in progress), so an idle client holds no output memory.
    func trim() {
        guard chunks.isEmpty else { return }
        spares.removeAll()
        chunks = []
    }
}
