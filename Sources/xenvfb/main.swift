#if canImport(Glibc)
import Glibc
#endif
import Control
import Support

// xenvfb [SUBCOMMAND] [OPTIONS]
// Without a known subcommand the arguments are a device model's (QEMU-style,
// as libxl passes them, or native long options).
let arguments = Array(CommandLine.arguments.dropFirst())
// --log-level wins over XENVFB_LOG; the arguments are parsed for real (and
// their errors reported) by the command.
switch arguments.first {
case "demo": Log.bootstrap(level: DeviceModelOptions.logLevel(in: Array(arguments.dropFirst()), mode: .demo))
case "xenstored", "screenshot", "__sim-guest", "bench", "__write-fault-crash", "-h", "--help", "help", "--version", "-version":
    Log.bootstrap()
default: Log.bootstrap(level: DeviceModelOptions.logLevel(in: arguments))
}
let status: Int32
switch arguments.first {
case "xenstored":
    status = XenstoredCommand.main(Array(arguments.dropFirst()))
case "demo":
    status = DemoCommand.main(Array(arguments.dropFirst()))
case "screenshot":
    status = ScreenshotCommand.main(Array(arguments.dropFirst()))
case "__sim-guest": // hidden: a simulated guest process (end-to-end tests)
    status = SimGuestCommand.main(Array(arguments.dropFirst()))
case "bench":
    status = BenchCommand.main(Array(arguments.dropFirst()))
case "__write-fault-crash": // hidden: DamageTests' crash-chaining check
    status = WriteFaultCrashCommand.main(Array(arguments.dropFirst()))
case "-h", "--help", "help":
    print(usageText)
    status = 0
case "--version", "-version": // -version: QEMU's spelling
    print("xenvfb \(XenvfbVersion.string)")
    status = 0
default:
    status = DeviceModelCommand.main(arguments)
}
exit(status)
