import Control
import Support

/// `xenvfb [SUBCOMMAND] [OPTIONS]`: what the `xenvfb` binary runs. Without a
/// known subcommand the arguments are a device model's (QEMU-style, as libxl
/// passes them, or native long options).
public enum Xenvfb {
    /// Runs the command `arguments` (without argv[0]) names; returns the exit status.
    public static func main(_ arguments: [String]) -> Int32 {
        let rest = Array(arguments.dropFirst())
        // --log-level wins over XENVFB_LOG; the arguments are parsed for real
        // (and their errors reported) by the command.
        switch arguments.first {
        case "demo": Log.bootstrap(level: DeviceModelOptions.logLevel(in: rest, mode: .demo))
        case "xenstored", "screenshot", "-h", "--help", "help", "--version", "-version": Log.bootstrap()
        default: Log.bootstrap(level: DeviceModelOptions.logLevel(in: arguments))
        }
        switch arguments.first {
        case "xenstored": return XenstoredCommand.main(rest)
        case "demo": return DemoCommand.main(rest)
        case "screenshot": return ScreenshotCommand.main(rest)
        case "-h", "--help", "help":
            print(usageText)
            return 0
        case "--version", "-version": // -version: QEMU's spelling
            print("xenvfb \(XenvfbVersion.string)")
            return 0
        default: return DeviceModelCommand.main(arguments)
        }
    }
}
