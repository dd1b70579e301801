#if canImport(Glibc)
import Glibc
#endif
import DeviceModel

// The xenvfb binary: everything it does is in the DeviceModel library.
exit(Xenvfb.main(Array(CommandLine.arguments.dropFirst())))
