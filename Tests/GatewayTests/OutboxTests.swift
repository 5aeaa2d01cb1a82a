import Foundation
import Gateway
import MQTT
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The outbox against real peers: Mosquitto stopped and started, the simulator, a socat pty pair
/// as a QR reader, and gateways killed with SIGKILL. To read what a gateway delivers after an
/// outage deterministically, the last gateway of each test is started only once the broker is
/// back and an observer listens (an earlier one is stopped: killed, or with SIGTERM).
@Suite("Outbox end to end (Mosquitto, gateway simulate, socat, SIGKILL)", .serialized, .timeLimit(.minutes(3)))
struct OutboxTests {
    static let b = "gateway/ob"

    /// A site: one Modbus device (holding 0 as `v`) and one QR reader on a pty.
    final class Site: Sendable {
        let broker: Mosquitto
        let sim: GatewaySimulator
        let pty: PtyPair
        let dir: String
        let config: String
        let reader: FarEnd

        init(gateway extra: String = "") async throws {
            broker = try await Mosquitto.start()
            sim = try await GatewaySimulator.start(["--set", "holding:0=1"])
            pty = try await PtyPair.start()
            dir = try TestEnvironment.makeTemporaryDirectory("gw-outbox")
            config = dir + "/gateway.toml"
            try """
                [gateway]
                id = "ob"
                state_dir = "\(dir)"
                \(extra)
                [mqtt]
                url = "mqtt://127.0.0.1:\(broker.port)"
                keepalive = 5
                [http]
                listen = ""
                [homeassistant]
                enabled = false
                [[bus]]
                name = "plc"
                type = "tcp"
                host = "127.0.0.1"
                port = \(sim.port)
                timeout_ms = 300
                [[device]]
                name = "dev"
                bus = "plc"
                unit = 1
                poll_ms = 200
                  [[device.point]]
                  name = "v"
                  register = "holding"
                  address = 0
                \(qrReaderDevice(port: pty.a))
                """.write(toFile: config, atomically: true, encoding: .utf8)
            reader = try FarEnd(pty.b)
        }

        func gateway() throws -> ChildProcess {
            try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", config, "--log-level", "debug"])
        }

        /// An observer on `gateway/#` (retained and live).
        func observer() async throws -> MQTTObserver {
            try await MQTTObserver(port: broker.port, filters: ["gateway/#"])
        }

        /// The broker back, an observer listening, then a gateway that drains what earlier ones
        /// kept: returned once the outbox is empty (its file removed).
        func drainAfterOutage() async throws -> (MQTTObserver, ChildProcess) {
            try await broker.restart()
            let observer = try await self.observer()
            let gw = try gateway()
            _ = try await gw.waitForLine(timeout: .seconds(60)) { $0.contains("outbox empty") }
            return (observer, gw)
        }

        func finish(_ observer: MQTTObserver, _ gw: ChildProcess) async {
            await observer.client.disconnect()
            gw.signal(SIGTERM)
            _ = try? await gw.waitForExit(timeout: .seconds(20))
            await shutdown()
        }

        func scans(_ range: ClosedRange<Int>) async {
            for i in range { _ = await reader.send("QR:\(String(format: "%04d", i))\n") }
        }

