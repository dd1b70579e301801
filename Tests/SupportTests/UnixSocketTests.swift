#if canImport(Glibc)
import Glibc
#endif
import Support
import Testing

/// The one policy every served socket follows (QMP, xenstored, VNC on unix:).
@Suite struct UnixListenerTests {
    func tempDir() -> String {
        var template = Array("/tmp/xenvfb-sock-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return String(cString: p!)
    }

    func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o777 : 0
    }

    @Test func theSocketGetsItsModeWhateverTheUmask() throws {
        let dir = tempDir()
        let old = umask(0)
        defer { umask(old); rmdir(dir) }
        let listener = try UnixListener(path: dir + "/qmp.sock")
        #expect(mode(dir + "/qmp.sock") == 0o600, "a umask of 000 must not make the socket world-writable")
        listener.close()
        #expect(access(dir + "/qmp.sock", F_OK) != 0, "close removes the socket it made")
    }

    @Test func aStaleSocketIsReplacedAndALiveOneIsRefused() throws {
        let dir = tempDir()
        defer { rmdir(dir) }
        let path = dir + "/s"
        let first = try UnixListener(path: path)
        #expect(throws: SocketError.inUse(path)) { _ = try UnixListener(path: path) }
        // A dead process's socket: the file stays, nobody accepts.
        Glibc.close(first.fd)
        let second = try UnixListener(path: path)
        let client = try UnixSocket.connect(to: path)
        defer { Glibc.close(client) }
        var accepted: Int32?
        for _ in 0..<100 where accepted == nil { accepted = second.accept(); if accepted == nil { usleep(1000) } }
        #expect(accepted != nil, "the replacement accepts connections")
        if let accepted { Glibc.close(accepted) }
        second.close()
    }

    @Test func somethingThatIsNotASocketIsNeverTouched() throws {
        let dir = tempDir()
        defer { rmdir(dir) }
        let path = dir + "/file"
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        Glibc.close(fd)
        defer { unlink(path) }
        #expect(throws: SocketError.notASocket(path)) { _ = try UnixListener(path: path) }
        #expect(access(path, F_OK) == 0)
        symlink("/etc/passwd", dir + "/link")
        defer { unlink(dir + "/link") }
        #expect(throws: SocketError.notASocket(dir + "/link")) { _ = try UnixListener(path: dir + "/link") }
    }

    @Test func closeLeavesAFileSomeoneElsePutThereAlone() throws {
        let dir = tempDir()
        defer { rmdir(dir) }
        let path = dir + "/s"
        let listener = try UnixListener(path: path)
        unlink(path)
        let other = try UnixListener(path: path)
        listener.close()
        #expect(access(path, F_OK) == 0, "the other listener's socket is still there")
        other.close()
    }

    @Test func aPathTooLongForSockaddrUnIsAnError() {
        let long = "/tmp/" + String(repeating: "x", count: 200)
        #expect(throws: SocketError.pathTooLong(long, max: UnixSocketAddress.maxPathBytes)) { _ = try UnixListener(path: long) }
        #expect(throws: SocketError.badPath("")) { _ = try UnixSocketAddress("") }
    }
}
