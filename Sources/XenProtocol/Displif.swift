import Host
import Support

/// Layout and constants of the PV display protocol, xen/io/displif.h
/// (protocol version 2): per connector a request ring (xen/io/ring.h,
/// 64-byte entries, 32 of them in a page) and an event page (in_cons,
/// in_prod, then 63 events of 64 bytes).
public enum DisplifLayout {
    public static let entrySize = 64
    /// Requests in a connector's request ring (`__RING_SIZE` of a 4 KiB page).
    public static let requestRingEntries = SharedRingLayout.entries(entrySize: entrySize)
    /// `struct xendispl_event_page`.
    public static let eventInCons = 0, eventInProd = 4
    /// `XENDISPL_IN_RING_OFFS`, `XENDISPL_IN_RING_LEN`.
    public static let eventRingOffset = 64
    public static let eventRingLength = (guestPageSize - eventRingOffset) / entrySize   // 63

    /// `XENDISPL_OP_*`.
    public static let opDbufCreate: UInt8 = 0x10
    public static let opDbufDestroy: UInt8 = 0x11
    public static let opFbAttach: UInt8 = 0x12
    public static let opFbDetach: UInt8 = 0x13
    public static let opSetConfig: UInt8 = 0x14
    public static let opPageFlip: UInt8 = 0x15
    public static let opGetEDID: UInt8 = 0x16
    /// `XENDISPL_EVT_PG_FLIP`.
    public static let eventPageFlip: UInt8 = 0x00
    /// `XENDISPL_DBUF_FLG_REQ_ALLOC`: the backend is to allocate the buffer.
    public static let flagRequestAlloc: UInt32 = 1 << 0
    /// grant_ref_t entries in one page-directory page after `gref_dir_next_page`.
    public static let grantsPerDirectoryPage = (guestPageSize - 4) / 4   // 1023
    /// `XENDISPL_EDID_BLOCK_SIZE`, `XENDISPL_EDID_MAX_SIZE`.
    public static let edidBlockSize = 128, edidMaxSize = 128 * 256

    /// xenstore keys (`XENDISPL_FIELD_*`).
    public static let keyVersions = "versions", keyVersion = "version"
    public static let keyRequestRingRef = "req-ring-ref", keyRequestChannel = "req-event-channel"
    public static let keyEventRingRef = "evt-ring-ref", keyEventChannel = "evt-event-channel"
    public static let keyResolution = "resolution", keyBackendAlloc = "be-alloc", keyUniqueID = "unique-id"
    /// `XENDISPL_PROTOCOL_VERSION`.
    public static let protocolVersion = "2"
}

/// Xen's errno values (xen/errno.h): a displif response's status is 0 or
/// the negated value.
public enum XenErrno: Int32, Sendable {
    case perm = 1, noent = 2, io = 5, tooBig = 7, again = 11, nomem = 12, fault = 14, busy = 16
    case exist = 17, nodev = 19, inval = 22, nospc = 28, nosys = 38, opnotsupp = 95

    /// The response status for this error.
    public var status: Int32 { -rawValue }
}

/// The pixel formats a displif framebuffer may have (FB_ATTACH's
/// `pixel_format`, a DRM fourcc): those Linux's drm/xen-front offers
/// (drivers/gpu/drm/xen/xen_drm_front_conn.c, `plane_formats`).
public enum DisplifPixelFormat: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case rgb565 = 0x3631_4752     // 'RG16': u16 R:G:B 5:6:5
    case rgb888 = 0x3432_4752     // 'RG24': bytes B, G, R
    case xrgb8888 = 0x3432_5258   // 'XR24': u32 x:R:G:B
    case argb8888 = 0x3432_5241   // 'AR24': u32 A:R:G:B (shown opaque)
    case xrgb4444 = 0x3231_5258   // 'XR12': u16 x:R:G:B 4:4:4:4
    case argb4444 = 0x3231_5241   // 'AR12'
    case xrgb1555 = 0x3531_5258   // 'XR15': u16 x:R:G:B 1:5:5:5
    case argb1555 = 0x3531_5241   // 'AR15'
    case yuyv = 0x5659_5559       // 'YUYV': bytes Y0, Cb, Y1, Cr for two pixels

    /// Bits per pixel in memory (`drm_format_info.cpp[0] * 8`, what
    /// drm/xen-front sends as SET_CONFIG's `bpp`).
    public var bitsPerPixel: Int {
        switch self {
        case .xrgb8888, .argb8888: return 32
        case .rgb888: return 24
        case .rgb565, .xrgb4444, .argb4444, .xrgb1555, .argb1555, .yuyv: return 16
        }
    }

    public var bytesPerPixel: Int { bitsPerPixel / 8 }

    /// The four characters, as DRM prints them.
    public var description: String { Self.name(rawValue) }

    /// The characters of any fourcc code, for messages (non-printable bytes as '?').
    public static func name(_ code: UInt32) -> String {
        String((0..<4).map { i -> Character in
            let b = UInt8(truncatingIfNeeded: code >> (8 * UInt32(i)))
            return b >= 0x20 && b < 0x7f ? Character(Unicode.Scalar(b)) : "?"
        })
    }
}

