import Host
import Support

/// A fixed-size ring entry, copied out of shared memory in one fetch into a
/// value of its own (the frontend may change the slot at any moment; the
/// copy is what gets parsed, as `RING_COPY_REQUEST` in xen/io/ring.h).
public protocol RingEntry: Equatable, Sendable {
    /// Bytes per entry.
    static var size: Int { get }
    /// Copies `size` bytes at `offset` of `mapping`; nil if they lie outside it.
    init?(copying mapping: GuestMapping, at offset: Int)
    /// Writes the entry into `mapping` at `offset`; false if read-only or out of range.
    @discardableResult func write(to mapping: GuestMapping, at offset: Int) -> Bool
}

extension RingSlot: RingEntry {}

/// One 64-byte entry: a displif request, response or event
/// (`struct xendispl_req`, `xendispl_resp`, `xendispl_evt`). Like `RingSlot`,
/// a value of its own with every field read through `ByteReader`.
public struct RingEntry64: RingEntry {
    public static let size = 64
    private var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    public init() {}

    /// An entry holding `bytes` (at most 64; the rest is zero).
    public init(bytes: [UInt8]) {
        withUnsafeMutableBytes(of: &words) { raw in
            for (i, b) in bytes.prefix(Self.size).enumerated() { raw[i] = b }
        }
    }

    public init?(copying mapping: GuestMapping, at offset: Int) {
        let ok = withUnsafeMutableBytes(of: &words) { raw in
            mapping.copyBytes(at: offset, count: Self.size, to: raw.baseAddress!)
        }
        guard ok else { return nil }
    }

    @discardableResult
    public func write(to mapping: GuestMapping, at offset: Int) -> Bool {
        var copy = words
        return Swift.withUnsafeBytes(of: &copy) { mapping.write($0, at: offset) }
    }

    public static func == (a: RingEntry64, b: RingEntry64) -> Bool {
        var x = a.words, y = b.words
        return Swift.withUnsafeBytes(of: &x) { p in Swift.withUnsafeBytes(of: &y) { q in p.elementsEqual(q) } }
    }

    /// The entry's 64 bytes.
    public var bytes: [UInt8] {
        var copy = words
        return Swift.withUnsafeBytes(of: &copy) { Array($0) }
    }

    /// Reads the entry through a bounds-checked reader.
    public func read<R>(_ body: (ByteReader) -> R?) -> R? {
        var copy = words
        return Swift.withUnsafeBytes(of: &copy) { body(ByteReader($0)) }
    }

    public func u8(at offset: Int) -> UInt8 { read { $0.load(UInt8.self, at: offset) } ?? 0 }
    public func u16(at offset: Int) -> UInt16 { read { $0.load(UInt16.self, at: offset) } ?? 0 }
    public func u32(at offset: Int) -> UInt32 { read { $0.load(UInt32.self, at: offset) } ?? 0 }
    public func u64(at offset: Int) -> UInt64 { read { $0.load(UInt64.self, at: offset) } ?? 0 }
    public func i32(at offset: Int) -> Int32 { Int32(bitPattern: u32(at: offset)) }

    /// Stores a little-endian value at `offset` (ignored outside the entry).
    public mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        guard offset >= 0, offset + MemoryLayout<T>.size <= Self.size else { return }
        withUnsafeMutableBytes(of: &words) { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }
}

