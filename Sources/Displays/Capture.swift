#if canImport(Glibc)
import Glibc
#endif
import CShims
import Console
import CPNG
import CPNGWrite
import EventLoop
import Support

/// The file formats a frame can be captured to (QMP `screendump` spells
/// them `png` and `ppm`).
public enum CaptureFormat: String, Sendable, CaseIterable {
    case png
    case ppm

    /// The lower-case name as QMP and the command line spell it, or nil.
    public init?(name: String) {
        switch name.lowercased() {
        case "png": self = .png
        case "ppm", "pnm": self = .ppm
        default: return nil
        }
    }

    public var fileExtension: String { rawValue }
}

/// Why a capture failed: the path, and what the system or libpng said.
public struct CaptureError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "cannot write \(path): \(reason)" }
}

/// Where a capture reads its rows from: a frame on the loop's thread, or the
/// console from any thread (each row under the console's lock). Only one row
/// of RGB is ever held: a capture costs no copy of the frame.
struct RowSource {
    let width: Int
    let height: Int
    /// Fills one row of packed R, G, B; false if the picture changed size.
    let row: (_ y: Int, _ rgb: UnsafeMutablePointer<UInt8>) -> Bool

    /// A frame read on the loop's thread (where it does not change under us).
    init(_ frame: Frame) {
        width = frame.width
        height = frame.height
        row = { y, rgb in
            guard y < frame.height else { return false }
            convertRowToRGB(frame, y: y, into: UnsafeMutableRawPointer(rgb))
            return true
        }
    }

    /// The console's frame, read from another thread, row by row under its lock.
    init(_ console: Console) {
        let (w, h) = console.size
        width = w
        height = h
        row = { y, rgb in
            console.withFrame { frame in
                guard frame.width == w, frame.height == h else { return false }
                convertRowToRGB(frame, y: y, into: UnsafeMutableRawPointer(rgb))
                return true
            }
        }
    }

    /// Writes the picture to `fd` (and closes it) as PNG or PPM (P6).
    func write(fd: Int32, path: String, format: CaptureFormat) throws(CaptureError) {
        switch format {
        case .png: try writePNG(fd: fd, path: path)
        case .ppm:
            defer { close(fd) }
            try writePPM(fd: fd, path: path)
        }
    }

    /// PNG through libpng's row API (CPNGWrite: fast zlib level, the Sub
    /// filter), one row at a time.
    private func writePNG(fd: Int32, path: String) throws(CaptureError) {
        guard let file = fdopen(fd, "wb") else {
            let e = errno
            close(fd)
            throw CaptureError(path: path, reason: String(cString: strerror(e)))
        }
        var error = [CChar](repeating: 0, count: 256)
        let box = Unmanaged.passRetained(RowBox(row))
        defer { box.release() }
        let rc = xenvfb_png_write(file, Int32(width), Int32(height), { context, y, rgb in
            let row = Unmanaged<RowBox>.fromOpaque(context!).takeUnretainedValue().row
            return row(Int(y), rgb!) ? 0 : 1
        }, box.toOpaque(), &error, error.count)
        let closed = fclose(file)
        guard rc == 0 else { throw CaptureError(path: path, reason: error.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }) }
        guard closed == 0 else { throw CaptureError(path: path, reason: String(cString: strerror(errno))) }
    }

    /// PPM P6 (binary RGB, maxval 255), in chunks of rows.
    private func writePPM(fd: Int32, path: String) throws(CaptureError) {
        let header = Array("P6\n\(width) \(height)\n255\n".utf8)
        let rowBytes = width * 3
        let rowsPerChunk = max(1, 65536 / max(rowBytes, 1))
        let chunk = UnsafeMutablePointer<UInt8>.allocate(capacity: max(rowBytes * rowsPerChunk, header.count))
        defer { chunk.deallocate() }
        chunk.initialize(from: header, count: header.count)
        try writeAll(fd, UnsafeRawBufferPointer(start: chunk, count: header.count), path: path)
        var y = 0
        while y < height {
            let rows = min(rowsPerChunk, height - y)
            for r in 0..<rows {
                guard row(y + r, chunk + r * rowBytes) else {
                    throw CaptureError(path: path, reason: "the picture changed size while it was written")
                }
            }
            try writeAll(fd, UnsafeRawBufferPointer(start: chunk, count: rows * rowBytes), path: path)
            y += rows
        }
    }

    /// Writes the picture to `path` in place, as QEMU's screendump does; the
    /// final path component must not be a symbolic link (the writer may be
    /// root and the directory shared).
    func write(to path: String, format: CaptureFormat) throws(CaptureError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CaptureError(path: path, reason: capturePathReason(errno)) }
        try write(fd: fd, path: path, format: format)
    }

    /// Writes the picture to a new file with an unpredictable name in
    /// `directory` (created with O_EXCL, never through a link) and returns
    /// that name: for writers that then rename it into place.
    func writeTemporary(in directory: String, prefix: String, format: CaptureFormat) throws(CaptureError) -> String {
        var attempt = 0
        while true {
            let name = "\(directory)/.\(prefix)-\(String(UInt64.random(in: 0 ... .max), radix: 36)).tmp"
            let fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
            if fd >= 0 {
                do {
                    try write(fd: fd, path: name, format: format)
                } catch {
                    unlink(name)
                    throw error
                }
                return name
            }
            attempt += 1
            guard errno == EEXIST, attempt < 16 else { throw CaptureError(path: name, reason: capturePathReason(errno)) }
        }
    }
}

