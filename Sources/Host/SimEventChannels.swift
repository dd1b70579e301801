#if canImport(Glibc)
import Glibc
#endif
import CShims
import Support

/// `SimHost`'s event channels: one Unix datagram socket per port, named
/// `d<domid>-<port>` in the machine's `evtchn` directory, with a `.info`
/// file beside it: `unbound <remote-domid>` or `bound <remote-domid> <remote-port>`.
///
/// The handle's `fd` is an epoll set over its ports' sockets, so one fd serves
/// every port, as with `xenevtchn`. `pending()` drains the port's socket; a
/// notification that arrives later makes the fd readable again, which gives
/// the latch-until-unmask behaviour of a real event channel.
final class SimEventChannels: EventChannels {
    private let dir: String
    private let domid: UInt32
    private var epfd: Int32
    private var sendfd: Int32
    private var ports: [UInt32: Int32] = [:]     // port -> socket fd
    private var peers: [UInt32: (UInt32, UInt32)] = [:]

    init(directory: String, domid: UInt32) throws(HostError) {
        dir = directory
        self.domid = domid
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epfd >= 0 else { throw .eventChannel("\(SystemError("epoll_create1"))") }
        sendfd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard sendfd >= 0 else { Glibc.close(epfd); throw .eventChannel("\(SystemError("socket"))") }
    }

    deinit { close() }

    var fd: Int32 { epfd }

    private func socketPath(_ dom: UInt32, _ port: UInt32) -> String { "\(dir)/d\(dom)-\(port)" }

    /// Binds a fresh socket to the lowest free port number of this domain.
    private func allocatePort() throws(HostError) -> UInt32 {
        guard epfd >= 0 else { throw .eventChannel("handle closed") }
        let s = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard s >= 0 else { throw .eventChannel("\(SystemError("socket"))") }
        for port in UInt32(1)..<4096 {
            guard let address = try? UnixSocketAddress(socketPath(domid, port)) else {
                Glibc.close(s)
                throw .eventChannel("the machine directory \(dir) is too long for a socket path")
            }
            let rc = address.withSockaddr { bind(s, $0, $1) }
            if rc == 0 {
                var ev = epoll_event()
                ev.events = EPOLLIN.rawValue
                ev.data.u64 = UInt64(port)
                guard epoll_ctl(epfd, EPOLL_CTL_ADD, s, &ev) == 0 else {
                    let e = SystemError("epoll_ctl")
                    unlink(socketPath(domid, port)); Glibc.close(s)
                    throw .eventChannel("\(e)")
                }
                ports[port] = s
                return port
            }
            if errno != EADDRINUSE { break }
        }
        let e = SystemError("bind")
        Glibc.close(s)
        throw .eventChannel("no free port in domain \(domid): \(e)")
    }

    private func writeInfo(_ dom: UInt32, _ port: UInt32, _ text: String) {
        let path = socketPath(dom, port) + ".info"
        let tmp = path + ".tmp\(getpid())"
        let f = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard f >= 0 else { return }
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { write(f, $0.baseAddress, $0.count) }
        Glibc.close(f)
        rename(tmp, path)
    }

    private func readInfo(_ dom: UInt32, _ port: UInt32) -> [String]? {
        let f = open(socketPath(dom, port) + ".info", O_RDONLY | O_CLOEXEC)
        guard f >= 0 else { return nil }
        defer { Glibc.close(f) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = buf.withUnsafeMutableBytes { read(f, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self).split(separator: " ").map(String.init)
    }

    func bindUnbound(remoteDomain: UInt32) throws(HostError) -> UInt32 {
        let port = try allocatePort()
        writeInfo(domid, port, "unbound \(remoteDomain)")
        return port
    }

    func bindInterdomain(remoteDomain: UInt32, remotePort: UInt32) throws(HostError) -> UInt32 {
        guard let info = readInfo(remoteDomain, remotePort) else {
            throw .eventChannel("domain \(remoteDomain) has no port \(remotePort)")
        }
        guard info.count == 2, info[0] == "unbound", info[1] == String(domid) else {
            throw .eventChannel("port \(remotePort) of domain \(remoteDomain) is not open to domain \(domid) (\(info.joined(separator: " ")))")
        }
        let port = try allocatePort()
        writeInfo(domid, port, "bound \(remoteDomain) \(remotePort)")
        writeInfo(remoteDomain, remotePort, "bound \(domid) \(port)")
        peers[port] = (remoteDomain, remotePort)
        return port
    }

    private func peer(of port: UInt32) -> (UInt32, UInt32)? {
        if let p = peers[port] { return p }
        guard let info = readInfo(domid, port), info.count == 3, info[0] == "bound",
              let d = UInt32(info[1]), let p = UInt32(info[2]) else { return nil }
        peers[port] = (d, p)
        return (d, p)
    }

    func notify(port: UInt32) throws(HostError) {
        guard ports[port] != nil else { throw .eventChannel("notify on port \(port), which is not bound here") }
        // An unbound port, or a peer that went away, swallows the notification, as in Xen.
        guard let (d, p) = peer(of: port) else { return }
        var one: UInt8 = 1
        guard let address = try? UnixSocketAddress(socketPath(d, p)) else { return }
        let rc = address.withSockaddr { addr, len in
            sendto(sendfd, &one, 1, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL), addr, len)
        }
        if rc < 0 && (errno == ECONNREFUSED || errno == ENOENT) {
            peers[port] = nil // the peer unbound; look it up again next time
        }
        // EAGAIN: the peer's queue is full, so a notification is already pending.
    }

    func pending() throws(HostError) -> UInt32? {
        guard epfd >= 0 else { throw .eventChannel("handle closed") }
        var ev = epoll_event()
        let n = epoll_wait(epfd, &ev, 1, 0)
        guard n == 1 else { return nil }
        let port = UInt32(truncatingIfNeeded: ev.data.u64)
        if let s = ports[port] {
            var buf = [UInt8](repeating: 0, count: 64)
            while buf.withUnsafeMutableBytes({ recv(s, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
        }
        return port
    }

    func unmask(port: UInt32) throws(HostError) {
        guard ports[port] != nil else { throw .eventChannel("unmask on port \(port), which is not bound here") }
    }

    func unbind(port: UInt32) throws(HostError) {
        guard let s = ports.removeValue(forKey: port) else { throw .eventChannel("unbind of port \(port), which is not bound here") }
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, s, nil)
        Glibc.close(s)
        // The other end becomes unbound again (it may be re-bound), as in Xen.
        if let (d, p) = peer(of: port), let info = readInfo(d, p), info.count == 3, info[1] == String(domid), info[2] == String(port) {
            writeInfo(d, p, "unbound \(domid)")
        }
        peers[port] = nil
        unlink(socketPath(domid, port))
        unlink(socketPath(domid, port) + ".info")
    }

    func close() {
        for port in Array(ports.keys) { try? unbind(port: port) }
        if epfd >= 0 { Glibc.close(epfd); epfd = -1 }
        if sendfd >= 0 { Glibc.close(sendfd); sendfd = -1 }
    }
}
