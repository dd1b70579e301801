import Host
import Support

/// Layout of `struct xenfb_page` and its rings (xen/io/fbif.h).
public enum XenfbLayout {
    public static let inCons = 0, inProd = 4, outCons = 8, outProd = 12
    public static let width = 16, height = 20, lineLength = 24, memLength = 28, depth = 32
    /// `pd[]` starts at 40 with 8-byte entries on 64-bit guests, 36 with 4-byte ones on 32-bit
    /// (`unsigned long pd[256]` after `uint8_t depth` and padding).
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

/// Layout of `struct xenkbd_page` and its rings (xen/io/kbdif.h).
public enum XenkbdLayout {
    public static let inCons = 0, inProd = 4, outCons = 8, outProd = 12
    public static let inRingOffset = 1024, inRingLength = 51
    public static let outRingOffset = 3072, outRingLength = 25
    public static let eventSize = 40
    public static let typeMotion: UInt8 = 1, typeKey: UInt8 = 3, typePosition: UInt8 = 4, typeMultiTouch: UInt8 = 5
    /// Largest raw pointer coordinate (`feature-raw-pointer`).
    public static let rawMax: Int32 = 0x7fff
}

/// One 40-byte ring slot (`union xenfb_out_event`, `union xenkbd_in_event`...),
/// copied out of shared memory in one fetch into a value of its own: no heap
/// allocation, and every field read goes through `ByteReader`.
public struct RingSlot: Equatable, Sendable {
    public static let size = 40
    private var words: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)

    public init() {}

    /// A slot whose first byte (every event's `type`) is `type`.
    public init(type: UInt8) { set(type, at: 0) }

    /// Copies slot bytes `offset ..< offset + 40` of `mapping`; nil if they lie outside it.
    public init?(copying mapping: GuestMapping, at offset: Int) {
        let ok = withUnsafeMutableBytes(of: &words) { raw in
            mapping.copyBytes(at: offset, count: Self.size, to: raw.baseAddress!)
        }
        guard ok else { return nil }
    }

    /// Writes the slot into `mapping` at `offset`; false if read-only or out of range.
    @discardableResult
    public func write(to mapping: GuestMapping, at offset: Int) -> Bool {
        var copy = words
        return Swift.withUnsafeBytes(of: &copy) { mapping.write($0, at: offset) }
    }

    public static func == (a: RingSlot, b: RingSlot) -> Bool {
        var x = a.words, y = b.words
        return Swift.withUnsafeBytes(of: &x) { p in Swift.withUnsafeBytes(of: &y) { q in p.elementsEqual(q) } }
    }

    /// The slot's 40 bytes, for a writer that places them itself (a hostile guest's thread).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var copy = words
        return try Swift.withUnsafeBytes(of: &copy) { try body($0) }
    }

    public var type: UInt8 { read { $0.load(UInt8.self, at: 0) } ?? 0 }

    /// Reads the slot through a bounds-checked reader.
    public func read<R>(_ body: (ByteReader) -> R?) -> R? {
        var copy = words
        return Swift.withUnsafeBytes(of: &copy) { body(ByteReader($0)) }
    }

    public func u8(at offset: Int) -> UInt8 { read { $0.load(UInt8.self, at: offset) } ?? 0 }
    public func u32(at offset: Int) -> UInt32 { read { $0.load(UInt32.self, at: offset) } ?? 0 }
    public func i32(at offset: Int) -> Int32 { Int32(bitPattern: u32(at: offset)) }

    /// Stores a little-endian value at `offset` (ignored outside the slot).
    public mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        guard offset >= 0, offset + MemoryLayout<T>.size <= Self.size else { return }
        withUnsafeMutableBytes(of: &words) { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }
}

/// An event a vfb frontend puts in the OUT ring (`union xenfb_out_event`).
public enum XenfbOutEvent: Equatable, Sendable {
    /// `XENFB_TYPE_UPDATE`: pixels in this rectangle changed.
    case update(x: Int32, y: Int32, width: Int32, height: Int32)
    /// `XENFB_TYPE_RESIZE` (with `feature-resize`): a new geometry inside the same framebuffer.
    case resize(width: Int32, height: Int32, stride: Int32, depth: Int32, offset: Int32)
    /// Any other type: ignored by the backend.
    case unknown(type: UInt8)

    /// Decodes a copied slot (the fields are fixed-size: a decode cannot fail).
    public init(_ slot: RingSlot) {
        switch slot.type {
        case XenfbLayout.typeUpdate:
            self = .update(x: slot.i32(at: 4), y: slot.i32(at: 8), width: slot.i32(at: 12), height: slot.i32(at: 16))
        case XenfbLayout.typeResize:
            self = .resize(width: slot.i32(at: 4), height: slot.i32(at: 8), stride: slot.i32(at: 12),
                           depth: slot.i32(at: 16), offset: slot.i32(at: 20))
        case let type:
            self = .unknown(type: type)
        }
    }

