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
/// A one-shot loop timer is armed only when an update arrives while none is
/// pending; a static screen costs no wake-ups at all.
public final class PNGDisplay: Display {
    public struct Options: Equatable, Sendable {
        public var directory: String
        /// Minimum time between two writes.
        public var intervalMilliseconds: Int = 1000
        public var format: CaptureFormat = .png
        /// Keep only the newest N numbered files (0: keep all).
        public var keep: Int = 0

        public init(directory: String, intervalMilliseconds: Int = 1000, format: CaptureFormat = .png, keep: Int = 0) {
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

    public let name = "png"
    public let options: Options
    private let loop: EventLoop
    private let log: Logger
    private var frame: Frame?
    private var timer: EventLoop.TimerID?
    /// When the last write started (`EventLoop.now()` nanoseconds).
    public private(set) var lastWrite: UInt64?
    private var lastError: String?
    private var closed = false

    /// How many numbered files were written.
    public private(set) var framesWritten = 0
    /// True while a write is scheduled (an update arrived since the last write).
    public var isWritePending: Bool { timer != nil }

    /// The path of the newest complete capture.
    public var latestPath: String { options.directory + "/latest." + options.format.fileExtension }

    public convenience init(spec: String, loop: EventLoop) throws(DisplayError) {
        try self.init(options: Options(spec: spec), loop: loop)
    }

    /// Creates the directory (one level) if it does not exist.
    public init(options: Options, loop: EventLoop) throws(DisplayError) {
        self.options = options
        self.loop = loop
        self.log = Log.logger("display.png", ["dir": "\(options.directory)"])
        if mkdir(options.directory, 0o755) != 0 && errno != EEXIST {
            throw DisplayError("png: cannot create \(options.directory): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard stat(options.directory, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw DisplayError("png: \(options.directory) is not a directory")
        }
    }

    public func frameDidResize(_ frame: Frame) {
        self.frame = frame
        schedule()
    }

    public func frameDidUpdate(_ frame: Frame, rects: [Rect]) {
        self.frame = frame
        schedule()
    }

    /// Writes a pending frame at once, then stops.
    public func close() {
        guard !closed else { return }
        if let timer {
            loop.cancelTimer(timer)
            self.timer = nil
            writeNow()
        }
        closed = true
        frame = nil
    }

    private func schedule() {
        guard !closed, timer == nil else { return }
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
            self.writeNow()
        }
    }

    private func writeNow() {
        guard let frame else { return }
        lastWrite = EventLoop.now()
        let number = framesWritten + 1
        let ext = options.format.fileExtension
        let dir = options.directory
        let final = "\(dir)/frame-\(Self.pad(number)).\(ext)"
        let temp = "\(dir)/.frame-\(Self.pad(number)).\(ext).tmp"
        let latestTemp = "\(dir)/.latest.\(ext).tmp"
        do {
            try capture(frame, to: temp, format: options.format)
            // latest.* becomes a second name of the same file: one encode, two names.
            unlink(latestTemp)
            if link(temp, latestTemp) != 0 {
                try capture(frame, to: latestTemp, format: options.format)
            }
            guard rename(latestTemp, latestPath) == 0, rename(temp, final) == 0 else {
                throw CaptureError(path: final, reason: String(cString: strerror(errno)))
            }
        } catch {
            unlink(temp)
            unlink(latestTemp)
            let text = "\(error)"
            if text != lastError { log.error("capture failed: \(text)") }
            lastError = text
            return
        }
        if lastError != nil { log.info("capture works again") }
        lastError = nil
        framesWritten = number
        if options.keep > 0 && number > options.keep {
            unlink("\(dir)/frame-\(Self.pad(number - options.keep)).\(ext)")
        }
    }

    /// Six digits, more when needed: frame-000001.
    static func pad(_ n: Int) -> String {
        let digits = String(n)
        return digits.count >= 6 ? digits : String(repeating: "0", count: 6 - digits.count) + digits
    }
}
