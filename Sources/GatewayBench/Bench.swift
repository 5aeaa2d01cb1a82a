import ArgumentParser
import Modbus
import ModbusSimulator
import MQTT

#if canImport(Glibc)
import Glibc
#endif

@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway-bench",
        abstract: "Benchmarks (release build, loopback only). Not tests: they print figures.",
        subcommands: [ModbusBench.self, MQTTBench.self])
}

/// Peak and current resident memory of this process, from /proc/self/status (KiB).
func memory() -> (rss: Int, peak: Int) {
    guard let f = fopen("/proc/self/status", "r") else { return (0, 0) }
    defer { fclose(f) }
    var rss = 0, peak = 0
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, 256, f) != nil {
        let s = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let n = Int(s.filter(\.isNumber)) ?? 0
        if s.hasPrefix("VmRSS:") { rss = n }
        if s.hasPrefix("VmHWM:") { peak = n }
    }
    return (rss, peak)
}

struct ModbusBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "modbus",
        abstract: "Transactions per second against the built-in simulator (in-process, 127.0.0.1), and requests per poll.")

    @Option(help: "Transactions to time.") var count = 20_000
    @Option(help: "Registers per read.") var registers = 10

    func run() async throws {
        let sim = try ModbusSimulator(endpoint: .tcp(host: "127.0.0.1", port: 0), units: [1: SimulatedUnit()])
        defer { sim.stop() }
        let bus = ModbusBus(configuration: BusConfiguration(name: "bench", transport: .tcp(host: "127.0.0.1", port: sim.boundPort ?? 0)))
        defer { bus.close() }
        for _ in 0..<200 { _ = try await bus.readHoldingRegisters(unit: 1, address: 0, count: registers) }   // warm-up
        let clock = ContinuousClock()
        var latencies: [Duration] = []
        latencies.reserveCapacity(count)
        let start = clock.now
        for i in 0..<count {
            let t0 = clock.now
            _ = try await bus.readHoldingRegisters(unit: 1, address: i % 100, count: registers)
            latencies.append(clock.now - t0)
        }
        let elapsed = clock.now - start
        latencies.sort()
        let tps = Double(count) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        print("modbus: \(count) x FC3 \(registers) registers over TCP loopback (bus thread + simulator thread, one process)")
        print("  transactions/s: \(Int(tps))")
        print("  latency p50 \(latencies[count / 2]), p99 \(latencies[count * 99 / 100])")

        var items: [ReadItem] = (0..<16).map { ReadItem(id: $0, kind: .holding, address: $0, count: 1) }
        items += (100..<104).map { ReadItem(id: 100 + $0, kind: .holding, address: $0, count: 1) }
        items += (0..<8).map { ReadItem(id: 200 + $0, kind: .coil, address: $0, count: 1) }
        for (name, gaps) in [("tcp", GapPolicy.tcp), ("rtu", GapPolicy.rtu)] {
            let plan = ReadPlan(items: items, gaps: gaps)
            print("  plan (\(name) gaps) for holding 0-15, holding 100-103, coils 0-7: \(plan.requests.count) requests: "
                  + plan.requests.map(\.description).joined(separator: "; "))
        }
        let m = memory()
        print("  RSS \(m.rss / 1024) MiB (peak \(m.peak / 1024) MiB)")
    }
}

struct MQTTBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "mqtt",
        abstract: "Messages/second published to a broker on 127.0.0.1 with our client (start one: scripts/bench-mqtt.sh).")

    @Option(help: "Broker port on 127.0.0.1.") var port: Int
    @Option(help: "Messages per QoS level.") var count = 100_000
    @Option(help: "Payload bytes.") var size = 16
    @Option(help: "Publishes awaited at once (in flight).") var window = 100
    @Option(help: "QoS levels to run.") var qos: [Int] = [0, 1, 2]
    @Option(help: "MQTT protocol: 5 or 3.") var protocolVersion = 5

    func run() async throws {
        let payload = [UInt8](repeating: 0x41, count: size)
        for q in qos {
            guard let level = MQTTQoS(rawValue: UInt8(q)) else { continue }
            var cfg = MQTTConfiguration(host: "127.0.0.1", port: port, version: protocolVersion == 3 ? .v3_1_1 : .v5,
                                        clientIdentifier: "bench-\(q)")
            cfg.maximumInFlight = window
            cfg.queueLimit = count + window
            let client = MQTTClient(configuration: cfg)
            try await client.connect()
            let clock = ContinuousClock()
            let start = clock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                var sent = 0
                while sent < min(window, count) {
                    let i = sent
                    group.addTask { try await client.publish(to: "bench/\(q)", payload: payload, qos: level) }
                    _ = i
                    sent += 1
                }
                while try await group.next() != nil {
                    if sent < count {
                        group.addTask { try await client.publish(to: "bench/\(q)", payload: payload, qos: level) }
                        sent += 1
                    }
                }
            }
            let elapsed = clock.now - start
            let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let m = memory()
            print("mqtt QoS \(q): \(count) messages of \(size) B, \(window) awaited at once: \(Int(Double(count) / secs)) msg/s (\(Double(Int(secs * 100)) / 100) s), RSS \(m.rss / 1024) MiB, peak \(m.peak / 1024) MiB")
            await client.disconnect()
        }
    }
}
