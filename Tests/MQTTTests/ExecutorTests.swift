import NIOCore
import NIOPosix
import Testing
import TestSupport
@testable import MQTT

@Suite("MQTT client executors", .timeLimit(.minutes(2)))
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

    @Test("publish from the pool and from the client's loop at once: each task's messages arrive in its order, each call returns on its caller's executor, a bad topic throws in both")
    func publishFromPoolAndLoop() async throws {
        try await withBroker { broker in
            let pub = MQTTClient(configuration: config(broker))
            try await pub.connect()
            let base = uniqueID("exec")
            let observer = try await MQTTObserver(port: broker.port, filters: ["\(base)/#"])
            let loop = pub.eventLoop
            let n = 200
            // Sequential QoS 1 and 2 publishes per task; the two tasks run side by side.
            @Sendable func run(_ name: String) async throws -> [Bool] {
                var onLoop: [Bool] = []
                for i in 0..<n {
                    try await pub.publish(to: "\(base)/\(name)", string: "\(i)", qos: i % 2 == 0 ? .atLeastOnce : .exactlyOnce)
                    onLoop.append(loop.inEventLoop)
                }
                await #expect(throws: MQTTError.self) { try await pub.publish(to: "\(base)/+/bad", string: "x", qos: .atLeastOnce) }
                onLoop.append(loop.inEventLoop)
                return onLoop
            }
            let fromLoop = Task(executorPreference: pub.taskExecutor) { try await run("loop") }
            let fromPool = Task { try await run("pool") }
            let (l, p) = (try await fromLoop.value, try await fromPool.value)
            #expect(l.allSatisfy { $0 }, "a task on the client's loop is resumed there")
            #expect(!p.contains(true), "a task on the pool is resumed on the pool")
            try await observer.waitUntil("both tasks' messages", timeout: .seconds(30)) {
                observer.count("\(base)/loop") == n && observer.count("\(base)/pool") == n
            }
            let expected = (0..<n).map(String.init)
            #expect(observer.payloads("\(base)/loop") == expected)
            #expect(observer.payloads("\(base)/pool") == expected)
            #expect(await pub.inFlightCount == 0)
            await pub.disconnect()
            await #expect(throws: MQTTError.self) { try await pub.publish(to: "\(base)/after", string: "x") }
            await observer.client.disconnect()
        }
    }
}

extension MQTTClient {
    func isOnItsLoop() -> Bool { eventLoop.inEventLoop }
}