        func shutdown() async {
            _ = await sim.stop()
            await pty.stop()
            await broker.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Waits for the debug line `outbox: N messages on disk` with N >= `count`.
    static func onDisk(_ gw: ChildProcess, atLeast count: Int) async throws {
        _ = try await gw.waitForLine(timeout: .seconds(30)) { line in
            guard let r = line.range(of: "outbox: "), let n = Int(line[r.upperBound...].prefix { $0.isNumber }) else { return false }
            return line.contains("messages on disk") && n >= count
        }
    }

    /// The scan numbers the observer saw, in order.
    static func scans(_ o: MQTTObserver) -> [Int] { o.payloads("\(b)/qr/scan").compactMap { Int($0) } }

    /// The gateway's own memory (Private_Dirty of its smaps_rollup), KiB; printed, not asserted.
    static func ownKiB(_ pid: pid_t) -> Int {
        let rollup = (try? String(contentsOfFile: "/proc/\(pid)/smaps_rollup", encoding: .utf8)) ?? ""
        return rollup.split(separator: "\n").first { $0.hasPrefix("Private_Dirty:") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
    }

    @Test("broker away: 500 scans and value changes survive a SIGKILL and a restart; every scan arrives once the broker is back, in order, each with its ts, and the last value is the retained one")
    func killAndRestart() async throws {
        let site = try await Site()
        let gw1 = try site.gateway()
        _ = try await gw1.waitForLine(containing: "birth and statuses published")
        _ = try await gw1.waitForLine(containing: "serial port")
        let ownConnected = Self.ownKiB(gw1.pid)
        await site.broker.stop()
        _ = try await gw1.waitForLine(containing: "broker lost")
        await site.scans(1...250)
        try await site.sim.set("holding:0=2")
        try await Self.onDisk(gw1, atLeast: 251)
        let ownBacklog = Self.ownKiB(gw1.pid)
        let files = { (try? FileManager.default.contentsOfDirectory(atPath: site.dir))?.filter { $0.hasPrefix("outbox") } ?? [] }
        let bytes = files().reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: site.dir + "/" + $1)[.size] as? Int) ?? 0) }
        print("outbox: \(bytes) bytes on disk for 251 messages (\(bytes / 251) per message); own memory \(ownConnected) KiB connected, \(ownBacklog) KiB with the backlog")
        gw1.signal(SIGKILL)
        _ = try await gw1.waitForExit()
        // Python's sqlite3 (another SQLite reader) opens what the killed gateway left, in order.
        let py = try ChildProcess("/usr/bin/python3", ["-c", """
            import sqlite3, sys
            rows = sqlite3.connect(sys.argv[1]).execute("SELECT payload FROM outbox WHERE topic LIKE '%/qr/scan' ORDER BY seq").fetchall()
            print("scans", len(rows), bytes(rows[0][0]).decode(), bytes(rows[-1][0]).decode())
            """, site.dir + "/outbox"])
        #expect(try await py.waitForExit() == 0, "\(py.tail)")
        #expect(py.lines.contains("scans 250 0001 0250"), "\(py.tail)")

        // Started again, the broker still away: more scans and a value behind the kept ones.
        let gw2 = try site.gateway()
        _ = try await gw2.waitForLine(containing: "an earlier run kept")
        _ = try await gw2.waitForLine(containing: "serial port")
        await site.scans(251...500)
        try await site.sim.set("holding:0=3")
        try await Self.onDisk(gw2, atLeast: 502)
        gw2.signal(SIGTERM)
        #expect(try await gw2.waitForExit(timeout: .seconds(20)) == 0)

