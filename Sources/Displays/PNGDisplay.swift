#if canImport(Glibc)
import Glibc
#endif
import Console
import Damage
import EventLoop
import Logging
import Support

/// Headless capture: writes the frame to numbered files in a directory after
/// it changes, at most once per interval, plus `latest.png` (or `.ppm`),
/// which is replaced atomically so a reader never sees half a file.
///
/// `--display png:dir=DIR[,interval=MS][,format=png|ppm][,keep=N]`
///
/// Nothing a guest draws can hold the loop or fill the disk:
/// - encoding and writing run on a `CaptureWorker` thread, one capture at a
///   time, reading the console row by row under its lock (no copy of the
///   frame: only one row is held) — the loop does nothing but arm a timer;
///   if the encoder lags, intermediate frames are skipped, never queued,
///   and a capture the guest drew into meanwhile is followed by another;
/// - only the newest `keep` numbered files stay (default 1000; 0 keeps all);
/// - numbered files stop while the file system has less than
///   `minimumFree` bytes free (and resume when it has room); `latest` is
///   always replaced in place, so it never grows;
/// - temporary files get unpredictable names, are created exclusively and
///   never through a symbolic link.
///
/// A one-shot loop timer is armed only when an update arrives while none is
/// pending; a static screen costs no wake-ups at all.
public final class PNGDisplay: Display {
    public struct Options: Equatable, Sendable {
        public var directory: String
        /// Minimum time between two writes.
        public var intervalMilliseconds: Int = 1000
        public var format: CaptureFormat = .png
        /// Keep only the newest N numbered files (0: keep all).
        public var keep: Int = PNGDisplay.defaultKeep

        public init(directory: String, intervalMilliseconds: Int = 1000, format: CaptureFormat = .png, keep: Int = PNGDisplay.defaultKeep) {
            self.directory = directory
            self.intervalMilliseconds = intervalMilliseconds
            self.format = format
            self.keep = keep
        }

        /// Parses `png:dir=DIR,interval=MS,format=png|ppm,keep=N` (the `png:`
        /// prefix is optional; a first item without `=` is the directory).
        public init(spec: String) throws(DisplayError) {
            var body = spec
            if body.hasPrefix("png:") { body.removeFirst(4) } else if body == "png" { body = "" }
            var directory: String?
            var options = Options(directory: "")
            for (i, item) in OptionList.split(body).enumerated() where !item.isEmpty {
                let (key, value) = OptionList.keyValue(item)
                switch key {
                case "dir":
                    guard let value, !value.isEmpty else { throw DisplayError("png: dir= needs a directory") }
                    directory = value
                case "interval":
                    options.intervalMilliseconds = try OptionList.integer(value, option: key, in: "png", range: 0...3_600_000)
                case "format":
                    guard let value, let f = CaptureFormat(name: value) else {
                        throw DisplayError("png: format=\(value ?? "") is not png or ppm")
                    }
                    options.format = f
                case "keep":
                    options.keep = try OptionList.integer(value, option: key, in: "png", range: 0...999_999)
                default:
                    if i == 0 && value == nil { directory = key; continue }
                    throw DisplayError("png: unknown option '\(item)' (expected dir=, interval=, format=, keep=)")
                }
            }
            guard let directory else {
                throw DisplayError("png: missing dir= (use --display png:dir=DIR[,interval=MS][,format=png|ppm])")
            }
            options.directory = directory
            self = options
        }
    }

    /// How many numbered files stay by default.
    public static let defaultKeep = 1000

    public let name = "png"
    public let options: Options
    private let loop: EventLoop
    private let log: Logger
    private let worker: CaptureWorker
    private let ownsWorker: Bool
    private weak var console: Console?
    private var timer: EventLoop.TimerID?
    /// A capture is being encoded and written on the worker.
    private var inFlight = false
    /// The frame changed while a capture was in flight: write again after it.
    private var changedDuringWrite = false
    /// When the last capture started (`EventLoop.now()` nanoseconds).
    public private(set) var lastWrite: UInt64?
    private var lastError: String?
    private var lowOnSpace = false
    private var closed = false