private final class RowBox {
    let row: (Int, UnsafeMutablePointer<UInt8>) -> Bool
    init(_ row: @escaping (Int, UnsafeMutablePointer<UInt8>) -> Bool) { self.row = row }
}

private func capturePathReason(_ code: Int32) -> String {
    code == ELOOP ? "it is a symbolic link" : String(cString: strerror(code))
}

/// Writes `frame` to `path` as PNG or PPM, replacing the file (on the
/// loop's thread: nothing changes the frame meanwhile).
public func capture(_ frame: Frame, to path: String, format: CaptureFormat) throws(CaptureError) {
    try RowSource(frame).write(to: path, format: format)
}

/// Writes what `console` shows to `path`, from any thread (the capture
/// thread: QMP `screendump`), reading it row by row under the console's
/// lock. If the picture changed while it was written, it is written again
/// (at most `attempts` times), so the file shows one consistent frame unless
/// the guest never stops changing it.
public func capture(_ console: Console, to path: String, format: CaptureFormat, attempts: Int = 3) throws(CaptureError) {
    for attempt in 1...max(attempts, 1) {
        let before = console.generation
        try RowSource(console).write(to: path, format: format)
        if console.generation == before || attempt == attempts { return }
    }
}

/// One frame row (XRGB little-endian words) as packed R, G, B bytes.
@inline(__always)
func convertRowToRGB(_ frame: Frame, y: Int, into out: UnsafeMutableRawPointer) {
    let src = (frame.pixels + y * frame.stride).assumingMemoryBound(to: UInt8.self)
    let dst = out.assumingMemoryBound(to: UInt8.self)
    for x in 0..<frame.width {
        // Memory order of 0x00RRGGBB little-endian: B, G, R, X.
        dst[3 * x] = src[4 * x + 2]
        dst[3 * x + 1] = src[4 * x + 1]
        dst[3 * x + 2] = src[4 * x]
    }
}

func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws(CaptureError) {
    var offset = 0
    while offset < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if n < 0 {
            if errno == EINTR { continue }
            throw CaptureError(path: path, reason: String(cString: strerror(errno)))
        }
        offset += n
    }
}

/// A thread of its own for encoding and writing captures (the PNG display,
/// QMP `screendump`), so that neither the encode (20–300 ms for a 1080p
/// frame) nor a slow disk ever holds the guest's loop. Jobs run one at a
/// time, in order; at most `limit` wait, and `submit` refuses more.
/// Completions run on the loop.
public final class CaptureWorker: @unchecked Sendable {
    public let loop: EventLoop
    /// Most jobs waiting (not counting the running one).
    public let limit: Int
    private let lock = Lock()
    private let wake = Condition()
    private var jobs: [@Sendable () -> Void] = []
    private var started = false
    private var stopping = false
    private var running = false

    public init(loop: EventLoop, limit: Int = 8) {
        self.loop = loop
        self.limit = limit
    }

    /// Lets the thread finish the jobs submitted so far, then end.
    public func stop() {
        lock.withLock { stopping = true }
        wake.broadcast()
    }

    /// Jobs waiting or running (for tests and back-pressure).
    public var busy: Int { lock.withLock { jobs.count + (running ? 1 : 0) } }

    /// Runs `work` on the worker thread, then `completion` with its result
    /// on the loop (call `submit` on the loop's thread). Returns false (and
    /// runs nothing) when `limit` jobs wait.
    @discardableResult
    public func submit<R: Sendable>(_ work: @escaping @Sendable () -> R,
                                   completion: @escaping (R) -> Void) -> Bool {
        let loop = self.loop
        let done = LoopBound(completion)
        let accepted: Bool = lock.withLock {
            guard !stopping, jobs.count < limit else { return false }
            jobs.append { let r = work(); loop.postLoopBound { done.value(r) } }
            return true
        }
        guard accepted else { return false }
        startIfNeeded()
        wake.signal()
        return true
    }

    /// Waits until every submitted job has run (shutdown, tests). The
    /// completions still go through the loop.
    public func drain() {
        while busy > 0 { usleep(1000) }
    }

    private func startIfNeeded() {
        let start: Bool = lock.withLock {
            guard !started else { return false }
            started = true
            return true
        }
        guard start else { return }
        do {
            try spawnThread { [self] in self.run() }
        } catch {
            // No thread: run the jobs here, on the caller's thread, rather than lose them.
            Log.logger("capture").error("cannot start the capture thread: \(error); capturing on the loop")
            lock.withLock { started = false }
            while let job = lock.withLock({ jobs.isEmpty ? nil : jobs.removeFirst() }) { job() }
        }
    }

    private func run() {
        // Encoding is background work: the guest's loop (and the VNC
        // server) win the CPU when both want it.
        _ = cshims_set_thread_name("xenvfb-capture")
        _ = cshims_set_thread_nice(10)
        while true {
            lock.lock()
            while jobs.isEmpty && !stopping { wake.wait(lock) }
            if stopping && jobs.isEmpty { lock.unlock(); return }
            let job = jobs.removeFirst()
            running = true
            lock.unlock()
            job()
            lock.withLock { running = false }
        }
    }
}