/// `struct xendispl_dbuf_create_req`.
public struct DisplifDbufCreate: Equatable, Sendable {
    public var dbufCookie: UInt64
    public var width: UInt32
    public var height: UInt32
    public var bpp: UInt32
    public var bufferSize: UInt32
    public var flags: UInt32
    public var directoryRef: UInt32
    public var dataOffset: UInt32

    public init(dbufCookie: UInt64, width: UInt32, height: UInt32, bpp: UInt32, bufferSize: UInt32,
                flags: UInt32 = 0, directoryRef: UInt32, dataOffset: UInt32 = 0) {
        self.dbufCookie = dbufCookie
        self.width = width
        self.height = height
        self.bpp = bpp
        self.bufferSize = bufferSize
        self.flags = flags
        self.directoryRef = directoryRef
        self.dataOffset = dataOffset
    }
}

/// `struct xendispl_set_config_req`; all zero resets (turns the connector off).
public struct DisplifSetConfig: Equatable, Sendable {
    public var fbCookie: UInt64
    public var x: UInt32, y: UInt32, width: UInt32, height: UInt32, bpp: UInt32

    public init(fbCookie: UInt64, x: UInt32, y: UInt32, width: UInt32, height: UInt32, bpp: UInt32) {
        self.fbCookie = fbCookie
        self.x = x
        self.y = y
        self.width = width
        self.height = height
        self.bpp = bpp
    }

    public var isReset: Bool { fbCookie == 0 && x == 0 && y == 0 && width == 0 && height == 0 && bpp == 0 }
}

/// One request from a displif frontend (`struct xendispl_req`), decoded from
/// a copied 64-byte entry. Fields are fixed-size, so a decode cannot fail;
/// an unknown operation decodes as `.unknown`.
public enum DisplifRequest: Equatable, Sendable {
    case dbufCreate(DisplifDbufCreate)
    case dbufDestroy(dbufCookie: UInt64)
    case fbAttach(dbufCookie: UInt64, fbCookie: UInt64, width: UInt32, height: UInt32, pixelFormat: UInt32)
    case fbDetach(fbCookie: UInt64)
    case setConfig(DisplifSetConfig)
    case pageFlip(fbCookie: UInt64)
    case getEDID(bufferSize: UInt32, directoryRef: UInt32)
    case unknown(operation: UInt8)

    /// Offsets in the entry: `id` u16 @0, `operation` u8 @2, the operation's fields from @8.
    static let op = 8

    /// The request's `id` (echoed in the response) and `operation`.
    public static func header(_ e: RingEntry64) -> (id: UInt16, operation: UInt8) { (e.u16(at: 0), e.u8(at: 2)) }

