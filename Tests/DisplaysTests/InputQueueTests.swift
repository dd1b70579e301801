import Console
import Displays
import EventLoop
import Testing

private final class Recorder: InputSink {
    var events: [InputEvent] = []
    var times: [UInt64] = []
    func send(_ event: InputEvent) {
        events.append(event)
        times.append(EventLoop.now())
    }
}

@Suite struct InputQueueTests {
    @Test func eventsPassStraightThroughInOrderWithoutPacing() throws {
        let loop = try EventLoop()
        let queue = InputQueue(loop: loop)
        let sink = Recorder()
        queue.target = sink
        var sent: [InputEvent] = []
        for i in 0..<1000 { sent.append(.key(code: UInt32(1 + i % 200), pressed: i % 2 == 0)) }
        for e in sent { queue.send(e) }
        #expect(sink.events == sent, "no pause and no pacing: nothing waits for the loop")
        #expect(queue.waiting == 0)
    }

    @Test func aPauseHoldsEveryLaterEventUntilItHasPassed() throws {
        let loop = try EventLoop()
        let queue = InputQueue(loop: loop)
        let sink = Recorder()
        queue.target = sink
        queue.send(.key(code: 30, pressed: true))
        queue.pause(.milliseconds(40))
        let start = EventLoop.now()
        queue.send(.key(code: 30, pressed: false))
        queue.send(.absolute(x: 5, y: 6))
        #expect(sink.events == [.key(code: 30, pressed: true)])
        while sink.events.count < 3 && EventLoop.now() - start < 5_000_000_000 { loop.runOnce(timeoutMilliseconds: 10) }
        #expect(sink.events == [.key(code: 30, pressed: true), .key(code: 30, pressed: false), .absolute(x: 5, y: 6)])
        #expect(sink.times[1] - start >= 40_000_000, "the release waited for the pause")
    }

    @Test func pacingHandsOnAtMostOneEventPerInterval() throws {
        let loop = try EventLoop()
        let queue = InputQueue(loop: loop, pace: .milliseconds(4))
        let sink = Recorder()
        queue.target = sink
        var sent: [InputEvent] = []
        for i in 0..<30 { sent.append(.relative(dx: Int32(i), dy: 1)) }
        for e in sent { queue.send(e) }
        #expect(sink.events.count == 1, "the rest wait for the pace")
        let start = EventLoop.now()
        while sink.events.count < sent.count && EventLoop.now() - start < 10_000_000_000 { loop.runOnce(timeoutMilliseconds: 10) }
        #expect(sink.events == sent, "complete and in order")
        for i in 1..<sink.times.count {
            #expect(sink.times[i] - sink.times[i - 1] >= 4_000_000, "event \(i) came \(sink.times[i] - sink.times[i - 1]) ns after the one before")
        }
        // A later event still keeps its distance from the last one handed on.
        queue.send(.wheel(1))
        #expect(sink.events.count == sent.count)
    }

    @Test func eventsBeyondTheLimitAreDroppedAndTheRestKeepTheirOrder() throws {
        let loop = try EventLoop()
        let queue = InputQueue(loop: loop)
        queue.limit = 10
        let sink = Recorder()
        queue.target = sink
        queue.pause(.milliseconds(1))
        for i in 0..<20 { queue.send(.key(code: UInt32(i + 1), pressed: true)) }
        #expect(queue.waiting == 10, "ten events wait behind the running pause")
        let start = EventLoop.now()
        while queue.waiting > 0 && EventLoop.now() - start < 5_000_000_000 { loop.runOnce(timeoutMilliseconds: 10) }
        var kept: [InputEvent] = []
        for i in 0..<10 { kept.append(.key(code: UInt32(i + 1), pressed: true)) }
        #expect(sink.events == kept)
    }
}

@Suite struct InputQueueBoundsTests {
    @Test func aBatchThatWouldPassTheLimitIsRefusedWhole() throws {
        let loop = try EventLoop()
        let queue = InputQueue(loop: loop)
        queue.limit = 100
        let sink = Recorder()
        queue.target = sink
        queue.pause(.milliseconds(50)) // holds everything after it
        let batch: [InputQueue.Item] = (0..<60).map { .event(.key(code: UInt32($0 + 1), pressed: true)) }
        try queue.submit(batch)
        #expect(queue.waiting == 60)
        #expect(throws: InputQueue.Refusal.full(limit: 100)) { try queue.submit(batch) }
        #expect(queue.waiting == 60, "nothing of the refused batch was queued")
    }

    @Test func pausesCannotHoldInputForLongerThanTheBudget() throws {
        let loop = try EventLoop()
        let queue = InputQueue(loop: loop)
        queue.maxPendingPause = .seconds(2)
        let sink = Recorder()
        queue.target = sink
        // What a QMP send-key of many keys with hold-time 60000 asks for.
        let press: [InputQueue.Item] = [.event(.key(code: 30, pressed: true)), .pause(.seconds(60)),
                                        .event(.key(code: 30, pressed: false)), .pause(.seconds(60))]
        #expect(throws: InputQueue.Refusal.pauseTooLong(limit: .seconds(2))) { try queue.submit(press) }
        #expect(queue.waiting == 0 && sink.events.isEmpty)
        // Within the budget it is accepted, and the budget comes back as pauses end.
        try queue.submit([.event(.key(code: 31, pressed: true)), .pause(.milliseconds(1500)),
                          .event(.key(code: 31, pressed: false)), .pause(.milliseconds(20))])
        #expect(queue.pendingPause == .milliseconds(1520), "the running pause still counts")
        #expect(throws: InputQueue.Refusal.self) { try queue.submit([.pause(.seconds(1))]) }
        let start = EventLoop.now()
        while sink.events.count < 2 && EventLoop.now() - start < 5_000_000_000 { loop.runOnce(timeoutMilliseconds: 10) }
        #expect(sink.events == [.key(code: 31, pressed: true), .key(code: 31, pressed: false)])
        try queue.submit([.pause(.seconds(1))])
    }
}