    /// How many numbered files were written.
    public private(set) var framesWritten = 0
    /// Captures skipped because the file system was short of space.
    public private(set) var framesSkippedForSpace = 0
    /// True while a write is scheduled (an update arrived since the last write).
    public var isWritePending: Bool { timer != nil || changedDuringWrite }

    /// The path of the newest complete capture.
    public var latestPath: String { options.directory + "/latest." + options.format.fileExtension }

    /// Free bytes below which numbered files stop: 5% of the file system,
    /// at least 256 MiB (a test may lower it).
    public var minimumFree: @Sendable (_ filesystemBytes: UInt64) -> UInt64 = { max($0 / 20, 256 << 20) }

    public convenience init(spec: String, loop: EventLoop, worker: CaptureWorker? = nil) throws(DisplayError) {
        try self.init(options: Options(spec: spec), loop: loop, worker: worker)
    }

    /// Creates the directory (one level) if it does not exist. Captures are
    /// encoded on `worker` (a new one if nil).
    public init(options: Options, loop: EventLoop, worker: CaptureWorker? = nil) throws(DisplayError) {
        self.options = options
        self.loop = loop
        self.worker = worker ?? CaptureWorker(loop: loop)
        ownsWorker = worker == nil
        self.log = Log.logger("display.png", ["dir": "\(options.directory)"])
        if mkdir(options.directory, 0o755) != 0 && errno != EEXIST {
            throw DisplayError("png: cannot create \(options.directory): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard stat(options.directory, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw DisplayError("png: \(options.directory) is not a directory")
        }
    }

    public func attach(to console: Console) {
        self.console = console
    }

    public func frameDidResize(_ frame: Frame) {
        schedule()
    }

    public func frameDidUpdate(_ frame: Frame, rects: [Rect]) {
        schedule()
    }

    /// Writes a pending frame at once (after the capture in flight), then
    /// stops. Runs at shutdown, so it may wait for the disk.
    public func close() {
        guard !closed else { return }
        let pending = timer != nil || changedDuringWrite
        if let timer {
            loop.cancelTimer(timer)
            self.timer = nil
        }
        worker.drain()
        // The completion of the last capture is still on the loop's queue: take it now.
        while inFlight { _ = loop.runOnce(timeoutMilliseconds: 10) }
        if pending, let console {
            let result = Self.write(RowSource(console), number: framesWritten + 1, options: options, minimumFree: minimumFree)
            finish(result)
        }
        closed = true
        console = nil
        if ownsWorker { worker.stop() }
    }

    private func schedule() {
        guard !closed else { return }
        if inFlight { changedDuringWrite = true; return }
        guard timer == nil else { return }
        let interval = UInt64(options.intervalMilliseconds) * 1_000_000
        var delay: UInt64 = 0
        if let lastWrite {
            let since = EventLoop.now() &- lastWrite
            if since < interval { delay = interval - since }
        }
        // Even with no delay, write from a timer: updates that arrive in the
        // same loop iteration are written once.
        timer = loop.addTimer(after: .nanoseconds(Int64(delay))) { [weak self] in
            guard let self else { return }
            self.timer = nil
            self.startWrite()
        }
    }

    /// Hands the capture to the worker, which reads the console itself.
    private func startWrite() {
        guard let console, !closed else { return }
        lastWrite = EventLoop.now()
        let options = self.options, number = framesWritten + 1, minimumFree = self.minimumFree
        inFlight = true
        let accepted = worker.submit({
            let before = console.generation
            let outcome = Self.write(RowSource(console), number: number, options: options, minimumFree: minimumFree)
            return (outcome, console.generation != before)
        }) { [weak self] (result: (Outcome, Bool)) in
            guard let self else { return }
            self.inFlight = false
            self.finish(result.0)
            // The guest drew while the file was written: it may show two
            // frames at once, so another capture follows.
            if result.1 { self.changedDuringWrite = true }
            if self.changedDuringWrite {
                self.changedDuringWrite = false
                self.schedule()
            }
        }
        if !accepted {
            // The worker is full of screendumps: try again at the next interval.
            inFlight = false
            changedDuringWrite = false
            schedule()
        }
    }

    /// What one capture did.
    enum Outcome {
        case written(number: Int)
        /// Only `latest` was replaced: the file system is short of space.
        case latestOnly(free: UInt64)
        case failed(String)
    }

    private func finish(_ outcome: Outcome) {
        switch outcome {
        case .written(let number):
            framesWritten = number
            if lowOnSpace { log.info("space is back: numbered captures resume") }
            lowOnSpace = false
        case .latestOnly(let free):
            framesSkippedForSpace += 1
            if !lowOnSpace { log.warning("only \(free >> 20) MiB free: numbered captures stop, latest is still replaced") }
            lowOnSpace = true
        case .failed(let text):
            if text != lastError { log.error("capture failed: \(text)") }
            lastError = text
            return
        }
        if lastError != nil { log.info("capture works again") }
        lastError = nil
    }

    /// Encodes and writes one capture (on the worker): `frame-NNNNNN` and a
    /// second name `latest`, both renamed into place from exclusive
    /// temporaries, and the numbered file that falls out of `keep` removed.
    static func write(_ source: RowSource, number: Int, options: Options,
                      minimumFree: @Sendable (UInt64) -> UInt64) -> Outcome {
        let ext = options.format.fileExtension
        let dir = options.directory
        let latest = "\(dir)/latest.\(ext)"
        var fs = statvfs()
        let roomy: Bool
        var free: UInt64 = 0
        if statvfs(dir, &fs) == 0 {
            free = UInt64(fs.f_bavail) &* UInt64(fs.f_frsize)
            roomy = free >= minimumFree(UInt64(fs.f_blocks) &* UInt64(fs.f_frsize))
        } else {
            roomy = true
        }
        do throws(CaptureError) {
            let temp = try source.writeTemporary(in: dir, prefix: "frame", format: options.format)
            guard roomy else {
                guard rename(temp, latest) == 0 else {
                    let e = CaptureError(path: latest, reason: String(cString: strerror(errno)))
                    unlink(temp)
                    throw e
                }
                return .latestOnly(free: free)
            }
            let final = "\(dir)/frame-\(pad(number)).\(ext)"
            // latest.* becomes a second name of the same file: one encode, two names.
            let second = "\(dir)/.latest-\(String(UInt64.random(in: 0 ... .max), radix: 36)).tmp"
            if link(temp, second) != 0 {
                let copy = try source.writeTemporary(in: dir, prefix: "latest", format: options.format)
                guard rename(copy, latest) == 0 else { unlink(copy); unlink(temp); throw CaptureError(path: latest, reason: String(cString: strerror(errno))) }
            } else if rename(second, latest) != 0 {
                let e = CaptureError(path: latest, reason: String(cString: strerror(errno)))
                unlink(second); unlink(temp)
                throw e
            }
            guard rename(temp, final) == 0 else {
                let e = CaptureError(path: final, reason: String(cString: strerror(errno)))
                unlink(temp)
                throw e
            }
            if options.keep > 0 && number > options.keep {
                unlink("\(dir)/frame-\(pad(number - options.keep)).\(ext)")
            }
            return .written(number: number)
        } catch {
            return .failed("\(error)")
        }
    }

    /// Six digits, more when needed: frame-000001.
    static func pad(_ n: Int) -> String {
        let digits = String(n)
        return digits.count >= 6 ? digits : String(repeating: "0", count: 6 - digits.count) + digits
    }
}
