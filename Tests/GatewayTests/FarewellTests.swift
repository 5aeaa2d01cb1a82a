import Foundation
@testable import Gateway
import Logging
@testable import MQTT
import Testing
import TestSupport

/// The graceful stop's last word (``Farewell``), in-process against a real Mosquitto.
@Suite("Farewell: the offline statuses at a graceful stop")
struct FarewellTests {
    @Test("a cancelled stop still ends at the deadline when the broker does not acknowledge: the connection is closed without DISCONNECT (the will)")
    func cancelledStopKeepsTheDeadline() async throws {
        let broker = try await Mosquitto.start()
        var config = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "farewell")
        config.reconnect = nil
        let client = MQTTClient(configuration: config)
        try await client.connect()
        let process = try #require(broker.process)
        process.signal(SIGSTOP)   // the broker stops reading: nothing is acknowledged
        let (ended, ending) = AsyncStream<Void>.makeStream()
        let stop = Task {
            await Farewell.leave(client, offline: ["gateway/fw/d/status", "gateway/fw/status"], within: .milliseconds(300),
                                 logger: Logger(label: "test"))
            ending.finish()
        }
        stop.cancel()   // a stop that is itself cancelled (a second signal, a shutdown timeout)
        // The stream ends when the stop does; a wait cut short by the bound ends it too.
        let inTime = (try? await withTimeout(.seconds(10), "the farewell's end") { () async -> Bool in
            for await _ in ended {}
            return true
        }) == true
        process.signal(SIGCONT)   // (a stop that hung ends now: the broker acknowledges again)
        #expect(inTime, "Farewell.leave did not end within 10 s of a 300 ms deadline")
        #expect(await !client.isConnected)
        await stop.value
        await broker.shutdown()
    }
}