/// A ring of entries inside a shared page with free-running u32 consumer
/// and producer indices and slot `index % length` (the length need not be
/// a power of two): the vfb and vkbd rings of fbif.h/kbdif.h and displif's
/// event page. Every access is bounds-checked by `GuestMapping`.
public struct IndexedRing<Entry: RingEntry> {
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
        self.length = UInt32(max(length, 1))
    }

    public func slotOffset(_ index: UInt32) -> Int { ringOffset + Int(index % length) * Entry.size }

    /// Copies the entry in slot `index` out of shared memory (one fetch).
    public func copySlot(_ index: UInt32) -> Entry? { Entry(copying: page, at: slotOffset(index)) }

    /// Writes `entry` at ring position `index`.
    @discardableResult
    public func put(_ entry: Entry, at index: UInt32) -> Bool { entry.write(to: page, at: slotOffset(index)) }

    public func loadCons() -> UInt32 { page.load(UInt32.self, at: consOffset) ?? 0 }
    public func loadProd() -> UInt32 { page.load(UInt32.self, at: prodOffset) ?? 0 }
    public func storeCons(_ v: UInt32) { page.store(v, at: consOffset) }
    public func storeProd(_ v: UInt32) { page.store(v, at: prodOffset) }
}

/// The 40-byte event rings of fbif.h and kbdif.h.
public typealias SharedRing = IndexedRing<RingSlot>

extension IndexedRing where Entry == RingSlot {
    /// The vfb OUT ring (frontend → backend) of the `xenfb_page` at byte `base` of `page`.
    public static func vfbOut(_ page: GuestMapping, at base: Int = 0) -> SharedRing {
        SharedRing(page: page, consOffset: base + XenfbLayout.outCons, prodOffset: base + XenfbLayout.outProd,
                   ringOffset: base + XenfbLayout.outRingOffset, length: XenfbLayout.outRingLength)
    }

    /// The vkbd IN ring (backend → frontend) of the `xenkbd_page` at byte `base` of `page`.
    public static func vkbdIn(_ page: GuestMapping, at base: Int = 0) -> SharedRing {
        SharedRing(page: page, consOffset: base + XenkbdLayout.inCons, prodOffset: base + XenkbdLayout.inProd,
                   ringOffset: base + XenkbdLayout.inRingOffset, length: XenkbdLayout.inRingLength)
    }
}

// MARK: - xen/io/ring.h

/// The shared page of xen/io/ring.h's `DEFINE_RING_TYPES` (`struct
/// __name##_sring`): four u32 indices, 48 bytes of padding, then the
/// entries (a union of request and response) up to the end of the page,
/// their count rounded down to a power of two (`__RING_SIZE`).
public enum SharedRingLayout {
    public static let reqProd = 0, reqEvent = 4, rspProd = 8, rspEvent = 12
    /// Bytes before the first entry (`offsetof(struct sring, ring)`).
    public static let headerSize = 64

    /// `__RING_SIZE(s, bytes)`: how many `entrySize`-byte entries a ring of
    /// `bytes` holds (a power of two; 0 if not even one fits).
    public static func entries(entrySize: Int, bytes: Int = guestPageSize) -> UInt32 {
        guard entrySize > 0, bytes > headerSize else { return 0 }
        let n = (bytes - headerSize) / entrySize
        guard n > 0 else { return 0 }
        return UInt32(1) << UInt32(Int.bitWidth - 1 - n.leadingZeroBitCount)
    }

    /// Byte offset of entry `index` (masked with `size - 1`, `RING_GET_REQUEST`).
    static func entryOffset(_ index: UInt32, size: UInt32, entrySize: Int) -> Int {
        headerSize + Int(index & (size &- 1)) * entrySize
    }
}

/// Why a ring cannot be used as it stands.
public enum RingError: Error, Equatable, CustomStringConvertible {
    /// `RING_REQUEST_PROD_OVERFLOW`: the frontend's producer index claims
    /// more requests than the ring holds (an ill-behaved frontend).
    case requestProducerOverflow(prod: UInt32, responsesProduced: UInt32, size: UInt32)
    /// `RING_RESPONSE_PROD_OVERFLOW`: the backend's producer index claims
    /// more responses than were asked for (an ill-behaved backend).
    case responseProducerOverflow(prod: UInt32, consumed: UInt32, size: UInt32)

