import Testing
import Glibc
import CShims
@testable import EventLoop

@Suite struct EventLoopTests {
    @Test func timersFireInDeadlineOrderAndTiesInAddOrder() throws {
        let loop = try EventLoop()
        var fired: [String] = []
        loop.addTimer(after: .milliseconds(30)) { fired.append("30") }
        loop.addTimer(after: .milliseconds(10)) { fired.append("10a") }
        loop.addTimer(after: .milliseconds(20)) { fired.append("20") }
        loop.addTimer(after: .milliseconds(10)) { fired.append("10b") }
        loop.addTimer(after: .milliseconds(40)) { loop.stop() }
        loop.run()
        #expect(fired == ["10a", "10b", "20", "30"])
        #expect(loop.activeTimers == 0)
    }

    @Test func workAfterHandlersRunsOnceEveryReadyEventIsHandledAndCostsNoWakeUp() throws {
        let loop = try EventLoop()
        var a: [Int32] = [0, 0], b: [Int32] = [0, 0]
        #expect(pipe(&a) == 0 && pipe(&b) == 0)
        defer { a.forEach { close($0) }; b.forEach { close($0) } }
        var log: [String] = []
        for (name, fds) in [("a", a), ("b", b)] {
            try loop.watch(fd: fds[0]) { _ in
                var byte: UInt8 = 0
                _ = read(fds[0], &byte, 1)
                log.append(name)
                // Queued by the first handler, queued again by the second: runs after both.
                loop.runAfterHandlers { log.append("after \(name)") }
            }
        }
        var one: UInt8 = 1
        _ = write(a[1], &one, 1)
        _ = write(b[1], &one, 1)
        let wakeups = loop.wakeups
        #expect(loop.runOnce(timeoutMilliseconds: 1000) == 2)
        #expect(log.sorted() == ["a", "after a", "after b", "b"])
        #expect(log.suffix(2).allSatisfy { $0.hasPrefix("after") }, "\(log)")
        #expect(loop.wakeups - wakeups == 1)
        #expect(loop.activeTimers == 0)
        // Queued outside a handler: the next round runs it without sleeping.
        var ran = false
        loop.runAfterHandlers { ran = true }
        let start = EventLoop.now()
        loop.runOnce(timeoutMilliseconds: 5000)
        #expect(ran)
        #expect(EventLoop.now() - start < 2_000_000_000)
    }

    @Test func repeatingTimerFiresUntilCancelled() throws {
        let loop = try EventLoop()
        var count = 0
        var id: EventLoop.TimerID?
        id = loop.addTimer(after: .milliseconds(1), repeating: .milliseconds(2)) {
            count += 1
            if count == 5 { loop.cancelTimer(id!); loop.addTimer(after: .milliseconds(20)) { loop.stop() } }
        }
        loop.run()
        #expect(count == 5)
    }

    @Test func cancelledTimerNeverRunsAndIdleLoopSleeps() throws {
        let loop = try EventLoop()
        var ran = false
        let id = loop.addTimer(after: .milliseconds(5)) { ran = true }
        loop.cancelTimer(id)
        let handled = loop.runOnce(timeoutMilliseconds: 100)
        #expect(!ran)
        #expect(handled == 0)
    }

    @Test func handlersMayAddAndRemoveDescriptorsAndTimers() throws {
        let loop = try EventLoop()
        var a: [Int32] = [0, 0], b: [Int32] = [0, 0]
        #expect(pipe(&a) == 0 && pipe(&b) == 0)
        defer { a.forEach { close($0) }; b.forEach { close($0) } }
        var log: [String] = []
        try loop.watch(fd: a[0]) { _ in
            var byte: UInt8 = 0
            _ = read(a[0], &byte, 1)
            log.append("a")
            loop.unwatch(fd: a[0])          // remove itself
            try? loop.watch(fd: b[0]) { _ in  // add another
                _ = read(b[0], &byte, 1)
                log.append("b")
                loop.unwatch(fd: b[0])
                loop.addTimer(after: .zero) { log.append("t"); loop.stop() }
            }
            var one: UInt8 = 1
            _ = write(b[1], &one, 1)
            _ = write(a[1], &one, 1)        // must not reach the removed handler
        }
        var one: UInt8 = 1
        _ = write(a[1], &one, 1)
        loop.run()
        #expect(log == ["a", "b", "t"])
        #expect(!loop.isWatching(fd: a[0]) && !loop.isWatching(fd: b[0]))
    }

    @Test func hangupIsReported() throws {
        let loop = try EventLoop()
        var p: [Int32] = [0, 0]
        #expect(pipe(&p) == 0)
        var seen = EventLoop.Events()
        try loop.watch(fd: p[0]) { ev in seen = ev; loop.unwatch(fd: p[0]); loop.stop() }
        close(p[1])
        loop.run()
        close(p[0])
        #expect(!seen.isDisjoint(with: .hangup))
    }

    @Test func workPostedFromAnotherThreadRunsOnTheLoop() throws {
        let loop = try EventLoop()
        let loopThread = pthread_self()
        nonisolated(unsafe) var ranOnLoop = false
        try spawnThreadForTest {
            loop.post {
                ranOnLoop = pthread_equal(pthread_self(), loopThread) != 0
                loop.stop()
            }
        }
        loop.run()
        #expect(ranOnLoop)
    }

    @Test func signalsReachTheHandlerAndEndTheLoop() throws {
        let loop = try EventLoop()
        var got: [Int32] = []
        try loop.handleSignals([SIGHUP, SIGUSR2]) { sig in
            got.append(sig)
            if sig == SIGHUP { loop.stop() }
        }
        // Thread-directed, so no other test thread can take them.
        pthread_kill(pthread_self(), SIGUSR2)
        pthread_kill(pthread_self(), SIGHUP)
        loop.run()
        #expect(got.sorted() == [SIGHUP, SIGUSR2].sorted())
    }

    @Test func heapPopsInOrder() {
        var heap = TimerHeap()
        let values: [UInt64] = [9, 3, 7, 1, 8, 2, 2, 6, 5, 4]
        for (i, v) in values.enumerated() { heap.push(deadline: v, id: UInt64(i)) }
        var out: [UInt64] = []
        while let e = heap.pop() { out.append(e.deadline) }
        #expect(out == values.sorted())
    }
}

private func spawnThreadForTest(_ body: @escaping @Sendable () -> Void) throws {
    try Support.spawnThread(body)
}
import Support