    public init(_ e: RingEntry64) {
        let o = Self.op
        switch e.u8(at: 2) {
        case DisplifLayout.opDbufCreate:
            self = .dbufCreate(DisplifDbufCreate(
                dbufCookie: e.u64(at: o), width: e.u32(at: o + 8), height: e.u32(at: o + 12), bpp: e.u32(at: o + 16),
                bufferSize: e.u32(at: o + 20), flags: e.u32(at: o + 24), directoryRef: e.u32(at: o + 28),
                dataOffset: e.u32(at: o + 32)))
        case DisplifLayout.opDbufDestroy:
            self = .dbufDestroy(dbufCookie: e.u64(at: o))
        case DisplifLayout.opFbAttach:
            self = .fbAttach(dbufCookie: e.u64(at: o), fbCookie: e.u64(at: o + 8), width: e.u32(at: o + 16),
                             height: e.u32(at: o + 20), pixelFormat: e.u32(at: o + 24))
        case DisplifLayout.opFbDetach:
            self = .fbDetach(fbCookie: e.u64(at: o))
        case DisplifLayout.opSetConfig:
            self = .setConfig(DisplifSetConfig(fbCookie: e.u64(at: o), x: e.u32(at: o + 8), y: e.u32(at: o + 12),
                                               width: e.u32(at: o + 16), height: e.u32(at: o + 20), bpp: e.u32(at: o + 24)))
        case DisplifLayout.opPageFlip:
            self = .pageFlip(fbCookie: e.u64(at: o))
        case DisplifLayout.opGetEDID:
            self = .getEDID(bufferSize: e.u32(at: o), directoryRef: e.u32(at: o + 4))
        case let operation:
            self = .unknown(operation: operation)
        }
    }

    public var operation: UInt8 {
        switch self {
        case .dbufCreate: return DisplifLayout.opDbufCreate
        case .dbufDestroy: return DisplifLayout.opDbufDestroy
        case .fbAttach: return DisplifLayout.opFbAttach
        case .fbDetach: return DisplifLayout.opFbDetach
        case .setConfig: return DisplifLayout.opSetConfig
        case .pageFlip: return DisplifLayout.opPageFlip
        case .getEDID: return DisplifLayout.opGetEDID
        case .unknown(let op): return op
        }
    }

    /// The entry a frontend writes for this request.
    public func entry(id: UInt16) -> RingEntry64 {
        var e = RingEntry64()
        e.set(id, at: 0)
        e.set(operation, at: 2)
        let o = Self.op
        switch self {
        case .dbufCreate(let r):
            e.set(r.dbufCookie, at: o); e.set(r.width, at: o + 8); e.set(r.height, at: o + 12); e.set(r.bpp, at: o + 16)
            e.set(r.bufferSize, at: o + 20); e.set(r.flags, at: o + 24); e.set(r.directoryRef, at: o + 28); e.set(r.dataOffset, at: o + 32)
        case .dbufDestroy(let c), .fbDetach(let c), .pageFlip(let c):
            e.set(c, at: o)
        case .fbAttach(let d, let f, let w, let h, let format):
            e.set(d, at: o); e.set(f, at: o + 8); e.set(w, at: o + 16); e.set(h, at: o + 20); e.set(format, at: o + 24)
        case .setConfig(let c):
            e.set(c.fbCookie, at: o); e.set(c.x, at: o + 8); e.set(c.y, at: o + 12)
            e.set(c.width, at: o + 16); e.set(c.height, at: o + 20); e.set(c.bpp, at: o + 24)
        case .getEDID(let size, let ref):
            e.set(size, at: o); e.set(ref, at: o + 4)
        case .unknown:
            break
        }
        return e
    }
}

/// `struct xendispl_resp`: `id` and `operation` echoed, `status` 0 or
/// `-XEN_E*`, and GET_EDID's `edid_sz`.
public struct DisplifResponse: Equatable, Sendable {
    public var id: UInt16
    public var operation: UInt8
    public var status: Int32
    public var edidSize: UInt32

    public init(id: UInt16, operation: UInt8, status: Int32, edidSize: UInt32 = 0) {
        self.id = id
        self.operation = operation
        self.status = status
        self.edidSize = edidSize
    }

    public init(_ e: RingEntry64) {
        self.init(id: e.u16(at: 0), operation: e.u8(at: 2), status: e.i32(at: 4), edidSize: e.u32(at: 8))
    }

    public var entry: RingEntry64 {
        var e = RingEntry64()
        e.set(id, at: 0)
        e.set(operation, at: 2)
        e.set(status, at: 4)
        if operation == DisplifLayout.opGetEDID { e.set(edidSize, at: 8) }
        return e
    }
}

/// `struct xendispl_evt`: the only event, XENDISPL_EVT_PG_FLIP, says the
/// flip to `fbCookie` is done. `id` counts events on the connector's event
/// page from 0 (drm/xen-front drops an event whose id is not the next).
public struct DisplifEvent: Equatable, Sendable {
    public var id: UInt16
    public var type: UInt8
    public var fbCookie: UInt64

