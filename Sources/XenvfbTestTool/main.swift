#if canImport(Glibc)
import Glibc
#endif
import Support

// xenvfb-testtool: processes the tests start, kept out of the shipped binary.
//   sim-guest ...          a simulated guest (GuestKit) as a process of its own
//   write-fault-crash MODE the write-fault handler passing a real crash on
let arguments = Array(CommandLine.arguments.dropFirst())
Log.bootstrap()
switch arguments.first {
case "sim-guest":
    exit(SimGuestCommand.main(Array(arguments.dropFirst())))
case "write-fault-crash":
    exit(WriteFaultCrashCommand.main(Array(arguments.dropFirst())))
default:
    print("usage: xenvfb-testtool sim-guest ... | write-fault-crash MODE")
    exit(2)
}
