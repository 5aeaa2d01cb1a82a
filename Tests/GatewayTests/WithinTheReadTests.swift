import Foundation
@testable import Gateway
import GatewayConfig
import Logging
import ModbusSimulator
import MQTT
import ServiceLifecycleTestKit
import Testing
import TestSupport

/// README (Footprint, Development): a command that finds its device idle has its Modbus request
/// sent within the MQTT read that brought it, before the broker's acknowledgement leaves (which
/// goes at the loop's next turn). End to end: the runtime in this process, a real Mosquitto, a
/// real Modbus TCP device (the simulator, in this process), and between the gateway and each a
/// proxy that stamps every packet the gateway sends with the kernel's receive time
/// (`stamp_proxy.py`): the gateway's two writes, the request and the PUBACK, are stamped in the
/// order its thread made them, whenever anyone reads them.
@Suite("A command's write leaves within the MQTT read (Mosquitto, Modbus TCP, a stamping proxy)")
struct WithinTheReadTests {
    @Test("each command's Modbus write reaches the device before its PUBACK reaches the broker")
    func writeBeforeAcknowledgement() async throws {
        let commands = 20
        let lines = try await Self.stampedRun(commands: commands)
        // The gateway sends PUBACK only for the commands (QoS 1; nothing else it receives is QoS 1
        // here), and a coil write (FC 5) only for them: the n-th of each belong together.
        func stamps(_ kind: String, _ code: String) -> [Int64] {
            var found: [Int64] = []
            for line in lines {
                let f = line.split(separator: " ").map(String.init)
                if f.count >= 3, f[0] == kind, f[2] == code, let ns = Int64(f[1]) { found.append(ns) }
            }
            return found
        }
        let coilWrites = stamps("modbus", "5"), acknowledgements = stamps("mqtt", "4")
        #expect(coilWrites.count == commands && acknowledgements.count == commands,
                "\(coilWrites.count) coil writes and \(acknowledgements.count) PUBACKs for \(commands) commands: \(lines.suffix(30))")
        for (i, (write, acknowledgement)) in zip(coilWrites, acknowledgements).enumerated() {
            #expect(write < acknowledgement,
                    "command \(i + 1): its PUBACK reached the broker \(Double(write - acknowledgement) / 1000) us before its write reached the device")
        }
    }

    /// Starts the broker, the device, the proxy in front of both and the runtime; once the device
    /// is online, sends `commands` `/set`s one after another (each answered `ok` before the next);
    /// stops everything and returns the proxy's lines. Everything started here is stopped before
    /// it returns or throws.
    static func stampedRun(commands: Int) async throws -> [String] {
        let broker = try await Mosquitto.start()
        var simulator: ModbusSimulator?, proxy: ChildProcess?, observer: MQTTObserver?, directory: String?
        var failure: (any Error)?
        do {
            let device = try ModbusSimulator(endpoint: .tcp(host: "127.0.0.1", port: 0), units: [1: SimulatedUnit()])
            simulator = device
            let stamping = try ChildProcess("/usr/bin/python3", [TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/stamp_proxy.py",
                                                                 "mqtt:\(broker.port)", "modbus:\(try #require(device.boundPort))"])
            proxy = stamping
            _ = try await stamping.waitForLine(containing: "ready")
            func port(_ name: String) throws -> Int {
                try #require(stamping.lines.first { $0.hasPrefix("listening \(name) ") }?.split(separator: " ").last.flatMap { Int($0) })
            }
            let dir = try TestEnvironment.makeTemporaryDirectory("within-read")
            directory = dir
            // The device is polled once an hour: after the first poll its bus is idle, as a door
            // controller's is between two polls, and a command finds it so. Home Assistant off:
            // its retained configs would come back to the gateway at QoS 1, with PUBACKs of their own.
            let config = try RuntimeTests.configuration("""
                  [[device.point]]
                  name = "light"
                  register = "coil"
                  address = 1
                  writable = true
                [homeassistant]
                enabled = false
                """, port: try port("mqtt"), directory: dir, id: "wr", devicePort: try port("modbus"), pollMs: 3_600_000)
            let logs = Timeline()
            let runtime = GatewayRuntime(configuration: config, password: nil, commandKey: nil, telemetry: nil, watchLoops: false, version: "test",
                                         logger: Logger(label: "within-read") { _ in RecordingLogHandler(logs) }, makeBus: nil)
            let watcher = try await MQTTObserver(port: broker.port, filters: ["gateway/wr/#"])
            observer = watcher
            try await testGracefulShutdown { trigger in
                let run = Task { try await runtime.run() }
                do {
                    try await watcher.waitUntil("the device online and its first value, seen: \(watcher.summary)", timeout: .seconds(10)) {
                        watcher.payloads("gateway/wr/d/status").contains("online") && !watcher.payloads("gateway/wr/d/light").isEmpty
                    }
                    let result = "gateway/wr/d/light/set/result"
                    for i in 0..<commands {
                        let before = watcher.payloads(result).count
                        try await watcher.client.publish(to: "gateway/wr/d/light/set", payload: Array((i % 2 == 0 ? "true" : "false").utf8),
                                                         qos: .atLeastOnce)
                        try await watcher.waitUntil("answer \(i + 1) on \(result)", timeout: .seconds(10)) { watcher.payloads(result).count > before }
                        let answer = watcher.payloads(result)[before]
                        #expect(answer.contains(#""ok":true"#), "command \(i + 1): \(answer); log: \(logs.entries.suffix(10))")
                    }
                } catch { failure = error }
                trigger.triggerGracefulShutdown()
                try await withTimeout(.seconds(15), "run() to return after the graceful shutdown") { try await run.value }
            }
        } catch { failure = failure ?? error }
        let lines = proxy?.lines ?? []
        await observer?.client.disconnect()
        if let proxy { _ = await proxy.stop() }
        simulator?.stop()
        await broker.shutdown()
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
        if let failure { throw failure }
        return lines
    }
}
