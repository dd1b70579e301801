import Testing
import Glibc
import Damage
import EventLoop
import Console
@testable import Displays

@Suite struct PNGDisplayTests {
    @Test func specParsesDirectoryIntervalFormatAndKeep() throws {
        let a = try PNGDisplay.Options(spec: "png:dir=/tmp/x,interval=250,format=ppm,keep=3")
        #expect(a == PNGDisplay.Options(directory: "/tmp/x", intervalMilliseconds: 250, format: .ppm, keep: 3))
        let b = try PNGDisplay.Options(spec: "png:dir=/tmp/a,,b")
        #expect(b.directory == "/tmp/a,b")
        #expect(b.intervalMilliseconds == 1000 && b.format == .png && b.keep == PNGDisplay.defaultKeep)
        let c = try PNGDisplay.Options(spec: "png:/srv/shots,interval=0")
        #expect(c.directory == "/srv/shots" && c.intervalMilliseconds == 0)
    }

    @Test func badSpecsGiveClearErrors() {
        let cases: [(String, String)] = [
            ("png", "missing dir="),
            ("png:interval=5", "missing dir="),
            ("png:dir=", "needs a directory"),
            ("png:dir=/x,interval=fast", "interval=fast is not a number"),
            ("png:dir=/x,interval=-1", "is not a number"),
            ("png:dir=/x,format=gif", "format=gif is not png or ppm"),
            ("png:dir=/x,colour=red", "unknown option 'colour=red'"),
        ]
        for (spec, message) in cases {
            do {
                _ = try PNGDisplay.Options(spec: spec)
                Issue.record("\(spec) was accepted")
            } catch {
                #expect(error.message.contains(message), "\(spec): \(error.message)")
            }
        }
    }

    @Test func writesNumberedFilesAndLatestAtMostOncePerIntervalAndNoTimerWhenStatic() throws {
        let dir = try makeTempDir("pngd")
        defer { removeTree(dir) }
        let loop = try EventLoop()
        let console = Console(width: 64, height: 48)
        let display = try PNGDisplay(spec: "png:dir=\(dir)/shots,interval=300", loop: loop)
        console.add(display)

        // Adding the display shows the first frame.
        #expect(spin(loop) { display.framesWritten == 1 })
        let firstWrite = try #require(display.lastWrite)
        #expect(loop.activeTimers == 0)
        #expect(fileExists(dir + "/shots/frame-000001.png"))
        // Static screen: nothing is armed, the loop sleeps through 100 ms.
        #expect(loop.runOnce(timeoutMilliseconds: 100) == 0)
        #expect(display.framesWritten == 1)

        // A burst of three updates arms one timer and leads to one write.
        for seed in 1...3 {
            paint(console.frame, Rect(x: 0, y: 0, width: 64, height: 10 * seed), seed: UInt32(seed))
            console.update([Rect(x: 0, y: 0, width: 64, height: 10 * seed)])
            #expect(loop.activeTimers == 1)
            #expect(display.isWritePending)
        }
        #expect(display.framesWritten == 1)
        #expect(spin(loop) { display.framesWritten == 2 })
        #expect(try #require(display.lastWrite) - firstWrite >= 300_000_000)
        #expect(loop.activeTimers == 0)
        #expect(loop.runOnce(timeoutMilliseconds: 50) == 0)
        #expect(display.framesWritten == 2)

        // latest.png is the last frame written, and so is frame-000002.png.
        let expected = rgbBytes(console.frame)
        for name in ["latest.png", "frame-000002.png"] {
            let decoded = try decodeWithLibpng(dir + "/shots/" + name)
            #expect(firstDifference(decoded.rgb, expected, width: 64) == nil, "\(name)")
        }
        #expect(!fileExists(dir + "/shots/frame-000003.png"))
        let leftovers = run(["/bin/sh", "-c", "ls -A '\(dir)/shots' | grep tmp || true"]).output
        #expect(leftovers.isEmpty)
    }