    public var description: String {
        switch self {
        case .requestProducerOverflow(let p, let r, let s):
            return "request producer \(p) is more than \(s) ahead of the responses produced (\(r))"
        case .responseProducerOverflow(let p, let c, let s):
            return "response producer \(p) is more than \(s) ahead of the responses consumed (\(c))"
        }
    }
}

/// The backend's end of a xen/io/ring.h ring (`BACK_RING_*` and the
/// `RING_*` macros a backend uses): requests are copied off the page once,
/// responses put on it. The private indices (`req_cons`, `rsp_prod_pvt`)
/// are the only ones trusted; the frontend's `req_prod` and `rsp_event` are
/// read, checked, and never believed beyond the ring's size.
public struct BackRing<Entry: RingEntry> {
    public let page: GuestMapping
    /// Entries in the ring (`RING_SIZE`), a power of two.
    public let size: UInt32
    public private(set) var reqCons: UInt32
    public private(set) var rspProdPvt: UInt32

    /// `BACK_RING_ATTACH(r, sring, start, page size)`: nil if the page
    /// cannot hold one entry.
    public init?(page: GuestMapping, start: UInt32 = 0) {
        let size = SharedRingLayout.entries(entrySize: Entry.size, bytes: page.byteCount)
        guard size > 0 else { return nil }
        self.page = page
        self.size = size
        reqCons = start
        rspProdPvt = start
    }

    public func loadReqProd() -> UInt32 { page.load(UInt32.self, at: SharedRingLayout.reqProd) ?? 0 }

    /// `RING_HAS_UNCONSUMED_REQUESTS`: how many requests may be consumed
    /// now, or an error when `req_prod` is impossible
    /// (`RING_REQUEST_PROD_OVERFLOW`). Reads `req_prod` once, then a read
    /// barrier, so the requests up to it are visible.
    public func unconsumedRequests() -> Result<UInt32, RingError> {
        let prod = loadReqProd()
        Barrier.read()
        guard prod &- rspProdPvt <= size else {
            return .failure(.requestProducerOverflow(prod: prod, responsesProduced: rspProdPvt, size: size))
        }
        let requests = prod &- reqCons
        let room = size &- (reqCons &- rspProdPvt)
        return .success(min(requests, room))
    }

    /// Copies the request at `req_cons` (`RING_COPY_REQUEST`) and advances
    /// `req_cons`. Call only as many times as `unconsumedRequests` allows.
    public mutating func nextRequest() -> Entry? {
        let offset = SharedRingLayout.entryOffset(reqCons, size: size, entrySize: Entry.size)
        guard let entry = Entry(copying: page, at: offset) else { return nil }
        reqCons &+= 1
        return entry
    }

