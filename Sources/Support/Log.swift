import Logging
#if canImport(Glibc)
import Glibc
#endif

/// One line per event on stderr: `xenvfb[pid]: LEVEL label: message key=value ...`.
///
/// libxl captures a device model's stderr into /var/log/xen/qemu-dm-NAME.log,
/// so this is the only log sink. Metadata such as `domid` and `devid` is
/// printed sorted, after the message, so lines grep well.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        var line = "xenvfb[\(getpid())]: \(event.level.rawValue) \(label): \(event.message)"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += " \(key)=\(value)"
        }
        line += "\n"
        // One write(2) per line: lines from several threads do not interleave.
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
}

/// Logging set-up for the whole process. Call `Log.bootstrap` once from main;
/// libraries and tests just call `Log.logger("label")`.
public enum Log {
    /// Level from `XENVFB_LOG` (trace, debug, info, notice, warning, error, critical), default info.
    public static func bootstrap(level: Logger.Level? = nil) {
        let chosen = level ?? levelFromEnvironment() ?? .info
        LoggingSystem.bootstrap { StderrLogHandler(label: $0, level: chosen) }
    }

    public static func levelFromEnvironment() -> Logger.Level? {
        guard let raw = getenv("XENVFB_LOG") else { return nil }
        return Logger.Level(rawValue: String(cString: raw))
    }

    public static func logger(_ label: String, _ metadata: Logger.Metadata = [:]) -> Logger {
        var logger = Logger(label: label)
        for (k, v) in metadata { logger[metadataKey: k] = v }
        return logger
    }
}
