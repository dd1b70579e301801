import CXen
import Host
import Testing
import XenProtocol

/// displif.h's wire types: the decoder's offsets are the C header's, every
/// request survives an encode/decode round trip, and the page directory and
/// resolution parsers refuse what does not fit.
@Suite struct DisplifTests {
    /// Offset of a field of the request union, from the header itself.
    func offset<T>(_ path: PartialKeyPath<T>) -> Int { MemoryLayout<T>.offset(of: path)! }

    @Test func theDecoderReadsTheFieldsWhereDisplifHPutsThem() {
        #expect(MemoryLayout<xendispl_req>.size == 64)
        #expect(MemoryLayout<xendispl_resp>.size == 64)
        #expect(MemoryLayout<xendispl_evt>.size == 64)
        #expect(MemoryLayout<xendispl_event_page>.size == DisplifLayout.eventRingOffset)
        let op = offset(\xendispl_req.op)
        #expect(op == 8)
        #expect(offset(\xendispl_req.operation) == 2)

        // Each field gets a distinct value at the C header's offset; the decode must find it.
        var e = RingEntry64()
        e.set(DisplifLayout.opDbufCreate, at: 2)
        e.set(UInt64(0x1122_3344_5566_7788), at: op + offset(\xendispl_dbuf_create_req.dbuf_cookie))
        e.set(UInt32(101), at: op + offset(\xendispl_dbuf_create_req.width))
        e.set(UInt32(102), at: op + offset(\xendispl_dbuf_create_req.height))
        e.set(UInt32(103), at: op + offset(\xendispl_dbuf_create_req.bpp))
        e.set(UInt32(104), at: op + offset(\xendispl_dbuf_create_req.buffer_sz))
        e.set(UInt32(105), at: op + offset(\xendispl_dbuf_create_req.flags))
        e.set(UInt32(106), at: op + offset(\xendispl_dbuf_create_req.gref_directory))
        e.set(UInt32(107), at: op + offset(\xendispl_dbuf_create_req.data_ofs))
        #expect(DisplifRequest(e) == .dbufCreate(DisplifDbufCreate(
            dbufCookie: 0x1122_3344_5566_7788, width: 101, height: 102, bpp: 103, bufferSize: 104, flags: 105,
            directoryRef: 106, dataOffset: 107)))

        e = RingEntry64()
        e.set(DisplifLayout.opFbAttach, at: 2)
        e.set(UInt64(1), at: op + offset(\xendispl_fb_attach_req.dbuf_cookie))
        e.set(UInt64(2), at: op + offset(\xendispl_fb_attach_req.fb_cookie))
        e.set(UInt32(3), at: op + offset(\xendispl_fb_attach_req.width))
        e.set(UInt32(4), at: op + offset(\xendispl_fb_attach_req.height))
        e.set(UInt32(5), at: op + offset(\xendispl_fb_attach_req.pixel_format))
        #expect(DisplifRequest(e) == .fbAttach(dbufCookie: 1, fbCookie: 2, width: 3, height: 4, pixelFormat: 5))

        e = RingEntry64()
        e.set(DisplifLayout.opSetConfig, at: 2)
        e.set(UInt64(9), at: op + offset(\xendispl_set_config_req.fb_cookie))
        e.set(UInt32(10), at: op + offset(\xendispl_set_config_req.x))
        e.set(UInt32(11), at: op + offset(\xendispl_set_config_req.y))
        e.set(UInt32(12), at: op + offset(\xendispl_set_config_req.width))
        e.set(UInt32(13), at: op + offset(\xendispl_set_config_req.height))
        e.set(UInt32(14), at: op + offset(\xendispl_set_config_req.bpp))
        #expect(DisplifRequest(e) == .setConfig(DisplifSetConfig(fbCookie: 9, x: 10, y: 11, width: 12, height: 13, bpp: 14)))

        e = RingEntry64()
        e.set(DisplifLayout.opGetEDID, at: 2)
        e.set(UInt32(0x8000), at: op + offset(\xendispl_get_edid_req.buffer_sz))
        e.set(UInt32(77), at: op + offset(\xendispl_get_edid_req.gref_directory))
        #expect(DisplifRequest(e) == .getEDID(bufferSize: 0x8000, directoryRef: 77))

        for (code, make) in [(DisplifLayout.opDbufDestroy, { DisplifRequest.dbufDestroy(dbufCookie: $0) }),
                             (DisplifLayout.opFbDetach, { DisplifRequest.fbDetach(fbCookie: $0) }),
                             (DisplifLayout.opPageFlip, { DisplifRequest.pageFlip(fbCookie: $0) })] {
            e = RingEntry64()
            e.set(code, at: 2)
            e.set(UInt64(0xabcd), at: op)
            #expect(DisplifRequest(e) == make(0xabcd))
        }
    }

    @Test func responsesAndEventsAreWhereDisplifHPutsThem() {
        let r = DisplifResponse(id: 0x1234, operation: DisplifLayout.opGetEDID, status: XenErrno.inval.status, edidSize: 128)
        let e = r.entry
        #expect(e.u16(at: MemoryLayout<xendispl_resp>.offset(of: \xendispl_resp.id)!) == 0x1234)
        #expect(e.u8(at: MemoryLayout<xendispl_resp>.offset(of: \xendispl_resp.operation)!) == DisplifLayout.opGetEDID)
        #expect(e.i32(at: MemoryLayout<xendispl_resp>.offset(of: \xendispl_resp.status)!) == -22)
        #expect(e.u32(at: MemoryLayout<xendispl_resp>.offset(of: \xendispl_resp.op)!) == 128)
        #expect(DisplifResponse(e) == r)

        let ev = DisplifEvent(id: 7, fbCookie: 0x0102_0304_0506_0708).entry
        #expect(ev.u16(at: 0) == 7)
        #expect(ev.u8(at: MemoryLayout<xendispl_evt>.offset(of: \xendispl_evt.type)!) == UInt8(XENDISPL_EVT_PG_FLIP))
        #expect(ev.u64(at: MemoryLayout<xendispl_evt>.offset(of: \xendispl_evt.op)!) == 0x0102_0304_0506_0708)
    }

    @Test func theConstantsAreTheHeaders() {
        #expect(DisplifLayout.opDbufCreate == UInt8(XENDISPL_OP_DBUF_CREATE))
        #expect(DisplifLayout.opPageFlip == UInt8(XENDISPL_OP_PG_FLIP))
        #expect(DisplifLayout.opGetEDID == UInt8(XENDISPL_OP_GET_EDID))
        #expect(DisplifLayout.flagRequestAlloc == UInt32(XENDISPL_DBUF_FLG_REQ_ALLOC))
        #expect(DisplifLayout.protocolVersion == String(XENDISPL_PROTOCOL_VERSION_INT))
    }

    @Test func everyRequestSurvivesARoundTrip() {
        let requests: [DisplifRequest] = [
            .dbufCreate(DisplifDbufCreate(dbufCookie: .max, width: 800, height: 600, bpp: 32, bufferSize: 1_920_000,
                                          flags: 1, directoryRef: 8, dataOffset: 4096)),
            .dbufDestroy(dbufCookie: 1), .fbAttach(dbufCookie: 2, fbCookie: 3, width: 4, height: 5, pixelFormat: 6),
            .fbDetach(fbCookie: 7), .setConfig(DisplifSetConfig(fbCookie: 8, x: 1, y: 2, width: 3, height: 4, bpp: 16)),
            .pageFlip(fbCookie: 9), .getEDID(bufferSize: 32768, directoryRef: 10), .unknown(operation: 0x42),
        ]
        for (i, r) in requests.enumerated() {
            let e = r.entry(id: UInt16(i + 100))
            #expect(DisplifRequest.header(e) == (UInt16(i + 100), r.operation))
            #expect(DisplifRequest(e) == r)
        }
    }

    @Test func fourccCodesAreDRMs() {
        #expect(DisplifPixelFormat.xrgb8888.description == "XR24")
        #expect(DisplifPixelFormat.rgb565.description == "RG16")
        #expect(DisplifPixelFormat.yuyv.description == "YUYV")
        #expect(DisplifPixelFormat.argb1555.description == "AR15")
        #expect(DisplifPixelFormat(rawValue: 0x3432_5258) == .xrgb8888)
        #expect(DisplifPixelFormat(rawValue: 0) == nil)
        #expect(DisplifPixelFormat.name(0x0001_4142) == "BA??")
    }

    @Test func aPageDirectoryIsEncodedAndDecodedAsXenFrontPgdirShbufDoes() throws {
        // 2500 buffer pages need 3 directory pages (1023 each).
        #expect(DisplifPageDirectory.directoryPages(forBufferPages: 2500) == 3)
        #expect(DisplifPageDirectory.directoryPages(forBufferPages: 1023) == 1)
        #expect(DisplifPageDirectory.directoryPages(forBufferPages: 1024) == 2)
        #expect(DisplifPageDirectory.directoryPages(forBufferPages: 0) == 0)
        let buffer = (0..<2500).map { UInt32(1000 + $0) }
        let pages = DisplifPageDirectory.encode(directoryRefs: [10, 11, 12], bufferRefs: buffer)
        #expect(pages.count == 3)
        var got: [UInt32] = []
        var nexts: [UInt32] = []
        for (i, p) in pages.enumerated() {
            let count = min(1023, 2500 - i * 1023)
            let (next, refs) = try #require(p.withUnsafeBytes { DisplifPageDirectory.decode($0, count: count) })
            nexts.append(next)
            got += refs
        }
        #expect(nexts == [11, 12, 0])
        #expect(got == buffer)
        // Too many entries for a page, or a page too short, decode as nil.
        #expect(pages[0].withUnsafeBytes { DisplifPageDirectory.decode($0, count: 1024) } == nil)
        #expect([UInt8](repeating: 0, count: 100).withUnsafeBytes { DisplifPageDirectory.decode($0, count: 30) } == nil)
    }

    @Test func resolutionsAreStrictDecimalWidthByHeight() {
        #expect(DisplifResolution(xenstore: "800x600", maxDimension: 16384) == DisplifResolution(width: 800, height: 600))
        #expect(DisplifResolution(xenstore: "16384x1", maxDimension: 16384) != nil)
        for bad in ["", "x", "800x", "x600", "800X600", "800x600x1", " 800x600", "-800x600", "0x600", "16385x1",
                    "99999999999999999999x1", "8０0x600", "800x600 "] {
            #expect(DisplifResolution(xenstore: bad, maxDimension: 16384) == nil, "\(bad)")
        }
    }
}