    @Test func closeWritesThePendingFrameAndResizeIsAChange() throws {
        let dir = try makeTempDir("pngd")
        defer { removeTree(dir) }
        let loop = try EventLoop()
        let console = Console(width: 32, height: 16)
        let display = try PNGDisplay(spec: "png:dir=\(dir),interval=60000,format=ppm,keep=1", loop: loop)
        console.add(display)
        #expect(spin(loop) { display.framesWritten == 1 })
        console.resize(width: 20, height: 10)
        paint(console.frame, console.frame.bounds, seed: 9)
        #expect(display.isWritePending)
        console.closeAll()
        #expect(display.framesWritten == 2)
        #expect(loop.activeTimers == 0)
        #expect(!fileExists(dir + "/frame-000001.ppm"), "keep=1 removes older frames")
        let decoded = try decodeWithPillow(dir + "/latest.ppm")
        #expect(decoded.width == 20 && decoded.height == 10)
        #expect(firstDifference(decoded.rgb, rgbBytes(console.frame), width: 20) == nil)
    }
}

/// What a local user or a guest can do to the capture files.
@Suite struct CaptureFileSafetyTests {
    @Test func aScreendumpRefusesASymbolicLinkInPlaceOfTheFile() throws {
        let dir = try makeTempDir("capsafe")
        defer { removeTree(dir) }
        let victim = dir + "/victim"
        let fd = open(victim, O_CREAT | O_WRONLY, 0o644)
        _ = "precious".withCString { write(fd, $0, 8) }
        close(fd)
        symlink(victim, dir + "/shot.ppm")
        let frame = Frame(width: 8, height: 8)
        #expect(throws: CaptureError.self) { try capture(frame, to: dir + "/shot.ppm", format: .ppm) }
        #expect(readFile(victim) == Array("precious".utf8), "the link's target was not written")
    }

    @Test func linksPlantedAtTheOldTemporaryNamesAreNeverWrittenThrough() throws {
        let dir = try makeTempDir("capsafe")
        defer { removeTree(dir) }
        let victim = dir + "/victim"
        let fd = open(victim, O_CREAT | O_WRONLY, 0o644)
        _ = "precious".withCString { write(fd, $0, 8) }
        close(fd)
        for name in [".frame-000001.png.tmp", ".frame-000002.png.tmp", ".latest.png.tmp"] { symlink(victim, dir + "/" + name) }
        let loop = try EventLoop()
        let console = Console(width: 16, height: 16)
        let display = try PNGDisplay(spec: "png:dir=\(dir),interval=0", loop: loop)
        console.add(display)
        #expect(spin(loop) { display.framesWritten == 1 })
        paint(console.frame, console.frame.bounds, seed: 4)
        console.update([console.frame.bounds])
        #expect(spin(loop) { display.framesWritten == 2 })
        display.close()
        #expect(readFile(victim) == Array("precious".utf8))
        let decoded = try decodeWithLibpng(dir + "/latest.png")
        #expect(firstDifference(decoded.rgb, rgbBytes(console.frame), width: 16) == nil)
    }

    @Test func shortOfSpaceOnlyLatestIsReplacedAndNumberedFilesResumeLater() throws {
        let dir = try makeTempDir("capsafe")
        defer { removeTree(dir) }
        let loop = try EventLoop()
        let console = Console(width: 16, height: 16)
        let display = try PNGDisplay(spec: "png:dir=\(dir),interval=0,keep=2", loop: loop)
        display.minimumFree = { _ in .max } // every file system is "full"
        console.add(display)
        #expect(spin(loop) { display.framesSkippedForSpace == 1 })
        #expect(display.framesWritten == 0 && fileExists(dir + "/latest.png") && !fileExists(dir + "/frame-000001.png"))
        display.minimumFree = { _ in 0 }
        for seed in 1...4 {
            paint(console.frame, console.frame.bounds, seed: UInt32(seed))
            console.update([console.frame.bounds])
            #expect(spin(loop) { display.framesWritten == seed })
        }
        display.close()
        let names = run(["/bin/sh", "-c", "ls -A '\(dir)'"]).output.split(separator: "\n").map(String.init).sorted()
        #expect(names == ["frame-000003.png", "frame-000004.png", "latest.png"], "keep=2 and no temporaries left: \(names)")
    }
}
