#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which call, and the errno it set.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32 = Glibc.errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Runs a system call that returns -1 on error, retrying on EINTR.
@discardableResult
public func syscallRetrying<T: BinaryInteger>(_ name: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result == -1 {
            if errno == EINTR { continue }
            throw SystemError(name)
        }
        return result
    }
}
