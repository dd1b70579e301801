import Host

/// Layout of `struct xenfb_page` and its rings (xen/io/fbif.h, reference §1).
public enum XenfbLayout {
    public static let inCons = 0, inProd = 4, outCons = 8, outProd = 12
    public static let width = 16, height = 20, lineLength = 24, memLength = 28, depth = 32
    /// `pd[]` starts at 40 with 8-byte entries on 64-bit guests, 36 with 4-byte ones on 32-bit.
    public static let pd64 = 40, pd32 = 36
    public static let inRingOffset = 1024, inRingLength = 25
    public static let outRingOffset = 2048, outRingLength = 51
    public static let eventSize = 40
    /// pd entries that end before the IN ring (byte 1024).
    public static let maxDirectories64 = (inRingOffset - pd64) / 8   // 123
    public static let maxDirectories32 = (inRingOffset - pd32) / 4   // 247

    public static let typeUpdate: UInt8 = 2, typeResize: UInt8 = 3, typeRefreshPeriod: UInt8 = 1
    public static let defaultWidth = 800, defaultHeight = 600, defaultDepth = 32
}

/// Layout of `struct xenkbd_page` and its rings (xen/io/kbdif.h, reference §2).
public enum XenkbdLayout {
    public static let inCons = 0, inProd = 4, outCons = 8, outProd = 12
    public static let inRingOffset = 1024, inRingLength = 51
    public static let outRingOffset = 3072, outRingLength = 25
    public static let eventSize = 40
    public static let typeMotion: UInt8 = 1, typeKey: UInt8 = 3, typePosition: UInt8 = 4, typeMultiTouch: UInt8 = 5
    /// Largest raw pointer coordinate (`feature-raw-pointer`).
    public static let rawMax: Int32 = 0x7fff
}

/// One event, copied out of a ring slot (40 bytes, private to the backend),
/// with bounds-checked field reads.
public struct RingEvent: Equatable, Sendable {
    public var bytes: [UInt8]
    public init(bytes: [UInt8]) { self.bytes = bytes }
    public init(type: UInt8) {
        bytes = [UInt8](repeating: 0, count: XenfbLayout.eventSize)
        bytes[0] = type
    }

    public var type: UInt8 { bytes.first ?? 0 }

    public func u8(at offset: Int) -> UInt8 { offset >= 0 && offset < bytes.count ? bytes[offset] : 0 }

    public func i32(at offset: Int) -> Int32 { Int32(bitPattern: u32(at: offset)) }

    public func u32(at offset: Int) -> UInt32 {
        guard offset >= 0, offset + 4 <= bytes.count else { return 0 }
        return UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }

    public mutating func set(_ value: UInt8, at offset: Int) { bytes[offset] = value }

    public mutating func set(_ value: Int32, at offset: Int) { set(UInt32(bitPattern: value), at: offset) }

    public mutating func set(_ value: UInt32, at offset: Int) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
    }
}

/// A ring of 40-byte events inside a shared page: free-running u32 indices,
/// slot `index % length` (length need not be a power of two).
public struct SharedRing {
    public let page: GuestMapping
    public let consOffset: Int
    public let prodOffset: Int
    public let ringOffset: Int
    public let length: UInt32

    public init(page: GuestMapping, consOffset: Int, prodOffset: Int, ringOffset: Int, length: Int) {
        self.page = page
        self.consOffset = consOffset
        self.prodOffset = prodOffset
        self.ringOffset = ringOffset
        self.length = UInt32(length)
    }

    public func slotOffset(_ index: UInt32) -> Int { ringOffset + Int(index % length) * XenfbLayout.eventSize }

    /// Copies the event in slot `index` out of shared memory (one fetch).
    public func copyEvent(_ index: UInt32) -> RingEvent? {
        page.bytes(at: slotOffset(index), count: XenfbLayout.eventSize).map(RingEvent.init(bytes:))
    }

    /// Writes `event` into slot `index`.
    @discardableResult
    public func putEvent(_ event: RingEvent, at index: UInt32) -> Bool {
        event.bytes.withUnsafeBytes { page.write($0, at: slotOffset(index)) }
    }

    public func loadCons() -> UInt32 { page.load(UInt32.self, at: consOffset) ?? 0 }
    public func loadProd() -> UInt32 { page.load(UInt32.self, at: prodOffset) ?? 0 }
    public func storeCons(_ v: UInt32) { page.store(v, at: consOffset) }
    public func storeProd(_ v: UInt32) { page.store(v, at: prodOffset) }
}
