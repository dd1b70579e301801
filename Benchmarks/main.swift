#if canImport(Glibc)
import Glibc
#endif

// xenvfb-bench: the write-fault engine's benchmark (README, "Performance").
exit(BenchCommand.main(Array(CommandLine.arguments.dropFirst())))
