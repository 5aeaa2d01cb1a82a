import Foundation
@testable import Gateway
import Logging
import MQTT
import Testing
import TestSupport

/// The outbox's decisions in-process.
@Suite("Outbox in memory")
struct OutboxLogicTests {
    func record(_ topic: String, _ n: Int, compactable: Bool) -> OutboxRecord {
        OutboxRecord(topic: topic, payload: Array("\(n)".utf8), retain: compactable, compactable: compactable, ts: Int64(n))
    }

    @Test("memory over its bound (the file cannot be written): older values of a topic with a newer one go first, then the oldest; scans and the newest value of each topic stay longest, in order")
    func thin() {
        var records = [record("v", 1, compactable: true), record("scan", 2, compactable: false), record("v", 3, compactable: true),
                       record("w", 4, compactable: true), record("scan", 5, compactable: false), record("v", 6, compactable: true)]
        #expect(Outbox.thin(&records, to: 10).isEmpty && records.count == 6, "within the bound: nothing goes")
        var gone = Outbox.thin(&records, to: 4)
        #expect(gone == ["v": 2])
        #expect(records.map { String(decoding: $0.payload, as: UTF8.self) } == ["2", "4", "5", "6"])
        gone = Outbox.thin(&records, to: 2)
        #expect(gone == ["scan": 1, "w": 1], "then the oldest, whatever they are")
        #expect(records.map { String(decoding: $0.payload, as: UTF8.self) } == ["5", "6"])
    }
}

/// The outbox in-process against a real Mosquitto, with a fault only a test can inject.
@Suite("Outbox in-process (Mosquitto, injected read errors)", .serialized, .timeLimit(.minutes(2)))
struct OutboxInProcessTests {
    @Test("reads of the kept messages fail while delivering: tried again, and the backlog arrives in order with nothing new published to wake it")
    func readErrorRetried() async throws {
        let broker = try await Mosquitto.start()
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-outbox-ip")
        let client = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "outbox-ip"))
        var settings = Outbox.Settings(path: dir + "/outbox", maxBytes: 1 << 20, sync: .milliseconds(20))
        settings.retryPause = .milliseconds(10)
        let outbox = Outbox(settings: settings, client: client, telemetry: nil, logger: Logger(label: "test"))
        await outbox.start()
        // The broker not connected yet: kept on disk.
        for i in 1...50 { await outbox.publish(to: "ip/t", payload: Array("\(i)".utf8), retain: false, compactable: false, ts: Int64(i)) }
        #expect(await outbox.flush())
        #expect(FileManager.default.fileExists(atPath: dir + "/outbox"))
        let observer = try await MQTTObserver(port: broker.port, filters: ["ip/#"])
        DebugHooks.outboxReadFailures.store(3, ordering: .relaxed)
        try await client.connect()
        outbox.connected()
        try await observer.waitUntil("the 50 kept messages") { observer.payloads("ip/t").count >= 50 }
        #expect(observer.payloads("ip/t") == (1...50).map { "\($0)" })
        #expect(DebugHooks.outboxReadFailures.load(ordering: .relaxed) == 0, "the injected errors were met")
        await observer.client.disconnect()
        await outbox.close()
        await client.disconnect()
        await broker.shutdown()
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test("flushes that overlap while the file cannot be written: the newest memoryLimit messages are kept, in order")
    func overlappingFailedFlushes() async throws {
        let broker = try await Mosquitto.start()
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-outbox-overlap")
        let client = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "outbox-overlap"))
        var settings = Outbox.Settings(path: dir + "/missing/outbox", maxBytes: 1 << 20, sync: .milliseconds(1))
        settings.memoryLimit = 20
        let outbox = Outbox(settings: settings, client: client, telemetry: nil, logger: Logger(label: "test"))
        await outbox.start()
        // A flush after every message, none awaited: they overlap as the timer's, the drain's and
        // the stop's can.
        var flushes: [Task<Bool, Never>] = []
        for i in 1...200 {
            await outbox.publish(to: "ov/t", payload: Array("\(i)".utf8), retain: false, compactable: false, ts: Int64(i))
            flushes.append(Task { await outbox.flush() })
        }
        for f in flushes { _ = await f.value }
        let observer = try await MQTTObserver(port: broker.port, filters: ["ov/#"])
        try await client.connect()
        outbox.connected()
        try await observer.waitUntil("the 20 kept messages") { observer.payloads("ov/t").count >= 20 }
        #expect(observer.payloads("ov/t") == (181...200).map { "\($0)" })
        await observer.client.disconnect()
        await outbox.close()
        await client.disconnect()
        await broker.shutdown()
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test("the file cannot be written (its directory is gone) during an outage: at most memoryLimit messages wait in memory, the newest, and they go out in order once the broker is back")
    func memoryBoundWhileUnwritable() async throws {
        let broker = try await Mosquitto.start()
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-outbox-mem")
        let client = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "outbox-mem"))
        var settings = Outbox.Settings(path: dir + "/missing/outbox", maxBytes: 1 << 20, sync: .milliseconds(20))
        settings.memoryLimit = 5
        let outbox = Outbox(settings: settings, client: client, telemetry: nil, logger: Logger(label: "test"))
        await outbox.start()
        for i in 1...8 {
            await outbox.publish(to: "mem/t", payload: Array("\(i)".utf8), retain: false, compactable: false, ts: Int64(i))
            #expect(await outbox.flush() == false, "the write cannot succeed")
        }
        let observer = try await MQTTObserver(port: broker.port, filters: ["mem/#"])
        try await client.connect()
        outbox.connected()
        try await observer.waitUntil("the 5 kept messages") { observer.payloads("mem/t").count >= 5 }
        // A live message after them arrives after them (nothing else came before it).
        await outbox.publish(to: "mem/t", payload: Array("9".utf8), retain: false, compactable: false, ts: 9)
        try await observer.waitUntil("the live one") { observer.payloads("mem/t").last == "9" }
        #expect(observer.payloads("mem/t") == ["4", "5", "6", "7", "8", "9"])
        await observer.client.disconnect()
        await outbox.close()
        await client.disconnect()
        await broker.shutdown()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
