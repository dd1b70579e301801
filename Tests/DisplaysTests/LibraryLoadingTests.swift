import Testing
import Glibc
import CDisplayShims

/// The libraries the displays load with dlopen (CDisplayShims/libraries.h):
/// when one is missing, the error tells a user what to install and which
/// option needed it.
@Suite struct LibraryLoadingTests {
    /// Calls `body` with a row of the library table whose strings live as long as the call.
    static func withRow<R>(soname: String, package: String, _ body: (inout xenvfb_library) -> R) -> R {
        let texts: [String] = [soname, package, "test", "required", "the test display (--test)"]
        let strings: [UnsafeMutablePointer<CChar>] = texts.map { strdup($0)! }
        defer { strings.forEach { free($0) } }
        var row = xenvfb_library(soname: UnsafePointer(strings[0]), package: UnsafePointer(strings[1]),
                                 feature: UnsafePointer(strings[2]), priority: UnsafePointer(strings[3]),
                                 needed_by: UnsafePointer(strings[4]))
        return body(&row)
    }

    /// What `body` writes into a 1024-byte buffer.
    static func message(_ body: (UnsafeMutablePointer<CChar>, Int) -> Void) -> String {
        var buffer = [CChar](repeating: 0, count: 1024)
        buffer.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    @Test func aMissingLibraryIsNamedWithItsDebianPackageAndTheOptionThatNeedsIt() {
        let text = Self.message { buffer, size in
            Self.withRow(soname: "libxenvfb-test-missing.so.9", package: "libxenvfb-test9") { row in
                #expect(xenvfb_dlopen(&row, buffer, size) == nil)
            }
        }
        #expect(text.hasPrefix("the test display (--test) needs libxenvfb-test-missing.so.9 from the Debian package libxenvfb-test9"), "\(text)")
        #expect(text.contains("cannot open shared object file"), "dlerror's reason is kept: \(text)")
        #expect(text.hasSuffix("install it (apt install libxenvfb-test9) or start without that option"), "\(text)")
    }

    @Test func aLibraryWithoutASymbolIsReportedAsTooOld() {
        let text = Self.message { buffer, size in
            Self.withRow(soname: "libc.so.6", package: "libc6") { row in
                let handle = dlopen("libc.so.6", RTLD_NOW)
                #expect(handle != nil)
                xenvfb_dlopen_lacks(&row, handle, "xenvfb_no_such_function", buffer, size)
            }
        }
        #expect(text == "the test display (--test) needs libc.so.6 from the Debian package libc6, but the one installed has no xenvfb_no_such_function (too old?); upgrade it (apt install libc6) or start without that option")
    }

    @Test func aMessageIsCutToTheBufferItIsGiven() {
        var buffer = [CChar](repeating: 0x55, count: 40)
        buffer.withUnsafeMutableBufferPointer { b in
            Self.withRow(soname: "libxenvfb-test-missing.so.9", package: "p") { row in
                #expect(xenvfb_dlopen(&row, b.baseAddress!, 32) == nil)
            }
        }
        #expect(buffer[31] == 0 && buffer[32...].allSatisfy { $0 == 0x55 })
    }
}
