/// Bounds-checked little-endian reads from a byte buffer.
///
/// Every read that would leave the buffer returns nil: wire formats written by
/// a guest or a socket peer are read only through this type (or
/// `GuestMapping`), so no pointer arithmetic is scattered over the code.
public struct ByteReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    /// The value of type T at an absolute offset, or nil if it does not fit.
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at position: Int) -> T? {
        guard position >= 0, position <= bytes.count,
              bytes.count - position >= MemoryLayout<T>.size else { return nil }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: T.self))
    }

    public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) -> T? {
        guard let v: T = load(at: offset) else { return nil }
        offset += MemoryLayout<T>.size
        return v
    }

    public mutating func readBytes(_ count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, count <= remaining else { return nil }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }
}

extension FixedWidthInteger {
    /// Parses a decimal string as xenstore values are written ("%u", "%lu", "%d"):
    /// optional sign, digits only, no spaces, no overflow.
    public init?(xenstoreDecimal text: String) {
        guard !text.isEmpty, text.utf8.count <= 24 else { return nil }
        guard let v = Self(text, radix: 10) else { return nil }
        self = v
    }
}