    public init(id: UInt16, type: UInt8 = DisplifLayout.eventPageFlip, fbCookie: UInt64) {
        self.id = id
        self.type = type
        self.fbCookie = fbCookie
    }

    public init(_ e: RingEntry64) {
        self.init(id: e.u16(at: 0), type: e.u8(at: 2), fbCookie: e.u64(at: 8))
    }

    public var entry: RingEntry64 {
        var e = RingEntry64()
        e.set(id, at: 0)
        e.set(type, at: 2)
        e.set(fbCookie, at: 8)
        return e
    }
}

/// displif's event page: the backend produces at `in_prod`, the frontend
/// consumes at `in_cons`; 63 slots, index modulo 63.
public typealias DisplifEventRing = IndexedRing<RingEntry64>

extension IndexedRing where Entry == RingEntry64 {
    public static func displifEvents(_ page: GuestMapping) -> DisplifEventRing {
        DisplifEventRing(page: page, consOffset: DisplifLayout.eventInCons, prodOffset: DisplifLayout.eventInProd,
                         ringOffset: DisplifLayout.eventRingOffset, length: DisplifLayout.eventRingLength)
    }
}

/// The page directory of a displif buffer (`struct
/// xendispl_page_directory`): each directory page holds the grant
/// reference of the next directory page (0 at the end) and up to 1023
/// grant references of buffer pages.
public enum DisplifPageDirectory {
    /// Directory pages needed for `pages` buffer pages.
    public static func directoryPages(forBufferPages pages: Int) -> Int {
        pages <= 0 ? 0 : (pages + DisplifLayout.grantsPerDirectoryPage - 1) / DisplifLayout.grantsPerDirectoryPage
    }

    /// Decodes one copied directory page: the next page's reference and the
    /// first `count` buffer references (`count` ≤ 1023); nil if `bytes` is
    /// too short.
    public static func decode(_ bytes: UnsafeRawBufferPointer, count: Int) -> (next: UInt32, refs: [UInt32])? {
        guard count >= 0, count <= DisplifLayout.grantsPerDirectoryPage else { return nil }
        var reader = ByteReader(bytes)
        guard let next = reader.read(UInt32.self) else { return nil }
        var refs: [UInt32] = []
        refs.reserveCapacity(count)
        for _ in 0..<count {
            guard let r = reader.read(UInt32.self) else { return nil }
            refs.append(r)
        }
        return (next, refs)
    }

    /// Fills directory pages (the frontend's side, as Linux's
    /// xen-front-pgdir-shbuf `guest_fill_page_dir`): page i gets the
    /// reference of page i+1 (`directoryRefs`) and its share of `bufferRefs`.
    /// Returns each page's bytes.
    public static func encode(directoryRefs: [UInt32], bufferRefs: [UInt32]) -> [[UInt8]] {
        var pages: [[UInt8]] = []
        var rest = bufferRefs[...]
        for i in 0..<directoryRefs.count {
            var page = [UInt8](repeating: 0, count: guestPageSize)
            let next = i + 1 < directoryRefs.count ? directoryRefs[i + 1] : 0
            let chunk = rest.prefix(DisplifLayout.grantsPerDirectoryPage)
            rest = rest.dropFirst(chunk.count)
            page.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: next.littleEndian, toByteOffset: 0, as: UInt32.self)
                for (j, r) in chunk.enumerated() { raw.storeBytes(of: r.littleEndian, toByteOffset: 4 + 4 * j, as: UInt32.self) }
            }
            pages.append(page)
        }
        return pages
    }
}

/// A connector's `resolution` key ("WIDTHxHEIGHT", `XENDISPL_RESOLUTION_SEPARATOR`).
public struct DisplifResolution: Equatable, Sendable, CustomStringConvertible {
    public var width: Int
    public var height: Int

    public init(width: Int, height: Int) {
        self.width = width
        self.height = height
    }

    /// Parses decimal `WxH` with each side in 1...`maxDimension`; nil otherwise.
    public init?(xenstore text: String, maxDimension: Int) {
        guard text.utf8.count <= 16 else { return nil }
        let parts = text.split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2,
              parts.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }),
              let w = Int(parts[0]), let h = Int(parts[1]),
              (1...maxDimension).contains(w), (1...maxDimension).contains(h) else { return nil }
        width = w
        height = h
    }

    public var description: String { "\(width)x\(height)" }
}
