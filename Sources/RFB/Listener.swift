#if canImport(Glibc)
import Glibc
#endif
import CRFB
import Support

/// A listening socket, non-blocking, close-on-exec.
struct Listener {
    let fd: Int32
    let info: RFBListenInfo
    let webSocket: Bool
    /// The Unix socket (Support's one policy for socket files), if it is one.
    let unix: UnixListener?

    func close() {
        if let unix { unix.close() } else { _ = Glibc.close(fd) }
    }

    /// Opens the sockets for `address`: every address a host name resolves
    /// to, on the first port of the range where all of them bind.
    static func open(_ address: RFBListenAddress, webSocket: Bool) throws(RFBError) -> [Listener] {
        switch address {
        case .unix(let path):
            return [try openUnix(path, webSocket: webSocket)]
        case .tcp(let host, let first, let last, let family):
            guard first >= 0, first <= last, last <= 65535 else {
                throw RFBError("port range \(first)–\(last) is not within 0–65535")
            }
            var lastError = ""
            for port in first...last {
                do {
                    return try openTCP(host: host, port: port, family: family, webSocket: webSocket)
                } catch let e as TCPBindError {
                    if !e.inUse { throw RFBError(e.message) }
                    lastError = e.message
                } catch {
                    throw RFBError("\(error)")
                }
            }
            throw RFBError("no free port from \(first) to \(last) on \(host.isEmpty ? "*" : host): \(lastError)")
        }
    }

    private struct TCPBindError: Error {
        let message: String
        let inUse: Bool
    }

    private static func openTCP(host: String, port: Int, family: RFBListenAddress.Family, webSocket: Bool) throws -> [Listener] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        switch family {
        case .any: hints.ai_family = AF_UNSPEC
        case .ipv4: hints.ai_family = AF_INET
        case .ipv6: hints.ai_family = AF_INET6
        }
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw TCPBindError(message: "cannot resolve \(host): \(String(cString: gai_strerror(rc)))", inUse: false)
        }
        defer { freeaddrinfo(first) }
        var listeners: [Listener] = []
        var seen = Set<[UInt8]>()
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            defer { ai = a.pointee.ai_next }
            let key = Array(UnsafeRawBufferPointer(start: a.pointee.ai_addr, count: Int(a.pointee.ai_addrlen)))
            guard seen.insert(key).inserted else { continue }
            let fd = crfb_socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
            if a.pointee.ai_family == AF_INET6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(4)) }
            if Glibc.bind(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 || Glibc.listen(fd, 16) != 0 {
                let e = errno
                Glibc.close(fd)
                listeners.forEach { $0.close() }
                throw TCPBindError(message: "cannot listen on \(host.isEmpty ? "*" : host) port \(port): \(String(cString: strerror(e)))",
                                   inUse: e == EADDRINUSE)
            }
            listeners.append(Listener(fd: fd, info: localAddress(fd), webSocket: webSocket, unix: nil))
        }
        if listeners.isEmpty { throw TCPBindError(message: "no usable address for \(host)", inUse: false) }
        return listeners
    }

    /// A Unix socket at `path`, mode 0600, through Support's `UnixListener`
    /// (a stale socket is replaced, a live one or a non-socket refused).
    private static func openUnix(_ path: String, webSocket: Bool) throws(RFBError) -> Listener {
        do throws(SocketError) {
            let unix = try UnixListener(path: path, mode: 0o600)
            return Listener(fd: unix.fd, info: RFBListenInfo(host: path, service: path, family: "unix"), webSocket: webSocket, unix: unix)
        } catch {
            throw RFBError("cannot listen: \(error)")
        }
    }

    static func localAddress(_ fd: Int32) -> RFBListenInfo {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return RFBListenInfo(host: "", service: "", family: "") }
        let (h, s, f) = describe(&storage, length)
        return RFBListenInfo(host: h, service: s, family: f)
    }

    /// Numeric host, port and QMP family name of a socket address.
    static func describe(_ storage: inout sockaddr_storage, _ length: socklen_t) -> (String, String, String) {
        let family: String
        switch Int32(storage.ss_family) {
        case AF_INET: family = "ipv4"
        case AF_INET6: family = "ipv6"
        case AF_UNIX: return ("", "", "unix")
        default: return ("", "", "unknown")
        }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let rc = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count), NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard rc == 0 else { return ("", "", family) }
        let text = { (chars: [CChar]) in chars.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }
        return (text(host), text(service), family)
    }
}
