import Testing
import Glibc
import EventLoop
@testable import Control

/// One version, set in debian/changelog (the package's), reported by
/// `xenvfb --version` and by QMP next to the QEMU version libxl expects.
@Suite struct VersionTests {
    /// The version at the top of debian/changelog: "xenvfb (0.1.0) bookworm; ...".
    static func changelogVersion() throws -> String {
        let path = packageRoot() + "/debian/changelog"
        guard let file = fopen(path, "r") else { throw TestFailure("cannot open \(path)") }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 512)
        guard fgets(&line, Int32(line.count), file) != nil else { throw TestFailure("\(path) is empty") }
        let first = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard first.hasPrefix("xenvfb ("), let close = first.firstIndex(of: ")") else {
            throw TestFailure("\(path) does not start with 'xenvfb (VERSION)': \(first)")
        }
        return String(first[first.index(first.startIndex, offsetBy: 8)..<close])
    }

    @Test func theVersionXenvfbReportsIsTheOneInDebianChangelog() throws {
        #expect(XenvfbVersion.string == (try Self.changelogVersion()),
                "set XenvfbVersion.string to debian/changelog's version")
    }

    @Test func versionOptionPrintsThePackageVersion() throws {
        let binary = try #require(xenvfbBinary(), "the xenvfb binary was not built next to the tests")
        let version = try Self.changelogVersion()
        for option in ["--version", "-version"] {
            let (status, output) = try run([binary, option])
            #expect(status == 0 && output == "xenvfb \(version)\n", "\(option): exit \(status), \(output)")
        }
    }

    @Test func queryVersionGivesLibxlTheQEMUVersionAndXenvfbsAsThePackage() throws {
        let h = try Harness()
        let c = try TestClient(path: h.path, harness: h)
        let greeting = try c.message()
        let expected: JSON = ["qemu": ["micro": 0, "minor": 2, "major": 7], "package": .string("xenvfb \(try Self.changelogVersion())")]
        #expect(greeting["QMP"]?["version"] == expected)
        c.send(#"{"execute":"qmp_capabilities"}{"execute":"query-version","id":1}"#)
        #expect(try c.message() == ["return": [:]])
        #expect(try c.message() == ["return": expected, "id": 1])
    }
}