    /// The slot a frontend writes for this event.
    public var slot: RingSlot {
        switch self {
        case .update(let x, let y, let w, let h):
            var s = RingSlot(type: XenfbLayout.typeUpdate)
            s.set(x, at: 4); s.set(y, at: 8); s.set(w, at: 12); s.set(h, at: 16)
            return s
        case .resize(let w, let h, let stride, let depth, let offset):
            var s = RingSlot(type: XenfbLayout.typeResize)
            s.set(w, at: 4); s.set(h, at: 8); s.set(stride, at: 12); s.set(depth, at: 16); s.set(offset, at: 20)
            return s
        case .unknown(let type):
            return RingSlot(type: type)
        }
    }
}

/// An event the vkbd backend puts in the IN ring (`union xenkbd_in_event`).
public enum XenkbdInEvent: Equatable, Sendable {
    /// `XENKBD_TYPE_MOTION`: relative pointer motion and wheel.
    case motion(dx: Int32, dy: Int32, dz: Int32)
    /// `XENKBD_TYPE_KEY`: a Linux `KEY_*`/`BTN_*` code pressed or released.
    case key(code: UInt32, pressed: Bool)
    /// `XENKBD_TYPE_POS`: absolute pointer position (pixels, or 0..0x7fff when raw) and wheel.
    case position(x: Int32, y: Int32, dz: Int32)
    case unknown(type: UInt8)

    public init(_ slot: RingSlot) {
        switch slot.type {
        case XenkbdLayout.typeMotion: self = .motion(dx: slot.i32(at: 4), dy: slot.i32(at: 8), dz: slot.i32(at: 12))
        case XenkbdLayout.typeKey: self = .key(code: slot.u32(at: 4), pressed: slot.u8(at: 1) != 0)
        case XenkbdLayout.typePosition: self = .position(x: slot.i32(at: 4), y: slot.i32(at: 8), dz: slot.i32(at: 12))
        case let type: self = .unknown(type: type)
        }
    }

    public var slot: RingSlot {
        switch self {
        case .motion(let dx, let dy, let dz):
            var s = RingSlot(type: XenkbdLayout.typeMotion)
            s.set(dx, at: 4); s.set(dy, at: 8); s.set(dz, at: 12)
            return s
        case .key(let code, let pressed):
            var s = RingSlot(type: XenkbdLayout.typeKey)
            s.set(UInt8(pressed ? 1 : 0), at: 1); s.set(code, at: 4)
            return s
        case .position(let x, let y, let dz):
            var s = RingSlot(type: XenkbdLayout.typePosition)
            s.set(x, at: 4); s.set(y, at: 8); s.set(dz, at: 12)
            return s
        case .unknown(let type):
            return RingSlot(type: type)
        }
    }
}

/// The framebuffer description at the start of `struct xenfb_page`, decoded
/// once from a copy of the page (never from live shared memory).
public struct XenfbPageHeader: Equatable, Sendable {
    public var width: Int32
    public var height: Int32
    public var lineLength: UInt32
    public var memLength: UInt32
    public var depth: UInt8
    /// `pd[0]` read as a 64-bit entry: nonzero tells a 64-bit guest without a
    /// `protocol` key (its high half is 0 on a 32-bit guest only if pd[1] is 0).
    public var firstDirectory64: UInt64

    /// Decodes the header from the copied page bytes; nil if `bytes` is
    /// shorter than the header.
    public init?(_ bytes: UnsafeRawBufferPointer) {
        let r = ByteReader(bytes)
        guard let w = r.load(Int32.self, at: XenfbLayout.width), let h = r.load(Int32.self, at: XenfbLayout.height),
              let line = r.load(UInt32.self, at: XenfbLayout.lineLength), let mem = r.load(UInt32.self, at: XenfbLayout.memLength),
              let depth = r.load(UInt8.self, at: XenfbLayout.depth), let pd = r.load(UInt64.self, at: XenfbLayout.pd64) else { return nil }
        width = w; height = h; lineLength = line; memLength = mem; self.depth = depth; firstDirectory64 = pd
    }

    /// The first `count` page-directory entries (`pd[]`): 8-byte entries from
    /// byte 40 on 64-bit guests, 4-byte ones from 36 on 32-bit guests. Nil if
    /// they do not fit before the IN ring or in `bytes`.
    public static func directories(in bytes: UnsafeRawBufferPointer, wide: Bool, count: Int) -> [UInt64]? {
        let base = wide ? XenfbLayout.pd64 : XenfbLayout.pd32
        let entry = wide ? 8 : 4
        guard count >= 0, count <= (XenfbLayout.inRingOffset - base) / entry else { return nil }
        return frameList(in: UnsafeRawBufferPointer(rebasing: bytes[min(base, bytes.count)...]), entrySize: entry, count: count)
    }

    /// `count` frame numbers of `entrySize` bytes (4 or 8) from the start of
    /// `bytes` (a page directory page, or `pd[]`); nil if they do not fit.
    public static func frameList(in bytes: UnsafeRawBufferPointer, entrySize: Int, count: Int) -> [UInt64]? {
        guard entrySize == 4 || entrySize == 8, count >= 0, bytes.count / entrySize >= count else { return nil }
        var reader = ByteReader(bytes)
        var frames: [UInt64] = []
        frames.reserveCapacity(count)
        for _ in 0..<count {
            guard let f = entrySize == 8 ? reader.read(UInt64.self) : reader.read(UInt32.self).map(UInt64.init) else { return nil }
            frames.append(f)
        }
        return frames
    }
}
