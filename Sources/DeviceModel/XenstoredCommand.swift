#if canImport(Glibc)
import Glibc
#endif
import EventLoop
import Support
import XenStore

/// `xenvfb xenstored --socket PATH [--domain-socket DOMID:PATH]...`: the
/// embedded xenstored as a process of its own, until SIGINT, SIGTERM or
/// SIGHUP; then it removes its sockets and exits 0.
enum XenstoredCommand {
    static let usage = """
    usage: xenvfb xenstored --socket PATH [--domain-socket DOMID:PATH]...
      --socket PATH               listen on PATH; its clients act as dom0
      --domain-socket DOMID:PATH  also listen on PATH; its clients act as domain DOMID
    """

    static func main(_ args: [String]) -> Int32 {
        let log = Log.logger("xenstored")
        var socket: String?
        var domainSockets: [(UInt32, String)] = []
        let parsed: [ParsedOption]
        do throws(UsageError) {
            parsed = try SubcommandArguments.parse(args, valued: ["--socket", "--domain-socket"], flags: ["-h", "--help"])
        } catch {
            log.error("\(error)\n\(usage)")
            return 2
        }
        for option in parsed {
            let v = option.value ?? ""
            switch option.name {
            case "--socket":
                socket = v
            case "--domain-socket":
                guard let colon = v.firstIndex(of: ":"),
                      let domid = UInt32(v[..<colon]), domid < 0x7ff0,
                      v.index(after: colon) < v.endIndex else {
                    log.error("--domain-socket wants DOMID:PATH (DOMID a number below 32752), got '\(SubcommandArguments.printable(v))'")
                    return 2
                }
                domainSockets.append((domid, String(v[v.index(after: colon)...])))
            default: // -h, --help
                print(usage)
                return 0
            }
        }
        guard let socket else {
            log.error("--socket PATH is required\n\(usage)")
            return 2
        }

        let loop: EventLoop
        do {
            loop = try EventLoop()
        } catch {
            log.error("\(error)")
            return 1
        }
        let server = XenstoreServer(loop: loop)
        do {
            try loop.handleSignals([SIGINT, SIGTERM, SIGHUP]) { signo in
                log.info("signal \(signo): shutting down")
                server.stop()
                loop.stop()
            }
            try server.listen(path: socket)
            for (domid, path) in domainSockets {
                try server.addDomainSocket(domid: domid, path: path)
            }
        } catch {
            log.error("\(error)")
            server.stop()
            return 1
        }
        loop.run()
        return 0
    }
}