        try await site.broker.restart()
        let observer = try await site.observer()
        let gw3 = try site.gateway()
        _ = try await gw3.waitForLine(timeout: .seconds(60)) { $0.contains("kept messages delivered") }
        let delivered = try await gw3.waitForLine(containing: "kept messages delivered")
        print("drain: \(delivered.split(separator: "outbox: ").last ?? "")")
        // Every scan, once and in order, each with the time it was read.
        try await observer.waitUntil("500 scans") { Self.scans(observer).count >= 500 }
        #expect(Self.scans(observer) == Array(1...500))
        let stamps = observer.seen.withLock { $0.filter { $0.topic == "\(Self.b)/qr/scan" }.compactMap { m in m.properties.userProperties.first { $0.name == "ts" }.flatMap { Int64($0.value) } } }
        #expect(stamps.count == 500)
        #expect(zip(stamps, stamps.dropFirst()).allSatisfy { $0 <= $1 }, "ts out of order")
        #expect((stamps.first ?? 0) < (stamps.last ?? 0))
        // The last value is the retained one; the outbox file is gone once empty.
        _ = try await gw3.waitForLine(containing: "outbox empty")
        #expect(files().isEmpty, "\(files())")
        let late = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: site.broker.port, clientIdentifier: "late"))
        try await late.connect()
        var messages = late.messages.makeAsyncIterator()
        try await late.subscribe([MQTTSubscription("\(Self.b)/dev/v", qos: .atLeastOnce)])
        let retained = await messages.next()
        #expect(retained?.payloadString == "3" && retained?.retain == true)
        await late.disconnect()
        await site.finish(observer, gw3)
    }

    @Test("outbox full: the oldest go, the count is logged, the newest are delivered in order")
    func full() async throws {
        let site = try await Site(gateway: "outbox_max_mb = 0.02")
        let gw1 = try site.gateway()
        _ = try await gw1.waitForLine(containing: "birth and statuses published")
        _ = try await gw1.waitForLine(containing: "serial port")
        await site.broker.stop()
        _ = try await gw1.waitForLine(containing: "broker lost")
        await site.scans(1...1200)
        // A line no point matches, after the scans: once the gateway logged it, it has read them all.
        _ = await site.reader.send("END\n")
        _ = try await gw1.waitForLine(timeout: .seconds(60)) { $0.contains("frame matched no point") && $0.contains("END") }
        _ = try await gw1.waitForLine(timeout: .seconds(30)) { $0.contains("outbox full") }
        gw1.signal(SIGTERM)
        #expect(try await gw1.waitForExit(timeout: .seconds(20)) == 0)
        let count = try #require(gw1.lines.first { $0.contains("dropped since the broker went away") })
        #expect(count.contains("messages"), "\(count)")

        let (observer, gw2) = try await site.drainAfterOutage()
        try await observer.waitUntil("the newest scan") { Self.scans(observer).last == 1200 }
        let got = Self.scans(observer)
        #expect(got.last == 1200, "the newest scan was not delivered")
        #expect(got.first.map { $0 > 1 } == true, "the oldest should have gone")
        #expect(got == got.sorted() && Set(got).count == got.count, "out of order or repeated")
        #expect(got == Array((got.first ?? 1)...1200), "a gap among the newest; gateway: \(gw1.lines.filter { $0.contains("outbox") && !$0.contains("on disk") })")
        await site.finish(observer, gw2)
    }

    @Test("a torn last write (the outbox's WAL cut short after SIGKILL) is skipped and the rest delivered in order")
    func tornWrite() async throws {
        let site = try await Site(gateway: "outbox_sync_ms = 100")
        let gw1 = try site.gateway()
        _ = try await gw1.waitForLine(containing: "birth and statuses published")
        _ = try await gw1.waitForLine(containing: "serial port")
        await site.broker.stop()
        _ = try await gw1.waitForLine(containing: "broker lost")
        await site.scans(1...50)
        try await Self.onDisk(gw1, atLeast: 50)
        await site.scans(51...100)
        try await Self.onDisk(gw1, atLeast: 100)
        gw1.signal(SIGKILL)
        _ = try await gw1.waitForExit()
        let wal = site.dir + "/outbox-wal"
        let size = try #require(try FileManager.default.attributesOfItem(atPath: wal)[.size] as? Int)
        #expect(truncate(wal, off_t(size - 300)) == 0)

        let (observer, gw2) = try await site.drainAfterOutage()
        // "outbox empty" means the broker acknowledged them all, not that the observer has them
        // yet: a live scan after the drain, on the same topic, arrives after every drained one.
        await site.scans(9999...9999)
        try await observer.waitUntil("the live scan after the drain") { Self.scans(observer).last == 9999 }
        let got = Array(Self.scans(observer).dropLast())
        #expect(got.count >= 50 && got.count < 100, "\(got.count) delivered")
        #expect(got == Array(1...max(1, got.count)), "not the first ones in order")
        #expect(!gw2.lines.contains { $0.contains("moved to") || $0.contains("cannot") }, "\(gw2.tail)")
        await site.finish(observer, gw2)
    }

    @Test("connected and keeping up: nothing is written to disk (no outbox file), values and scans flow")
    func noDiskWhileConnected() async throws {
        let site = try await Site()
        let observer = try await site.observer()
        let gw = try site.gateway()
        _ = try await gw.waitForLine(containing: "birth and statuses published")
        _ = try await gw.waitForLine(containing: "serial port")
        await site.scans(1...200)
        for v in 10...30 { try await site.sim.set("holding:0=\(v)") }
        try await observer.waitUntil("200 scans") { Self.scans(observer).count >= 200 }
        #expect(Self.scans(observer) == Array(1...200))
        gw.signal(SIGTERM)
        #expect(try await gw.waitForExit(timeout: .seconds(20)) == 0)
        let files = (try FileManager.default.contentsOfDirectory(atPath: site.dir)).filter { $0.hasPrefix("outbox") }
        #expect(files.isEmpty, "written while connected: \(files)")
        #expect(!gw.lines.contains { $0.contains("messages on disk") })
        await observer.client.disconnect()
        await site.shutdown()
    }
}
