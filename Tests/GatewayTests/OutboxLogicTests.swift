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
    /// A broker, an outbox on a file in a fresh directory (`file`, relative to it), its client
    /// not connected yet.
    struct Site {
        let broker: Mosquitto
        let dir: String
        let client: MQTTClient
        let outbox: Outbox

        static func make(_ name: String, file: String, sync: Duration, _ adjust: (inout Outbox.Settings) -> Void = { _ in }) async throws -> Site {
            let broker = try await Mosquitto.start()
            let dir = try TestEnvironment.makeTemporaryDirectory("gw-outbox-\(name)")
            let client = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "outbox-\(name)"))
            var settings = Outbox.Settings(path: dir + "/" + file, maxBytes: 1 << 20, sync: sync)
            adjust(&settings)
            let outbox = Outbox(settings: settings, client: client, telemetry: nil, logger: Logger(label: "test"))
            await outbox.start()
            return Site(broker: broker, dir: dir, client: client, outbox: outbox)
        }

        func publish(_ topic: String, _ n: Int) async {
            await outbox.publish(to: topic, payload: Array("\(n)".utf8), retain: false, compactable: false, ts: Int64(n))
        }

        /// An observer of `filters`, then the broker connected and the outbox told.
        func connect(observing filters: [String]) async throws -> MQTTObserver {
            let observer = try await MQTTObserver(port: broker.port, filters: filters)
            try await client.connect()
            outbox.connected()
            return observer
        }

        func end(_ observer: MQTTObserver) async {
            await observer.client.disconnect()
            await outbox.close()
            await client.disconnect()
            await broker.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    @Test("reads of the kept messages fail while delivering: tried again, and the backlog arrives in order with nothing new published to wake it")
    func readErrorRetried() async throws {
        let site = try await Site.make("ip", file: "outbox", sync: .milliseconds(20)) { $0.retryPause = .milliseconds(10) }
        // The broker not connected yet: kept on disk.
        for i in 1...50 { await site.publish("ip/t", i) }
        #expect(await site.outbox.flush())
        #expect(FileManager.default.fileExists(atPath: site.dir + "/outbox"))
        DebugHooks.outboxReadFailures.store(3, ordering: .relaxed)
        let observer = try await site.connect(observing: ["ip/#"])
        try await observer.waitUntil("the 50 kept messages") { observer.payloads("ip/t").count >= 50 }
        #expect(observer.payloads("ip/t") == (1...50).map { "\($0)" })
        #expect(DebugHooks.outboxReadFailures.load(ordering: .relaxed) == 0, "the injected errors were met")
        await site.end(observer)
    }

    @Test("flushes that overlap while the file cannot be written: the newest memoryLimit messages are kept, in order")
    func overlappingFailedFlushes() async throws {
        let site = try await Site.make("overlap", file: "missing/outbox", sync: .milliseconds(1)) { $0.memoryLimit = 20 }
        // A flush after every message, none awaited: they overlap as the timer's, the drain's and
        // the stop's can.
        var flushes: [Task<Bool, Never>] = []
        for i in 1...200 {
            await site.publish("ov/t", i)
            flushes.append(Task { await site.outbox.flush() })
        }
        for f in flushes { _ = await f.value }
        let observer = try await site.connect(observing: ["ov/#"])
        try await observer.waitUntil("the 20 kept messages") { observer.payloads("ov/t").count >= 20 }
        #expect(observer.payloads("ov/t") == (181...200).map { "\($0)" })
        await site.end(observer)
    }

    @Test("the file cannot be written (its directory is gone) during an outage: at most memoryLimit messages wait in memory, the newest, and they go out in order once the broker is back")
    func memoryBoundWhileUnwritable() async throws {
        let site = try await Site.make("mem", file: "missing/outbox", sync: .milliseconds(20)) { $0.memoryLimit = 5 }
        for i in 1...8 {
            await site.publish("mem/t", i)
            #expect(await site.outbox.flush() == false, "the write cannot succeed")
        }
        let observer = try await site.connect(observing: ["mem/#"])
        try await observer.waitUntil("the 5 kept messages") { observer.payloads("mem/t").count >= 5 }
        // A live message after them arrives after them (nothing else came before it).
        await site.publish("mem/t", 9)
        try await observer.waitUntil("the live one") { observer.payloads("mem/t").last == "9" }
        #expect(observer.payloads("mem/t") == ["4", "5", "6", "7", "8", "9"])
        await site.end(observer)
    }
}
