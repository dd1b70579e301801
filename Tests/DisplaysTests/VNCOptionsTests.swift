import Testing
import Console
@testable import Displays

@Suite struct VNCOptionsTests {
    @Test func hostDisplayAndToParseAsQemuAndLibxlWriteThem() throws {
        #expect(try VNCOptions(spec: "127.0.0.1:0").address == .tcp(host: "127.0.0.1", display: 0, lastDisplay: 0))
        #expect(try VNCOptions(spec: "0.0.0.0:3,to=99").address == .tcp(host: "0.0.0.0", display: 3, lastDisplay: 99))
        #expect(try VNCOptions(spec: ":1").address == .tcp(host: "127.0.0.1", display: 1, lastDisplay: 1))
        #expect(try VNCOptions(spec: "[::1]:2").address == .tcp(host: "::1", display: 2, lastDisplay: 2))
        #expect(try VNCOptions(spec: "localhost:5").address == .tcp(host: "localhost", display: 5, lastDisplay: 5))
        #expect(try VNCOptions(spec: "unix:/run/xen/vnc-3,,x").address == .unix(path: "/run/xen/vnc-3,x"))
        #expect(try VNCOptions(spec: "none").address == VNCOptions.Address.none)
    }

    @Test func passwordAndOtherOptions() throws {
        let a = try VNCOptions(spec: "127.0.0.1:0,password=on")
        #expect(a.password)
        #expect(try VNCOptions(spec: "127.0.0.1:0,password").password)   // older libxl spelling
        #expect(try !VNCOptions(spec: "127.0.0.1:0,password=off").password)
        #expect(try VNCOptions(spec: "unix:/tmp/s,password=on").password)
        let b = try VNCOptions(spec: "[::]:0,ipv6=on,connections=4,share=force-shared,lossy,key-delay-ms=10")
        #expect(b.family == .ipv6 && b.maxConnections == 4)
    }

    @Test func websocketAndLossyFollowQEMUsGrammar() throws {
        #expect(try VNCOptions(spec: "127.0.0.1:3,websocket=on").webSocket == .displayOffset)
        #expect(try VNCOptions(spec: "127.0.0.1:3,websocket").webSocket == .displayOffset)
        #expect(try VNCOptions(spec: "127.0.0.1:3,websocket=5701").webSocket == .port(5701))
        #expect(try VNCOptions(spec: "127.0.0.1:3,websocket=off").webSocket == nil)
        #expect(try VNCOptions(spec: "127.0.0.1:3").webSocket == nil)
        #expect(try VNCOptions(spec: "127.0.0.1:3").lossy == false, "lossless unless asked, as QEMU")
        #expect(try VNCOptions(spec: "127.0.0.1:3,lossy=on").lossy)
    }

    @Test func tlsCredsNamesTheObjectAndQEMUsRemovedTLSOptionsAreRefused() throws {
        #expect(try VNCOptions(spec: "127.0.0.1:3,tls-creds=tls0").tlsCreds == "tls0")
        #expect(try VNCOptions(spec: "unix:/tmp/s,tls-creds=t,password=on").tlsCreds == "t")
        #expect(try VNCOptions(spec: "127.0.0.1:3").tlsCreds == nil)
        for (spec, words) in [("127.0.0.1:3,tls-creds=", "needs the id"), ("127.0.0.1:3,tls=on", "tls-creds=ID"),
                              ("127.0.0.1:3,x509=/etc/pki", "-object tls-creds-x509")] {
            do {
                _ = try VNCOptions(spec: spec)
                Issue.record("\(spec) was accepted")
            } catch {
                #expect(error.description.contains(words), "\(spec): \(error)")
            }
        }
    }

    @Test func badSpecsAreRejectedWithAReason() {
        let cases: [(String, String)] = [
            ("", "expected HOST:DISPLAY"),
            ("localhost", "expected HOST:DISPLAY"),
            ("127.0.0.1:x", "display=x is not a number"),
            ("127.0.0.1:-1", "is not a number"),
            ("127.0.0.1:70000", "is not a number"),
            ("::1:0", "IPv6 address in brackets"),
            ("127.0.0.1:5,to=4", "to=4 is below display 5"),
            ("127.0.0.1:5,to=", "is not a number"),
            ("unix:", "needs a socket path"),
            ("unix:/tmp/s,to=3", "to= needs a TCP address"),
            ("127.0.0.1:0,password=maybe", "is not on or off"),
            ("127.0.0.1:0,websocket=maybe", "websocket=maybe is not on or off"),
            ("127.0.0.1:0,websocket=70000", "websocket=70000 is not on or off"),
            ("unix:/tmp/s,websocket=on", "websocket needs a TCP address"),
            ("127.0.0.1:0,lossy=perhaps", "lossy=perhaps is not on or off"),
            ("127.0.0.1:0,tls=on", "tls= was removed from QEMU"),
            ("127.0.0.1:0,share=mine", "share=mine"),
            ("none,password=on", "password makes no sense"),
        ]
        for (spec, message) in cases {
            do {
                _ = try VNCOptions(spec: spec)
                Issue.record("'\(spec)' was accepted")
            } catch {
                #expect(error.message.contains(message), "'\(spec)': \(error.message)")
            }
        }
    }
}
