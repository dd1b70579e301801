import Testing
@testable import Control

/// The argv libxl 4.17 produced for a PV guest with `vnc=1` (domid 1), as
/// observed under real Xen (shared reference xen-in-qemu.md), without argv[0].
let libxlVNCArgv = """
-xen-domid 1 -no-shutdown -chardev socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-1,server=on,wait=off \
-mon chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-1,server=on,wait=off \
-mon chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config -xen-attach -name vncfb \
-vnc 127.0.0.1:0,to=99 -display none -machine xenpv -m 256
""".split(separator: " ").map(String.init)

@Suite struct DeviceModelOptionsTests {
    @Test func libxlVNCArgvParsesWithoutWarnings() throws {
        let o = try DeviceModelOptions.parse(libxlVNCArgv)
        #expect(o.domid == 1)
        #expect(o.name == "vncfb")
        #expect(o.vnc == "127.0.0.1:0,to=99")
        #expect(!o.sdl)
        #expect(o.displays.isEmpty)
        #expect(o.xenAttach)
        #expect(!o.startPaused)
        #expect(o.memoryMiB == 256)
        #expect(o.qmp == [
            QMPEndpoint(id: "libxl-cmd", socket: .path("/var/run/xen/qmp-libxl-1")),
            QMPEndpoint(id: "libxenstat-cmd", socket: .path("/var/run/xen/qmp-libxenstat-1")),
        ])
        #expect(o.warnings == [])
    }

    @Test func libxlNographicArgvHasNoVNCAndNoDisplay() throws {
        var argv = libxlVNCArgv
        let i = argv.firstIndex(of: "-vnc")!
        argv[i + 1] = "none"
        argv.insert("-nographic", at: argv.firstIndex(of: "-machine")!)
        argv[argv.firstIndex(of: "vncfb")!] = "plainfb"
        let o = try DeviceModelOptions.parse(argv)
        #expect(o.vnc == nil)
        #expect(o.nographic)
        #expect(!o.sdl)
        #expect(o.name == "plainfb")
        #expect(o.warnings == [])
    }

    @Test func libxlDmRestrictArgvUsesInheritedFdAndStartsPaused() throws {
        // dm_restrict: libxl binds and listens itself and passes fd=N, adds -S
        // and restricts the device model.
        let argv = """
        -xen-domid 7 -no-shutdown -chardev socket,id=libxl-cmd,fd=9,server=on,wait=off -S \
        -mon chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-7,server=on,wait=off \
        -mon chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config -xen-attach -name restricted \
        -vnc 127.0.0.1:0,to=99 -display none -k en-gb -xen-domid-restrict -chroot /var/run/xen/qemu-root-7 \
        -machine xenpv -m 512
        """.split(separator: " ").map(String.init)
        let o = try DeviceModelOptions.parse(argv)
        #expect(o.domid == 7)
        #expect(o.startPaused)
        #expect(o.restrictToDomain)
        #expect(o.chroot == "/var/run/xen/qemu-root-7")
        #expect(o.keymap == "en-gb")
        #expect(o.memoryMiB == 512)
        #expect(o.qmp.map(\.socket) == [.fd(9), .path("/var/run/xen/qmp-libxenstat-7")])
        #expect(o.warnings == [])
    }

    @Test func sdlFromLibxlAndNativeFlagsIsCountedOnce() throws {
        let o = try DeviceModelOptions.parse(["-xen-domid", "2", "-display", "none", "-display", "sdl", "--sdl", "-sdl"])
        #expect(o.sdl)
        #expect(o.displays == [.sdl])
    }

    @Test func nativeLongOptionsFillTheSameFields() throws {
        let o = try DeviceModelOptions.parse([
            "--domid", "3", "--vnc", "127.0.0.1:5", "--sdl", "--display", "png:dir=/tmp/a,interval=250",
            "--display=png:dir=/tmp/b", "--qmp", "unix:/tmp/q.sock,server=on,wait=off", "--name", "guest",
            "--keymap", "de", "--log-level", "debug",
        ])
        #expect(o.domid == 3)
        #expect(o.vnc == "127.0.0.1:5")
        #expect(o.displays == [.sdl, .png(spec: "png:dir=/tmp/a,interval=250"), .png(spec: "png:dir=/tmp/b")])
        #expect(o.qmp == [QMPEndpoint(id: "compat_monitor0", socket: .path("/tmp/q.sock"))])
        #expect(o.name == "guest")
        #expect(o.keymap == "de")
        #expect(o.logLevel == "debug")
        #expect(o.useXenstore)
    }

    @Test func demoModeNeedsNoDomidAndTakesSeconds() throws {
        let o = try DeviceModelOptions.parse(["--seconds", "10", "--display", "png:dir=out/demo,interval=1000"], mode: .demo)
        #expect(o.domid == nil)
        #expect(o.seconds == 10)
        #expect(throws: OptionError.self) { try DeviceModelOptions.parse(["--domid", "1", "--seconds", "3"]) }
    }

    @Test func aGuestCanBeNamedInsteadOfNumberedAndServedForVdisplOnly() throws {
        let o = try DeviceModelOptions.parse(["--domain", "guest1", "--vdispl-only", "--vnc", "127.0.0.1:0"])
        #expect(o.domainName == "guest1" && o.domid == nil && o.vdisplOnly)
        #expect(try !DeviceModelOptions.parse(["--domid", "3"]).vdisplOnly)
        #expect(throws: OptionError("--domain", "give the guest's domain id or its name, not both")) {
            try DeviceModelOptions.parse(["--domid", "3", "--domain", "guest1"])
        }
        for bad in ["", "a b", "a/b", String(repeating: "x", count: 129), "tab\t"] {
            #expect(throws: OptionError.self, "\(bad)") { try DeviceModelOptions.parse(["--domain", bad]) }
        }
        #expect(throws: OptionError.self) { try DeviceModelOptions.parse(["--domain", "g", "--vdispl-only=1"]) }
        #expect(throws: OptionError.self, "demo has its own guest") { try DeviceModelOptions.parse(["--domain", "g"], mode: .demo) }
    }

    @Test func demoModeTakesVdisplAndTheDeviceModelDoesNot() throws {
        #expect(try DeviceModelOptions.parse(["--vdispl"], mode: .demo).demoVdispl)
        #expect(try !DeviceModelOptions.parse([], mode: .demo).demoVdispl)
        #expect(throws: OptionError.self) { try DeviceModelOptions.parse(["--vdispl=1"], mode: .demo) }
        #expect(throws: OptionError("--vdispl", "unknown option")) { try DeviceModelOptions.parse(["--domid", "1", "--vdispl"]) }
    }

    @Test func missingDomidIsAnErrorNamingTheOption() {
        #expect(throws: OptionError("-xen-domid", "missing: the guest's domain id is required (-xen-domid N or --domid N)")) {
            try DeviceModelOptions.parse(["-name", "x"])
        }
    }

    @Test func unknownOptionsAndBadValuesNameTheOption() {
        let cases: [([String], String)] = [
            (["--domid", "1", "-bogus"], "-bogus"),
            (["--domid", "1", "--frobnicate=3"], "--frobnicate"),
            (["--domid", "abc"], "--domid"),
            (["--domid", "-1"], "--domid"),
            (["--domid", "32752"], "--domid"),
            (["--domid", "1", "stray"], "stray"),
            (["--domid", "1", "-vnc"], "-vnc"),
            (["--domid", "1", "-vnc", ""], "-vnc"),
            (["--domid", "1", "-k", "klingon"], "-k"),
            (["--domid", "1", "--dirty-tracking", "uffd"], "--dirty-tracking"), // demo only
            (["--domid", "1", "--log-level", "loud"], "--log-level"),
            (["--domid", "1", "-machine", "xenfv"], "-machine"),
            (["--domid", "1", "-m", "lots"], "-m"),
            (["--domid", "1", "-display", "vga"], "-display"),
            (["--domid", "1", "--display", "sdl,colour=red"], "--display"),
            (["--domid", "1", "--display", "none,x=1"], "--display"),
            (["--domid", "1", "-chardev", "socket,path=/x,server=on"], "-chardev"),
            (["--domid", "1", "-chardev", "socket,id=a,server=on"], "-chardev"),
            (["--domid", "1", "-chardev", "socket,id=a,path=/x,fd=3,server=on"], "-chardev"),
            (["--domid", "1", "-chardev", "socket,id=a,path=/x,server=maybe"], "-chardev"),
            (["--domid", "1", "-chardev", "socket,id=a,path=/x,server=on,colour=red"], "-chardev"),
            (["--domid", "1", "-chardev", "socket,id=a,fd=x,server=on"], "-chardev"),
            (["--domid", "1", "-chardev", "socket,id=a,path=/x,server=on", "-chardev", "socket,id=a,path=/y,server=on"], "-chardev"),
            (["--domid", "1", "-mon", "chardev=nope,mode=control"], "-mon"),
            (["--domid", "1", "-mon", "chardev=a,mode=fancy"], "-mon"),
            (["--domid", "1", "-chardev", "pty,id=a", "-mon", "chardev=a,mode=control"], "-chardev"),
            (["--domid", "1", "-chardev", "socket,id=a,path=/x", "-mon", "chardev=a,mode=control"], "-chardev"),
            (["--domid", "1", "--qmp", "tcp:localhost:4444"], "--qmp"),
            (["--domid", "1", "--qmp", "unix:"], "--qmp"),
            (["--domid", "1", "--qmp", "unix:/q", "--qmp", "unix:/q"], "-chardev"),
            (["--domid", "1", "-chroot", "relative"], "-chroot"),
            (["--domid", "1", "-S=1"], "-S=1"),
            (["--domid", "1", "--sdl=yes"], "--sdl"),
            (["--domid", "1", "--qmp", "unix:/" + String(repeating: "a", count: 120)], "--qmp"),
        ]
        for (argv, option) in cases {
            #expect(throws: OptionError.self, "\(argv)") { try DeviceModelOptions.parse(argv) }
            do {
                _ = try DeviceModelOptions.parse(argv)
            } catch {
                #expect(error.option == option, "\(argv): \(error)")
                #expect(!error.message.isEmpty)
            }
        }
    }

    @Test func optionsQEMUAcceptsButXenvfbIgnoresAreWarnings() throws {
        let o = try DeviceModelOptions.parse([
            "-xen-domid", "1", "-daemonize", "-serial", "pty", "-vga", "std", "-display", "gtk",
            "-chardev", "pty,id=libxl-channel0", "-mon", "chardev=libxl-cmd2",
            "-chardev", "socket,id=libxl-cmd2,path=/tmp/x,server=on,wait=off",
            "-incoming", "fd:5", "-name", "g,debug-threads=on",
        ])
        #expect(o.domid == 1)
        #expect(o.name == "g")
        #expect(o.incoming == "fd:5")
        #expect(o.qmp.isEmpty) // the -mon was a human monitor (mode=readline by default)
        let joined = o.warnings.joined(separator: "\n")
        for word in ["-daemonize", "-serial pty", "-vga std", "gtk", "libxl-channel0", "readline", "-incoming", "debug-threads"] {
            #expect(joined.contains(word), "no warning mentions \(word): \(joined)")
        }
    }

    @Test func tlsCredsX509ObjectsAreKeptWithQEMUsDefaultsAndOtherObjectsWarned() throws {
        let o = try DeviceModelOptions.parse([
            "-xen-domid", "1", "-object", "tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server",
            "--object", "tls-creds-x509,id=c,dir=/d,verify-peer=off,priority=NORMAL:-VERS-TLS1.0,sanity-check=on",
            "-object", "memory-backend-ram,id=mem,size=1G", "-vnc", "127.0.0.1:0,tls-creds=tls0",
        ])
        #expect(o.tlsCredentials["tls0"] == TLSCredentialsObject(id: "tls0", directory: "/etc/pki/qemu", endpoint: .server))
        #expect(o.tlsCredentials["tls0"]?.verifyPeer == true, "QEMU verifies the peer unless told not to")
        #expect(o.tlsCredentials["c"] == TLSCredentialsObject(id: "c", directory: "/d", endpoint: .client, verifyPeer: false,
                                                              priority: "NORMAL:-VERS-TLS1.0"))
        #expect(o.tlsCredentials.count == 2)
        #expect(o.warnings.contains { $0.contains("memory-backend-ram") }, "\(o.warnings)")
        let bad: [([String], String)] = [
            (["-object", "tls-creds-x509,dir=/d"], "needs id="),
            (["-object", "tls-creds-x509,id=t"], "needs dir="),
            (["-object", "tls-creds-x509,id=t,dir=/d,endpoint=both"], "endpoint must be server or client"),
            (["-object", "tls-creds-x509,id=t,dir=/d,passwordid=sec0"], "passwordid"),
            (["-object", "tls-creds-x509,id=t,dir=/d,colour=red"], "unknown property 'colour'"),
            (["-object", "tls-creds-x509,id=t,dir=/d", "-object", "tls-creds-x509,id=t,dir=/e"], "duplicate object id 't'"),
            (["-object", "tls-creds-x509,id=1t,dir=/d"], "invalid id"),
        ]
        for (args, words) in bad {
            do {
                _ = try DeviceModelOptions.parse(["-xen-domid", "1"] + args)
                Issue.record("\(args) was accepted")
            } catch {
                #expect(error.option == "-object" && error.message.contains(words), "\(args): \(error)")
            }
        }
    }

    @Test func incomingWithPausedStartMeansRestore() throws {
        let o = try DeviceModelOptions.parse(["-xen-domid", "4", "-S", "-incoming", "fd:12"])
        #expect(o.startPaused)
        #expect(o.incoming == "fd:12")
    }

    @Test func qemuOptionStringsHandleEscapedCommasAndFlags() throws {
        let o = try DeviceModelOptions.parse([
            "-xen-domid", "1", "-name", "guest=a,,b,process=xenvfb-a", "-chardev",
            "socket,id=m,path=/tmp/m,,n,server,nowait", "-mon", "m,mode=control,pretty=on",
        ])
        #expect(o.name == "a,b")
        #expect(o.processName == "xenvfb-a")
        #expect(o.qmp == [QMPEndpoint(id: "m", socket: .path("/tmp/m,n"), pretty: true)])
        #expect(o.warnings == [])
    }

    @Test func memorySizesFollowQEMUSuffixes() throws {
        for (text, mib) in [("256", UInt64(256)), ("1G", 1024), ("512M", 512), ("size=2G,maxmem=4G", 2048), ("1048576K", 1024)] {
            #expect(try DeviceModelOptions.parse(["-xen-domid", "1", "-m", text]).memoryMiB == mib)
        }
        #expect(throws: OptionError.self) { try DeviceModelOptions.parse(["-xen-domid", "1", "-m", "99999999999999999T"]) }
    }

    @Test func hiddenNoXenstoreFlagIsRecognised() throws {
        #expect(try DeviceModelOptions.parse(["--domid", "1", "--no-xenstore"]).useXenstore == false)
    }

    @Test func logLevelIsFoundBeforeTheRealParse() {
        #expect(DeviceModelOptions.logLevel(in: ["--domid", "1", "--log-level", "trace"]) == .trace)
        #expect(DeviceModelOptions.logLevel(in: ["--log-level", "trace"]) == nil) // no domid: not parsable
        #expect(DeviceModelOptions.logLevel(in: ["--log-level=error", "--seconds", "1"], mode: .demo) == .error)
    }

    @Test func arbitraryArgumentVectorsNeverCrash() {
        // A small deterministic fuzz: fragments of real options, values and junk.
        let pieces = ["-xen-domid", "--domid", "1", "-chardev", "socket,id=a,path=/x,server=on", "-mon",
                      "chardev=a,mode=control", ",,", ",", "=", "==", "", "-", "--", "--=", "-vnc", "none",
                      "-display", "png:", "png:dir=", "sdl,gl=on", "-m", "0", "99999999999999999999", "-k",
                      "-name", "a,,", "\u{0}", "é", "-S", "--qmp", "unix:", "fd=-1", "-machine", "xenpv,", "-incoming"]
        var seed: UInt64 = 0x9E3779B97F4A7C15
        func random(_ n: Int) -> Int {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17
            return Int(seed % UInt64(n))
        }
        var outcomes = (ok: 0, failed: 0)
        for _ in 0..<3000 {
            let argv = (random(2) == 0 ? ["--domid", "1"] : []) + (0..<random(6)).map { _ in pieces[random(pieces.count)] }
            if (try? DeviceModelOptions.parse(argv)) != nil { outcomes.ok += 1 } else { outcomes.failed += 1 }
        }
        #expect(outcomes.failed > 0)
        #expect(outcomes.ok > 0)
    }
}
