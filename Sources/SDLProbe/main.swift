// A test helper, not part of xenvfb: shows a synthetic frame in an SDL
// window and prints every input event it gets, one per line, so
// DisplaysTests can check SDL under Xvfb from outside (SDL reads DISPLAY
// from the environment, which a test process must not change).
//
// Usage: SDLProbe WIDTH HEIGHT SEED    (prints "ready" once the window is up)
import Glibc
import Damage
import Console
import Displays
import EventLoop

func say(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
}

final class Printer: InputSink {
    func send(_ event: InputEvent) { say("\(event)") }
}

let args = CommandLine.arguments
guard args.count == 4, let width = Int(args[1]), let height = Int(args[2]), let seed = Int(args[3]) else {
    say("usage: SDLProbe WIDTH HEIGHT SEED")
    exit(2)
}
do {
    let loop = try EventLoop()
    let console = Console(width: width, height: height)
    // The same pattern as Tests/DisplaysTests/TestSupport.swift paint(_:_:seed:).
    for y in 0..<height {
        for x in 0..<width {
            let r = UInt32(truncatingIfNeeded: x &* 7 &+ seed) & 0xff
            let g = UInt32(truncatingIfNeeded: y &* 5 &+ seed &* 3) & 0xff
            let b = UInt32(truncatingIfNeeded: (x ^ y) &+ seed &* 11) & 0xff
            console.frame.pixels.storeBytes(of: 0xA5 << 24 | r << 16 | g << 8 | b, toByteOffset: y * console.frame.stride + x * 4, as: UInt32.self)
        }
    }
    let printer = Printer()
    console.input = printer
    let sdl = try SDLDisplay(options: .init(title: "xenvfb-sdl-probe"), loop: loop, console: console)
    console.add(sdl)
    console.update([console.frame.bounds])
    try loop.handleSignals([SIGTERM, SIGINT]) { _ in
        console.closeAll()
        loop.stop()
    }
    loop.addTimer(after: .milliseconds(300)) { say("ready") }
    loop.run()
} catch {
    say("error: \(error)")
    exit(1)
}
