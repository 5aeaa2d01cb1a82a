import NIOCore
import NIOPosix
import Testing
@testable import MQTT

@Suite("MQTT client executors")
struct ExecutorTests {
    @Test("the actor runs on its loop; a task started with its task executor runs its own code there too, also after a sleep")
    func loopExecutors() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let c = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: 1, clientIdentifier: "executors"), eventLoopGroup: group)
        let loop = c.eventLoop
        #expect(await c.isOnItsLoop())
        let onLoop = await Task(executorPreference: c.taskExecutor) { () -> [Bool] in
            let first = loop.inEventLoop
            try? await Task.sleep(for: .milliseconds(5))
            let afterSleep = loop.inEventLoop
            _ = await c.isConnected   // to the actor and back
            return [first, afterSleep, loop.inEventLoop]
        }.value
        #expect(onLoop == [true, true, true])
        // Without the preference, the same code runs on the cooperative pool.
        #expect(await Task { loop.inEventLoop }.value == false)
        try await group.shutdownGracefully()
    }
}

@Suite("Durations as NIO time amounts")
struct TimeAmountTests {
    @Test("the same nanoseconds; saturated at both ends instead of trapping")
    func timeAmounts() {
        #expect(Duration.milliseconds(1500).timeAmount == .milliseconds(1500))
        #expect(Duration.nanoseconds(-7).timeAmount == .nanoseconds(-7))
        #expect(Duration.seconds(Int64.max).timeAmount == .nanoseconds(.max))
        #expect(Duration.seconds(Int64.min).timeAmount == .nanoseconds(.min))
        // Whole seconds that still fit, plus a fraction that does not.
        #expect(Duration(secondsComponent: 9_223_372_036, attosecondsComponent: 999_999_999_000_000_000).timeAmount == .nanoseconds(.max))
    }
}

extension MQTTClient {
    func isOnItsLoop() -> Bool { eventLoop.inEventLoop }
}
