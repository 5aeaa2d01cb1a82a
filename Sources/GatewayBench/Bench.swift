import ArgumentParser
import Modbus
import ModbusSimulator
import MQTT
import NIOCore
import NIOPosix
import Synchronization

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
    @Option(help: """
        How messages are published. 'pool': each publish awaited by a task on the cooperative \
        pool (the first figures in README). 'loop': the same tasks on the client's event loop, as \
        the gateway's pollers and commanders publish. 'callbacks': no task per message; \
        `enqueue(_:qos:completed:)`, the next message published from the completion callback, \
        as the outbox publishes and as the libmosquitto peer (Benchmarks/mosquitto_bench.c) does.
        """)
    var mode: PublishMode = .pool

    enum PublishMode: String, ExpressibleByArgument, CaseIterable {
        case pool, loop, callbacks
    }

    func run() async throws {
        let payload = [UInt8](repeating: 0x41, count: size)
        // One loop, known here: the callbacks mode queues its jobs on it.
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        for q in qos {
            guard let level = MQTTQoS(rawValue: UInt8(q)) else { continue }
            var cfg = MQTTConfiguration(host: "127.0.0.1", port: port, version: protocolVersion == 3 ? .v3_1_1 : .v5,
                                        clientIdentifier: "bench-\(q)")
            cfg.maximumInFlight = window
            cfg.queueLimit = count + window
            let client = MQTTClient(configuration: cfg, eventLoopGroup: loop)
            try await client.connect()
            let clock = ContinuousClock()
            let start = clock.now
            if mode == .callbacks {
                try await publishByCallbacks(client, loop: loop, topic: "bench/\(q)", payload: payload, qos: level)
            } else {
                try await withTaskExecutorPreference(mode == .loop ? client.taskExecutor : nil) {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        var sent = 0
                        while sent < min(window, count) {
                            group.addTask { try await client.publish(to: "bench/\(q)", payload: payload, qos: level) }
                            sent += 1
                        }
                        while try await group.next() != nil {
                            if sent < count {
                                group.addTask { try await client.publish(to: "bench/\(q)", payload: payload, qos: level) }
                                sent += 1
                            }
                        }
                    }
                }
            }
            let elapsed = clock.now - start
            let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let m = memory()
            print("mqtt QoS \(q) (\(mode)): \(count) messages of \(size) B, \(window) in flight at most: \(Int(Double(count) / secs)) msg/s (\(Double(Int(secs * 100)) / 100) s), RSS \(m.rss / 1024) MiB, peak \(m.peak / 1024) MiB")
            await client.disconnect()
        }
    }

    /// `count` messages with at most `window` unacknowledged, without a task per message: the
    /// first `window` are enqueued at once; each completion counts one more owed, and a job on
    /// the client's loop enqueues what is owed (a QoS 0 completion comes inside the client's own
    /// write loop, so the next message is not published from within it). Returns when the last
    /// one completed.
    func publishByCallbacks(_ client: MQTTClient, loop: any EventLoop, topic: String, payload: [UInt8], qos: MQTTQoS) async throws {
        let total = count
        let message = (topic: topic, payload: payload, retain: false, properties: MQTTProperties())
        let progress = CallbackProgress()
        @Sendable func refill() {
            let n = progress.state.withLock { s in
                let n = s.failure == nil ? min(s.owed, total - s.sent) : 0
                s.sent += n
                s.owed = 0
                s.refillQueued = false
                return n
            }
            // This job runs on the client's loop, its executor.
            if n > 0 { client.assumeIsolated { $0.enqueue(Array(repeating: message, count: n), qos: qos, completed: completed) } }
        }
        @Sendable func completed(_: Int, _ result: Result<Void, any Error>) {
            let (queueRefill, finished) = progress.state.withLock { s -> (Bool, (CheckedContinuation<Void, any Error>, (any Error)?)?) in
                s.done += 1
                if case .failure(let e) = result, s.failure == nil { s.failure = e }
                if s.done == total || (s.failure != nil && s.done == s.sent), let w = s.waiter {
                    s.waiter = nil
                    return (false, (w, s.failure))
                }
                s.owed += 1
                let queue = !s.refillQueued
                s.refillQueued = true
                return (queue, nil)
            }
            if queueRefill { loop.execute { refill() } }
            if let (w, failure) = finished {
                if let failure { w.resume(throwing: failure) } else { w.resume() }
            }
        }
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            let first = progress.state.withLock { s in
                s.waiter = cont
                s.sent = min(window, total)
                return s.sent
            }
            loop.execute { client.assumeIsolated { $0.enqueue(Array(repeating: message, count: first), qos: qos, completed: completed) } }
        }
    }
}

/// What `publishByCallbacks` shares between its completion callbacks and its caller.
final class CallbackProgress: Sendable {
    let state = Mutex<State>(State())

    struct State {
        var sent = 0
        var done = 0
        var owed = 0
        var refillQueued = false
        var failure: (any Error)?
        var waiter: CheckedContinuation<Void, any Error>?
    }
}
