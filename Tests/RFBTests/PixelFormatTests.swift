import Testing
@testable import RFB

private func format(_ bpp: UInt8, _ depth: UInt8, be: Bool = false, tc: Bool = true,
                    _ maxes: (UInt16, UInt16, UInt16), _ shifts: (UInt8, UInt8, UInt8)) -> RFBPixelFormat {
    RFBPixelFormat(bitsPerPixel: bpp, depth: depth, bigEndian: be, trueColour: tc, redMax: maxes.0, greenMax: maxes.1,
                   blueMax: maxes.2, redShift: shifts.0, greenShift: shifts.1, blueShift: shifts.2)
}

@Suite struct PixelFormatTests {
    @Test func formatsThatCannotBeServedAreRefusedWithAReason() {
        let bad: [(RFBPixelFormat, String)] = [
            (format(24, 24, (255, 255, 255), (16, 8, 0)), "24 bits"),
            (format(16, 16, (31, 0, 31), (11, 5, 0)), "green-max is 0"),
            (format(16, 16, (31, 63, 31), (12, 5, 0)), "red-max 31 shifted by 12"),
            (format(8, 8, (7, 7, 3), (5, 2, 7)), "blue-max 3 shifted by 7"),
            (format(32, 24, (255, 255, 255), (250, 8, 0)), "shifted by 250"),
        ]
        for (f, reason) in bad {
            guard case .failure(let e) = f.validated() else { Issue.record("accepted \(f)"); continue }
            #expect(e.description.contains(reason), "\(e)")
        }
    }

    @Test func aColourMapBecomesBGR233AtTheRequestedSize() throws {
        for bpp: UInt8 in [8, 16, 32] {
            let f = try format(bpp, 8, be: true, tc: false, (0, 0, 0), (0, 0, 0)).validated().get()
            #expect(!f.trueColour && f.bitsPerPixel == bpp && f.bigEndian)
            #expect((f.redMax, f.greenMax, f.blueMax, f.redShift, f.greenShift, f.blueShift) == (7, 7, 3, 0, 3, 6))
        }
    }

    @Test func channelsKeepTheirTopBitsBelow8AndScaleAbove() {
        #expect(RFBPixelFormat.reduce(0xff, max: 31) == 31)
        #expect(RFBPixelFormat.reduce(0x07, max: 31) == 0)
        #expect(RFBPixelFormat.reduce(0x08, max: 31) == 1)
        #expect(RFBPixelFormat.reduce(0xfc, max: 63) == 63)
        #expect(RFBPixelFormat.reduce(0xab, max: 255) == 0xab)
        #expect(RFBPixelFormat.reduce(0xff, max: 1023) == 1023)
        #expect(RFBPixelFormat.reduce(0, max: 1023) == 0)
        #expect(RFBPixelFormat.reduce(0x80, max: 1023) == 514)
        #expect(RFBPixelFormat.reduce(0xff, max: 5) == 5)
        #expect(RFBPixelFormat.reduce(0x80, max: 1) == 1)
    }

    @Test func fastTranslationsEqualTheGeneralRule() {
        let formats = [RFBPixelFormat.xrgb8888, format(16, 16, (31, 63, 31), (11, 5, 0)), format(16, 15, (31, 31, 31), (0, 5, 10)),
                       format(8, 8, (7, 7, 3), (5, 2, 0)), format(32, 30, (1023, 1023, 1023), (20, 10, 0))]
        var rng = SplitMix(seed: 7)
        var source = (0..<4096).map { _ in UInt32(truncatingIfNeeded: rng.next()) } // padding byte is garbage
        for f in formats {
            let t = PixelTranslator(f)
            var out = [UInt32](repeating: 0, count: source.count)
            source.withUnsafeMutableBufferPointer { s in
                out.withUnsafeMutableBufferPointer { o in t.translate(s.baseAddress!, into: o.baseAddress!, count: s.count) }
            }
            for (p, v) in zip(source, out) {
                let expected = RFBPixelFormat.reduce((p >> 16) & 0xff, max: f.redMax) << UInt32(f.redShift)
                    | RFBPixelFormat.reduce((p >> 8) & 0xff, max: f.greenMax) << UInt32(f.greenShift)
                    | RFBPixelFormat.reduce(p & 0xff, max: f.blueMax) << UInt32(f.blueShift)
                #expect(v == expected, "\(f): \(p) → \(v), expected \(expected)")
                if v != expected { break }
            }
        }
        #expect(PixelTranslator(.xrgb8888).kind == .xrgb)
        #expect(PixelTranslator(formats[1]).kind == .rgb565)
        #expect(PixelTranslator(formats[2]).kind == .table)
    }

