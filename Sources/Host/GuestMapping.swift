import Synchronization

/// Mapped guest pages, read and written only through bounds-checked accessors.
///
/// The memory is live guest memory: the guest may change it at any moment.
/// Every access names an offset and a size and fails (nil / false) when it
/// would leave the mapping; nothing outside this type does pointer arithmetic
/// on guest memory. Values are little-endian (x86 and Arm guests).
public final class GuestMapping {
    /// Bytes mapped (frames × 4096).
    public let byteCount: Int
    public let writable: Bool
    private var base: UnsafeMutableRawPointer?
    private var release: ((UnsafeMutableRawPointer, Int) -> Void)?

    /// Wraps `byteCount` bytes at `base`; `release` undoes the mapping once.
    public init(base: UnsafeMutableRawPointer, byteCount: Int, writable: Bool,
                release: @escaping (UnsafeMutableRawPointer, Int) -> Void) {
        self.base = base
        self.byteCount = byteCount
        self.writable = writable
        self.release = release
    }

    deinit { unmap() }

    /// Releases the mapping; every later access fails. Idempotent.
    public func unmap() {
        if let b = base, let r = release { r(b, byteCount) }
        base = nil
        release = nil
    }

    public var isMapped: Bool { base != nil }

    private func range(_ offset: Int, _ count: Int) -> UnsafeMutableRawPointer? {
        guard let b = base, offset >= 0, count >= 0, offset <= byteCount, byteCount - offset >= count else { return nil }
        return b + offset
    }

    /// The integer at `offset`, read once.
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T? {
        guard let p = range(offset, MemoryLayout<T>.size) else { return nil }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    /// Stores `value` at `offset`; false if read-only or out of range.
    @discardableResult
    public func store<T: FixedWidthInteger>(_ value: T, at offset: Int) -> Bool {
        guard writable, let p = range(offset, MemoryLayout<T>.size) else { return false }
        p.storeBytes(of: value.littleEndian, as: T.self)
        return true
    }

    /// Copies `count` bytes at `offset` out of guest memory into `destination`.
    @discardableResult
    public func copyBytes(at offset: Int, count: Int, to destination: UnsafeMutableRawPointer) -> Bool {
        guard let p = range(offset, count) else { return false }
        destination.copyMemory(from: p, byteCount: count)
        return true
    }

    /// Copies `count` bytes at `offset` into a new array (one fetch: the copy
    /// is what the caller parses).
    public func bytes(at offset: Int, count: Int) -> [UInt8]? {
        guard range(offset, count) != nil else { return nil }
        return [UInt8](unsafeUninitializedCapacity: count) { buf, n in
            _ = copyBytes(at: offset, count: count, to: UnsafeMutableRawPointer(buf.baseAddress!))
            n = count
        }
    }

    /// Copies `source` into guest memory at `offset`; false if read-only or out of range.
    @discardableResult
    public func write(_ source: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        guard writable, let p = range(offset, source.count) else { return false }
        if let s = source.baseAddress { p.copyMemory(from: s, byteCount: source.count) }
        return true
    }

    /// Runs `body` over `count` bytes at `offset` (nil if out of range). For
    /// bulk pixel work; the buffer must not escape `body`.
    public func withBytes<R>(at offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R? {
        guard let p = range(offset, count) else { return nil }
        return try body(UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Like `withBytes` but writable; nil if read-only or out of range. Used by
    /// the guest side (GuestKit) on its own memory.
    public func withMutableBytes<R>(at offset: Int, count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R? {
        guard writable, let p = range(offset, count) else { return nil }
        return try body(UnsafeMutableRawBufferPointer(start: p, count: count))
    }

    /// The base address, for the damage engine's write protection of memory
    /// this process owns. Nil once unmapped.
    public var baseAddress: UnsafeMutableRawPointer? { base }
}

/// Memory barriers for shared rings (`xen_rmb`/`xen_wmb`/`xen_mb`).
public enum Barrier {
    /// Later loads are not reordered before earlier loads (read the producer index, then the events).
    @inline(__always) public static func read() { atomicMemoryFence(ordering: .acquiring) }
    /// Earlier stores are visible before later stores (events, then the producer index).
    @inline(__always) public static func write() { atomicMemoryFence(ordering: .releasing) }
    /// A full barrier.
    @inline(__always) public static func full() { atomicMemoryFence(ordering: .sequentiallyConsistent) }
}