    /// Writes a response at `rsp_prod_pvt` and advances it; the frontend
    /// sees it after `pushResponses`. False when every consumed request has
    /// its response already (`RING_REQUEST_CONS_OVERFLOW` would follow).
    @discardableResult
    public mutating func putResponse(_ entry: Entry) -> Bool {
        guard rspProdPvt != reqCons else { return false }
        let offset = SharedRingLayout.entryOffset(rspProdPvt, size: size, entrySize: Entry.size)
        guard entry.write(to: page, at: offset) else { return false }
        rspProdPvt &+= 1
        return true
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the responses
    /// (write barrier, then `rsp_prod`) and says whether the frontend asked
    /// to be notified of them (`rsp_event`). A frontend that lies in
    /// `rsp_event` only loses its own notifications.
    public mutating func pushResponses() -> Bool {
        let old = page.load(UInt32.self, at: SharedRingLayout.rspProd) ?? 0
        let new = rspProdPvt
        Barrier.write()
        page.store(new, at: SharedRingLayout.rspProd)
        Barrier.full()
        let event = page.load(UInt32.self, at: SharedRingLayout.rspEvent) ?? 0
        return new &- event < new &- old
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: true if requests are waiting;
    /// otherwise sets `req_event` so the next request notifies, and looks
    /// once more (a request may have arrived in between). An impossible
    /// `req_prod` counts as no work: the caller learns of it from
    /// `unconsumedRequests`.
    public mutating func finalCheckForRequests() -> Bool {
        if case .success(let n) = unconsumedRequests(), n > 0 { return true }
        page.store(reqCons &+ 1, at: SharedRingLayout.reqEvent)
        Barrier.full()
        if case .success(let n) = unconsumedRequests(), n > 0 { return true }
        return false
    }
}

/// The frontend's end of a xen/io/ring.h ring (`FRONT_RING_*`), for
/// GuestKit's frontends and tests: requests are put on the page, responses
/// copied off it.
public struct FrontRing<Entry: RingEntry> {
    public let page: GuestMapping
    public let size: UInt32
    public private(set) var reqProdPvt: UInt32 = 0
    public private(set) var rspCons: UInt32 = 0

    /// `XEN_FRONT_RING_INIT`: initialises the shared page
    /// (`SHARED_RING_INIT`: indices 0, events 1, padding zero) and attaches.
    public init?(initialising page: GuestMapping) {
        let size = SharedRingLayout.entries(entrySize: Entry.size, bytes: page.byteCount)
        guard size > 0 else { return nil }
        self.page = page
        self.size = size
        page.store(UInt32(0), at: SharedRingLayout.reqProd)
        page.store(UInt32(1), at: SharedRingLayout.reqEvent)
        page.store(UInt32(0), at: SharedRingLayout.rspProd)
        page.store(UInt32(1), at: SharedRingLayout.rspEvent)
        for offset in stride(from: 16, to: SharedRingLayout.headerSize, by: 4) { page.store(UInt32(0), at: offset) }
    }

    /// `RING_FREE_REQUESTS`.
    public var freeRequests: UInt32 { size &- (reqProdPvt &- rspCons) }

    /// Puts a request at `req_prod_pvt` (not yet visible); false if the ring is full.
    @discardableResult
    public mutating func putRequest(_ entry: Entry) -> Bool {
        guard freeRequests > 0 else { return false }
        let offset = SharedRingLayout.entryOffset(reqProdPvt, size: size, entrySize: Entry.size)
        guard entry.write(to: page, at: offset) else { return false }
        reqProdPvt &+= 1
        return true
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the requests and
    /// says whether the backend asked to be notified (`req_event`).
    public mutating func pushRequests() -> Bool {
        let old = page.load(UInt32.self, at: SharedRingLayout.reqProd) ?? 0
        let new = reqProdPvt
        Barrier.write()
        page.store(new, at: SharedRingLayout.reqProd)
        Barrier.full()
        let event = page.load(UInt32.self, at: SharedRingLayout.reqEvent) ?? 0
        return new &- event < new &- old
    }

    /// Responses waiting, or an error when `rsp_prod` is impossible.
    public func unconsumedResponses() -> Result<UInt32, RingError> {
        let prod = page.load(UInt32.self, at: SharedRingLayout.rspProd) ?? 0
        Barrier.read()
        guard prod &- rspCons <= reqProdPvt &- rspCons else {
            return .failure(.responseProducerOverflow(prod: prod, consumed: rspCons, size: size))
        }
        return .success(prod &- rspCons)
    }

    /// Copies the response at `rsp_cons` and advances it. Call only as
    /// many times as `unconsumedResponses` allows.
    public mutating func nextResponse() -> Entry? {
        let offset = SharedRingLayout.entryOffset(rspCons, size: size, entrySize: Entry.size)
        guard let entry = Entry(copying: page, at: offset) else { return nil }
        rspCons &+= 1
        return entry
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`.
    public mutating func finalCheckForResponses() -> Bool {
        if case .success(let n) = unconsumedResponses(), n > 0 { return true }
        page.store(rspCons &+ 1, at: SharedRingLayout.rspEvent)
        Barrier.full()
        if case .success(let n) = unconsumedResponses(), n > 0 { return true }
        return false
    }
}
