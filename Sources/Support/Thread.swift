#if canImport(Glibc)
import Glibc
#endif

/// Starts a detached POSIX thread running `body`. Used where a part must not
/// share the event loop's thread (the embedded xenstored when libxenstore's
/// blocking client runs in the same process).
public func spawnThread(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
    final class Box: @unchecked Sendable { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        throw SystemError("pthread_create", errno: rc)
    }
    pthread_detach(thread)
}
