// swift-tools-version:6.1
// xenvfb: a Xen device model for the paravirtual framebuffer and keyboard.
// Layout and seams: ../shared/DESIGN.md (Sources/<Module> = one seam or part).
import PackageDescription

let package = Package(
    name: "xenvfb",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "xenvfb", targets: ["xenvfb"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C libraries, one module map each; all Xen headers in one module (see Sources/CXen/shim.h).
        .systemLibrary(name: "CXen", pkgConfig: "xencontrol", providers: [.apt(["libxen-dev"])]),
        .systemLibrary(name: "CSDL2", providers: [.apt(["libsdl2-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // Small C helpers for what Swift cannot do (macros, varargs, setjmp).
        .target(name: "CShims"),
        // The write-fault engine's C half: SIGSEGV handler, userfaultfd, PAGEMAP_SCAN.
        .target(name: "CWriteFault"),
        // The VNC server's C half: Linux calls the Glibc module does not export (epoll, eventfd, accept4).
        .target(name: "CRFB"),
        // Libraries loaded with dlopen (libraries.h): libSDL2 only when a window is asked for (sdl.c),
        // GnuTLS only when VNC is asked to use TLS (tls.c).
        .target(name: "CDisplayShims", dependencies: ["CSDL2"]),
        // libpng's row-by-row writer (its errors longjmp, so it is C).
        .target(name: "CPNGWrite", dependencies: ["CPNG"]),

        .target(name: "Support", dependencies: ["CShims", .product(name: "Logging", package: "swift-log")]),
        .target(name: "EventLoop", dependencies: ["Support", "CShims"]),
        // The damage pipeline (pure Swift): rect algebra, coalescer, shadow confirm, sources.
        .target(name: "Damage", dependencies: ["EventLoop", "Support"], exclude: ["README.md"]),
        // The write-fault trackers (userfaultfd, mprotect + SIGSEGV) over CWriteFault.
        .target(name: "WriteFault", dependencies: ["Damage", "CWriteFault", "CShims", "Support"]),
        .target(name: "XenStore", dependencies: ["CXen", "EventLoop", "Support"]),
        .target(name: "Host", dependencies: ["CXen", "CShims", "EventLoop", "Support", "XenStore"]),
        // The Xen PV protocols as wire types: vfb/vkbd pages and rings, xen/io/ring.h
        // rings, displif requests and events, xenbus states.
        // Shared by the backends and GuestKit's frontends.
        .target(name: "XenProtocol", dependencies: ["Host", "Support"]),
        .target(name: "XenBus", dependencies: ["XenProtocol", "XenStore", "Host", "EventLoop", "Support"]),
        // The console: frame, display protocol, the one input queue (no C dependencies).
        // Devices publish into it; displays subscribe to it.
        .target(name: "Console", dependencies: ["Damage", "EventLoop", "Support", .product(name: "Logging", package: "swift-log")]),
        .target(name: "Displays", dependencies: ["Console", "Damage", "EventLoop", "Support", "CShims", "RFB", "CSDL2", "CPNG", "CPNGWrite",
                                                "CDisplayShims", .product(name: "Logging", package: "swift-log")]),
        .target(name: "Devices", dependencies: ["XenBus", "XenProtocol", "XenStore", "Host", "Damage", "Console", "EventLoop", "Support", "CXen"]),
        // The VNC (RFB) server: its own thread, sockets and encoders; reads the frame through RFBFrameSource.
        // TLS (VeNCrypt, wss) through CDisplayShims' GnuTLS shim, loaded with dlopen only when asked for.
        .target(name: "RFB", dependencies: ["Support", "CZlib", "CRFB", "CDisplayShims", .product(name: "Logging", package: "swift-log")],
                exclude: ["README.md"]),
        .target(name: "Control", dependencies: ["EventLoop", "Support", "CShims", .product(name: "Logging", package: "swift-log")]),
        .target(name: "GuestKit", dependencies: ["XenBus", "XenProtocol", "XenStore", "Host", "Damage", "WriteFault", "EventLoop", "Support"]),
        // Everything the xenvfb binary does: the device model (session, QMP commands,
        // lifecycle), demo, xenstored and screenshot; tested in Swift.
        .target(name: "DeviceModel", dependencies: ["Support", "EventLoop", "Damage", "XenStore", "Host", "XenProtocol",
                                                    "XenBus", "Devices", "Console", "Displays", "Control", "GuestKit", "CShims", "CXen",
                                                    .product(name: "Logging", package: "swift-log")]),
        .executableTarget(
            name: "xenvfb",
            dependencies: ["DeviceModel"],
            // RSS (README, Performance: Memory): lld packs the ~27,000 relative
            // relocations of this PIE into DT_RELR (5 KB instead of 630 KB that
            // ld.so reads, and that stay resident, at every start); it puts the
            // functions a device model runs (scripts/xenvfb.order, made by
            // scripts/symbol-order.sh) side by side at the start of .text, so
            // the kernel's 64 KiB fault-around maps them and little else; and
            // it exports none of the ~4,000 public symbols of the package's
            // modules (the static stdlib's link arguments ask for
            // -export-dynamic): nothing looks them up, and ld.so's lookups
            // would touch their tables at every start.
            linkerSettings: [.unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
                                           "-Xlinker", "--no-export-dynamic",
                                           "-Xlinker", "--symbol-ordering-file=\(Context.packageDirectory)/scripts/xenvfb.order",
                                           "-Xlinker", "--no-warn-symbol-ordering"])]),
        // Processes the tests start (a simulated guest, the crash-chaining check):
        // kept out of the shipped binary.
        .executableTarget(name: "xenvfb-testtool", dependencies: ["GuestKit", "WriteFault", "Damage", "Host", "XenStore",
                                                                 "XenProtocol", "EventLoop", "Support"],
                          path: "Sources/XenvfbTestTool"),
        // The write-fault engine's benchmark (Benchmarks/README.md).
        // Its `backend` command runs the shipped xenvfb over SimHost with a guest and VNC viewers in process.
        .executableTarget(name: "xenvfb-bench", dependencies: ["Damage", "WriteFault", "CWriteFault", "EventLoop", "Support",
                                                            "GuestKit", "Host", "XenStore", "CZlib"],
                          path: "Benchmarks", exclude: ["README.md"]),

        .testTarget(name: "SupportTests", dependencies: ["Support"]),
        // Test helper: an RFB server over a still many-colour pattern, for the reference decoder and real clients.
        .executableTarget(name: "RFBTestServer", dependencies: ["RFB", "Support"]),
        .testTarget(name: "RFBTests", dependencies: ["RFB", "Support"], exclude: ["rfb_reference.py"]),
        .testTarget(name: "EventLoopTests", dependencies: ["EventLoop", "Support"]),
        // Test helper: an SDL window in a process of its own, for the Xvfb test.
        .executableTarget(name: "SDLProbe", dependencies: ["Console", "Displays", "EventLoop", "Damage"]),
        .testTarget(name: "DisplaysTests", dependencies: ["Console", "Displays", "Damage", "EventLoop", "Support", "CShims", "CPNG", "CSDL2",
                                                         "XenStore"]),
        .testTarget(name: "HostTests", dependencies: ["Host", "EventLoop", "Support"]),
        .testTarget(name: "XenProtocolTests", dependencies: ["XenProtocol", "Host", "Support", "CXen"]),
        .testTarget(name: "DamageTests", dependencies: ["Damage", "WriteFault", "CWriteFault", "EventLoop", "Support"]),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore", "EventLoop", "Support", "CShims"]),
        .testTarget(name: "DevicesTests", dependencies: ["XenProtocol", "Devices", "XenBus", "Host", "Console", "Damage", "EventLoop", "Support"]),
        .testTarget(name: "EndToEndTests", dependencies: ["XenProtocol", "GuestKit", "Devices", "XenBus", "Host", "Console", "Displays", "XenStore", "Damage", "EventLoop", "Support"],
                    exclude: ["device_model.py", "faults.py", "convergence.py", "attack.py", "clients.py"]),
        .target(name: "TestSupport", dependencies: ["Host", "EventLoop"], path: "Tests/TestSupport"),
        .testTarget(name: "GuestKitTests", dependencies: ["TestSupport", "XenProtocol", "GuestKit", "Devices", "XenBus", "Host", "Console", "Displays", "Damage", "EventLoop", "Support"]),
        .testTarget(name: "DeviceModelTests", dependencies: ["DeviceModel", "Console", "Damage", "Control", "EventLoop", "Support"]),
        .testTarget(name: "ControlTests", dependencies: ["Control", "EventLoop", "Support", "CShims"],
                    exclude: ["qmp_client.py"]),
    ]
)

// Every function in a section of its own (the static Swift runtime and
// standard library are built that way), so the linker can order them by
// scripts/xenvfb.order (see the xenvfb target).
for target in package.targets where target.type == .regular || target.type == .executable {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-Xfrontend", "-function-sections"])]
    target.cSettings = (target.cSettings ?? []) + [.unsafeFlags(["-ffunction-sections"])]
}

// libFuzzer targets (Fuzz/, run by scripts/fuzz.sh): only with XENVFB_FUZZ=1,
// so a normal `swift build` neither builds nor links them.
if Context.environment["XENVFB_FUZZ"] == "1" {
    package.targets.append(.target(name: "FuzzSupport", dependencies: [.product(name: "Logging", package: "swift-log")],
                                   path: "Fuzz/FuzzSupport"))
    let fuzzTargets: [(String, [Target.Dependency])] = [
        ("FuzzVfbRing", ["Devices", "XenProtocol", "Console", "EventLoop", "Host"]),
        ("FuzzVkbdRing", ["Devices", "XenProtocol", "Console", "Host"]),
        ("FuzzVdisplRing", ["Devices", "XenProtocol", "Console", "EventLoop", "Host", "Support"]),
        ("FuzzGeometry", ["Devices", "XenProtocol"]),
        ("FuzzXenstored", ["XenStore", "EventLoop", "CShims", "Support"]),
        ("FuzzJSON", ["Control"]),
        ("FuzzQMPStream", ["Control"]),
        ("FuzzArgv", ["Control", "Displays"]),
        ("FuzzRFB", ["RFB", "Support"]),
    ]
    for (name, dependencies) in fuzzTargets {
        package.targets.append(.executableTarget(name: name, dependencies: ["FuzzSupport"] + dependencies, path: "Fuzz/\(name)"))
    }
}
