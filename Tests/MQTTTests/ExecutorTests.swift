import NIOCore
import NIOPosix
import Testing
@testable import MQTT

@Suite("MQTT client executors")
struct ExecutorTests {
    @Test("the actor runs on its loop; a task started with its task executor runs its own code there too, also after a suspension")
    func loopExecutors() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let c = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: 1, clientIdentifier: "executors"), eventLoopGroup: group)
        let loop = c.eventLoop
        #expect(await c.isOnItsLoop())
        let onLoop = await Task(executorPreference: c.taskExecutor) { () -> [Bool] in
            let first = loop.inEventLoop
            await Task.yield()   // suspended, and resumed through the executor
            let afterSuspension = loop.inEventLoop
            _ = await c.isConnected   // to the actor and back
            return [first, afterSuspension, loop.inEventLoop]
        }.value
        #expect(onLoop == [true, true, true])
        // Without the preference, the same code runs on the cooperative pool.
        #expect(await Task { loop.inEventLoop }.value == false)
        try await group.shutdownGracefully()
    }
}

extension MQTTClient {
    func isOnItsLoop() -> Bool { eventLoop.inEventLoop }
}