    @Test func compressedPixelLayoutsFollowTheSpecAndAvoidAmbiguousFormats() {
        #expect(RFBPixelFormat.xrgb8888.cpixelLayout == .c24leLow)
        #expect(format(32, 24, be: true, (255, 255, 255), (16, 8, 0)).cpixelLayout == .c24beLow)
        #expect(format(32, 24, (255, 255, 255), (24, 16, 8)).cpixelLayout == .c24leHigh)
        #expect(format(32, 24, be: true, (255, 255, 255), (24, 16, 8)).cpixelLayout == .c24beHigh)
        #expect(format(32, 30, (1023, 1023, 1023), (20, 10, 0)).cpixelLayout == .u32le)
        #expect(format(32, 32, (255, 255, 255), (16, 8, 0)).cpixelLayout == nil)
        #expect(format(16, 16, (31, 63, 31), (11, 5, 0)).cpixelLayout == .u16le)
        #expect(RFBPixelFormat.xrgb8888.tpixelLayout == .tpixel(red: 16, green: 8, blue: 0))
        #expect(format(32, 32, (255, 255, 255), (16, 8, 0)).tpixelLayout == nil)
        #expect(format(32, 30, (1023, 1023, 1023), (20, 10, 0)).tpixelLayout == .u32le)
    }

    @Test func layoutsWriteTheRightBytes() {
        let out = ByteBuffer()
        let v: UInt32 = 0x0011_2233
        for layout: PixelLayout in [.u8, .u16le, .u16be, .u32le, .u32be, .c24leLow, .c24beLow, .c24leHigh, .c24beHigh,
                                    .tpixel(red: 16, green: 8, blue: 0)] {
            layout.append(v, to: out)
        }
        #expect(Array(out.bytes) == [0x33, 0x33, 0x22, 0x22, 0x33, 0x33, 0x22, 0x11, 0x00, 0x00, 0x11, 0x22, 0x33,
                                     0x33, 0x22, 0x11, 0x11, 0x22, 0x33, 0x22, 0x11, 0x00, 0x00, 0x11, 0x22, 0x11, 0x22, 0x33])
    }

    @Test func rowsOfTightPixelsAreWhatEachPixelWritesOnItsOwn() {
        // The bulk store has its own loops (four pixels at a time for the
        // usual format, a tail, the general shifts): every length, with the
        // unused top byte set, must give what one pixel at a time gives.
        let values: [UInt32] = (0..<11).map { 0xa500_0000 | UInt32($0) &* 0x0013_5791 }
        for layout: PixelLayout in [.tpixel(red: 16, green: 8, blue: 0), .tpixel(red: 0, green: 8, blue: 16),
                                    .c24leLow, .u32le] {
            for count in 0...values.count {
                let bulk = ByteBuffer(), single = ByteBuffer()
                values.withUnsafeBufferPointer { layout.append($0.baseAddress!, count: count, to: bulk) }
                for v in values.prefix(count) { layout.append(v, to: single) }
                #expect(Array(bulk.bytes) == Array(single.bytes), "\(layout), \(count) pixels")
            }
        }
    }
}
