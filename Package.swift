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
        .systemLibrary(name: "CVNCServer", providers: [.apt(["libvncserver-dev"])]),
        .systemLibrary(name: "CSDL2", providers: [.apt(["libsdl2-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        // Small C helpers for what Swift cannot do (macros, varargs, setjmp).
        .target(name: "CShims"),
        // The write-fault engine's C half: SIGSEGV handler, userfaultfd, PAGEMAP_SCAN.
        .target(name: "CWriteFault"),
        // The displays' C half: libvncserver log hooks (variadic), ioctl, and
        // libSDL2 and libvncserver loaded with dlopen only when asked for (sdl.c, vnc.c).
        .target(name: "CDisplayShims", dependencies: ["CVNCServer", "CSDL2"]),

        .target(name: "Support", dependencies: ["CShims", .product(name: "Logging", package: "swift-log")]),
        .target(name: "EventLoop", dependencies: ["Support", "CShims"]),
        .target(name: "Damage", dependencies: ["CWriteFault", "CShims", "EventLoop", "Support"], exclude: ["README.md"]),
        .target(name: "XenStore", dependencies: ["CXen", "EventLoop", "Support"]),
        .target(name: "Host", dependencies: ["CXen", "CShims", "EventLoop", "Support", "XenStore"]),
        .target(name: "XenBus", dependencies: ["XenStore", "Host", "EventLoop", "Support"]),
        .target(name: "Displays", dependencies: ["Damage", "EventLoop", "Support", "CShims", "CVNCServer", "CSDL2", "CPNG",
                                                "CDisplayShims", .product(name: "Logging", package: "swift-log")]),
        .target(name: "Devices", dependencies: ["XenBus", "XenStore", "Host", "Damage", "Displays", "EventLoop", "Support", "CXen"]),
        .target(name: "Control", dependencies: ["Damage", "EventLoop", "Support", "CShims", .product(name: "Logging", package: "swift-log")]),
        .target(name: "GuestKit", dependencies: ["Devices", "XenBus", "Displays", "XenStore", "Host", "Damage", "EventLoop", "Support"]),
        .executableTarget(
            name: "xenvfb",
            dependencies: ["Support", "EventLoop", "Damage", "XenStore", "Host", "XenBus", "Devices",
                           "Displays", "Control", "GuestKit"],
            // RSS (README, Performance: Memory): lld packs the ~27,000 relative
            // relocations of this PIE into DT_RELR (5 KB instead of 630 KB that
            // ld.so reads, and that stay resident, at every start).
            linkerSettings: [.unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"])]),

        .testTarget(name: "SupportTests", dependencies: ["Support"]),
        .testTarget(name: "EventLoopTests", dependencies: ["EventLoop", "Support"]),
        // Test helper: an SDL window in a process of its own, for the Xvfb test.
        .executableTarget(name: "SDLProbe", dependencies: ["Displays", "EventLoop", "Damage"]),
        .testTarget(name: "DisplaysTests", dependencies: ["Displays", "Damage", "EventLoop", "Support", "CShims", "CPNG", "CSDL2",
                                                         "XenStore"]),
        .testTarget(name: "HostTests", dependencies: ["Host", "EventLoop", "Support"]),
        .testTarget(name: "DamageTests", dependencies: ["Damage", "CWriteFault", "EventLoop", "Support"]),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore", "EventLoop", "Support", "CShims"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "XenBus", "Host", "Displays", "Damage", "EventLoop", "Support"]),
        .testTarget(name: "EndToEndTests", dependencies: ["GuestKit", "Devices", "XenBus", "Host", "Displays", "XenStore", "Damage", "EventLoop", "Support"],
                    exclude: ["device_model.py", "faults.py", "convergence.py"]),
        .testTarget(name: "GuestKitTests", dependencies: ["GuestKit", "Devices", "XenBus", "Host", "Displays", "Damage", "EventLoop", "Support"]),
        .testTarget(name: "ControlTests", dependencies: ["Control", "EventLoop", "Support", "CShims"],
                    exclude: ["qmp_client.py"]),
    ]
)

// libFuzzer targets (Fuzz/, run by scripts/fuzz.sh): only with XENVFB_FUZZ=1,
// so a normal `swift build` neither builds nor links them.
if Context.environment["XENVFB_FUZZ"] == "1" {
    package.targets.append(.target(name: "FuzzSupport", path: "Fuzz/FuzzSupport"))
    let fuzzTargets: [(String, [Target.Dependency])] = [
        ("FuzzVfbRing", ["Devices", "Displays", "Host"]),
        ("FuzzVkbdRing", ["Devices", "Displays", "Host"]),
        ("FuzzGeometry", ["Devices"]),
        ("FuzzXenstored", ["XenStore", "EventLoop", "CShims", "Support"]),
        ("FuzzJSON", ["Control"]),
        ("FuzzQMPStream", ["Control"]),
        ("FuzzArgv", ["Control", "Displays"]),
    ]
    for (name, dependencies) in fuzzTargets {
        package.targets.append(.executableTarget(name: name, dependencies: ["FuzzSupport"] + dependencies, path: "Fuzz/\(name)"))
    }
}
