@testable import Gateway
import GatewayConfig
import Logging
import Modbus
@testable import MQTT
import Synchronization
import TestSupport

// Fakes for in-process tests of the units: a scripted bus, a recording publisher and answerer,
// all writing to one ``Timeline`` so a test can check the order things happened in, and await
// the moment something did (bounded by ``withTimeout(_:_:_:)``).

extension TestClock: GatewayClock {}

/// What happened, in order, with a way to await an entry. Entries are counted by their first
/// word (`write`, `answer`...), so a wait for the 10,000th answer costs nothing per entry.
final class Timeline: Sendable {
    /// What a wait looks at: the entries, and their count by first word.
    struct View {
        var entries: [String] = []
        var counts: [Substring: Int] = [:]
    }
    private struct State {
        var view = View()
        var nextID = 0
        var waiters: [(id: Int, predicate: @Sendable (View) -> Bool, continuation: CheckedContinuation<Void, Never>)] = []
    }
    private let state = Mutex(State())

    func append(_ entry: String) {
        let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.view.entries.append(entry)
            s.view.counts[entry.split(separator: " ", maxSplits: 1).first ?? "", default: 0] += 1
            guard !s.waiters.isEmpty else { return [] }
            let view = s.view
            let ready = s.waiters.filter { $0.predicate(view) }.map(\.continuation)
            s.waiters.removeAll { $0.predicate(view) }
            return ready
        }
        for c in ready { c.resume() }
    }

    var entries: [String] { state.withLock { $0.view.entries } }

    /// How many entries have this first word.
    func count(_ kind: String) -> Int { state.withLock { $0.view.counts[Substring(kind)] ?? 0 } }

    /// Returns once `predicate` holds, or when the task is cancelled (bound it with `withTimeout`).
    func until(_ predicate: @escaping @Sendable (View) -> Bool) async {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if predicate(s.view) || Task.isCancelled { return true }
                    s.waiters.append((id, predicate, c))
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: i).continuation
            }
            waiter?.resume()
        }
    }

    /// Returns once `count` entries start with `prefix`, bounded by 10 s of real time.
    func await(_ count: Int = 1, startingWith prefix: String) async throws {
        try await withTimeout(.seconds(10), "\(count) x \(prefix) in \(entries.suffix(20))") {
            await self.until { $0.entries.filter { $0.hasPrefix(prefix) }.count >= count }
        }
    }

    /// Returns once `count` entries have the first word `kind`, bounded by `limit` of real time.
    func await(_ count: Int, of kind: String, within limit: Duration = .seconds(30)) async throws {
        try await withTimeout(limit, "\(count) x \(kind), seen \(self.count(kind))") {
            await self.until { ($0.counts[Substring(kind)] ?? 0) >= count }
        }
    }

    func count(startingWith prefix: String) -> Int { entries.filter { $0.hasPrefix(prefix) }.count }
}

/// Keeps every log line of an in-process runtime (`<level> <message>`) in a ``Timeline``, so a
/// test can await and count what operators would read, as the child-process tests read stderr.
struct RecordingLogHandler: LogHandler {
    let lines: Timeline
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    init(_ lines: Timeline) { self.lines = lines }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        lines.append("\(level) \(message)")
    }
}

extension Timeline {
    /// Entries that contain `text`.
    func count(containing text: String) -> Int { entries.filter { $0.contains(text) }.count }

    /// Returns once an entry contains `text`, bounded by 10 s of real time.
    func await(containing text: String) async throws {
        try await withTimeout(.seconds(10), "a line with \(text)") {
            await self.until { $0.entries.contains { $0.contains(text) } }
        }
    }
}

/// A Modbus device in memory: a write sets registers (or fails as scripted), a read returns them.
/// Entries: `write <address>=<value> @<ms since start>` (or `write-failed ...`), `read <address>`.
final class FakeBus: DeviceBus {
    private struct State {
        var coils: [Int: Bool] = [:]
        var registers: [Int: UInt16] = [:]
        /// The errors the next writes throw, in order (then they succeed again).
        var failures: [ModbusError] = []
        /// False: every request times out (a device gone).
        var reachable = true
        /// Writes asked for so far (counted as the call begins, before it waits).
        var writesBegun = 0
    }
    private let state = Mutex(State())
    let timeline: Timeline
    let clock: TestClock
    let start: ContinuousClock.Instant

    init(timeline: Timeline, clock: TestClock) {
        self.timeline = timeline
        self.clock = clock
        self.start = clock.now
    }

    /// The next `count` writes fail with `error`.
    func failWrites(_ count: Int, with error: ModbusError) {
        state.withLock { $0.failures += Array(repeating: error, count: count) }
    }

    func coil(_ address: Int) -> Bool? { state.withLock { $0.coils[address] } }

    var writesBegun: Int { state.withLock { $0.writesBegun } }

    /// Sets a holding register (as the device itself would).
    func setHolding(_ address: Int, _ value: UInt16) { state.withLock { $0.registers[address] = value } }

    /// Sets a coil (as the device itself would).
    func setCoil(_ address: Int, _ value: Bool) { state.withLock { $0.coils[address] = value } }

    func setReachable(_ reachable: Bool) { state.withLock { $0.reachable = reachable } }

    var responseTimeout: Duration { .milliseconds(100) }
    func close() {}

    private var at: String { "@\((clock.now - start).nanoseconds / 1_000_000)" }

    /// Reads and writes wait once before they answer, as a real bus's do (its answer comes from
    /// the bus thread): a command's job never finishes inside the call that submitted it.
    func write(_ data: WritePlan.Data, unit: Int, address: Int, multiple: Bool, deadline: ContinuousClock.Instant) async throws {
        state.withLock { $0.writesBegun += 1 }
        await Task.yield()
        let shown: String
        switch data {
        case .coil(let on): shown = "\(address)=\(on)"
        case .registers(let r): shown = "\(address)=\(r)"
        }
        let failure = state.withLock { s -> ModbusError? in
            if !s.failures.isEmpty { return s.failures.removeFirst() }
            if !s.reachable { return .timeout(function: "write") }
            switch data {
            case .coil(let on): s.coils[address] = on
            case .registers(let r): for (i, v) in r.enumerated() { s.registers[address + i] = v }
            }
            return nil
        }
        if let failure {
            timeline.append("write-failed \(shown) \(at)")
            throw failure
        }
        timeline.append("write \(shown) \(at)")
    }

    func read(_ kind: RegisterKind, unit: Int, address: Int, count: Int,
              priority: RequestPriority, deadline: ContinuousClock.Instant?) async throws -> ReadResult {
        await Task.yield()
        timeline.append("read \(address)")
        guard state.withLock({ $0.reachable }) else { throw ModbusError.timeout(function: "read") }
        return state.withLock { s in
            kind.isBit ? .bits((0..<count).map { s.coils[address + $0] ?? false })
                       : .registers((0..<count).map { s.registers[address + $0] ?? 0 })
        }
    }

    /// Each item of the plan from the registers (all timing out when unreachable); entries `poll`.
    func pollDevice(_ plan: inout ReadPlan, unit: Int, deadline: ContinuousClock.Instant) async -> [Int: ModbusBus.ItemResult] {
        let results = state.withLock { s -> [Int: ModbusBus.ItemResult] in
            var out: [Int: ModbusBus.ItemResult] = [:]
            for item in plan.requests.flatMap(\.items) {
                guard s.reachable else {
                    out[item.id] = .failure(.timeout(function: "read"))
                    continue
                }
                out[item.id] = .success(item.kind.isBit ? .bits((0..<item.count).map { s.coils[item.address + $0] ?? false })
                                                        : .registers((0..<item.count).map { s.registers[item.address + $0] ?? 0 }))
            }
            return out
        }
        timeline.append("poll")
        return results
    }
}

/// Records data and statuses: entries `data <topic> <payload>`, `status <device> <state>`.
final class RecordingPublisher: DataPublisher {
    let timeline: Timeline
    let connected = Mutex(true)
    init(timeline: Timeline) { self.timeline = timeline }

    func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async {
        timeline.append("data \(topic) \(String(decoding: payload, as: UTF8.self))")
    }
    func publishStatus(_ device: String, _ state: DeviceHealth.State) async { timeline.append("status \(device) \(state.rawValue)") }
    var brokerConnected: Bool { get async { connected.withLock { $0 } } }
}

/// Records answers: entries `answer <topic> <json>` (topic: the response topic or the fallback).
final class RecordingAnswerer: CommandAnswerer {
    let timeline: Timeline
    init(timeline: Timeline) { self.timeline = timeline }

    func answer(_ answer: CommandAnswer, to message: MQTTMessage, fallback: String?, logger: Logger) async {
        guard let topic = message.properties.responseTopic ?? fallback else { return }
        timeline.append("answer \(topic) \(answer.json())")
    }
}

/// One Modbus device's commander on fakes: the bus, the broker side and the clock.
struct CommanderRig {
    let timeline = Timeline()
    let clock = TestClock()
    let bus: FakeBus
    let publisher: RecordingPublisher
    let board = StatusBoard()
    let journal: PulseJournal
    let commander: DeviceCommander
    let plan: GatewayPlan
    /// The runtime's dispatcher over this one device (no features).
    let dispatcher: CommandDispatcher
    /// This one device as the runtime would run it (for the features).
    let units: RunningUnits

    /// `points`: the `[[device.point]]` tables of device `d` (unit 1), on a TCP bus.
    init(points: String, gateway: String = "") throws {
        let plan = GatewayPlan(try ConfigLoader.parse("""
            [gateway]
            id = "x"
            \(gateway)
            [[bus]]
            name = "b"
            type = "tcp"
            host = "127.0.0.1"
            [[device]]
            name = "d"
            bus = "b"
            \(points)
            """))
        self.plan = plan
        bus = FakeBus(timeline: timeline, clock: clock)
        publisher = RecordingPublisher(timeline: timeline)
        let logger = Logger(label: "test")
        journal = PulseJournal.open(directory: try TestEnvironment.makeTemporaryDirectory("commander"), hasPulses: true, logger: logger).journal
        let runner = CommandRunner(topics: plan.topics, gateway: plan.configuration.gateway, signing: nil,
                                   clockSync: ClockSync(logger: logger, probe: { true }), clock: clock,
                                   answerer: RecordingAnswerer(timeline: timeline), telemetry: nil)
        let services = UnitServices(topics: plan.topics, gateway: plan.configuration.gateway, publisher: publisher, commands: runner,
                                    board: board, journal: journal, clock: clock, telemetry: nil, executor: nil)
        commander = DeviceCommander(device: plan.devices[0].settings, bus: bus, timeoutMs: plan.devices[0].bus.timeoutMs,
                                    services: services, logger: logger)
        units = RunningUnits(.init(plan: plan, services: services, commanders: ["d": commander]))
        dispatcher = CommandDispatcher(topics: plan.topics, units: units, features: [], logger: logger)
        board.set("d", .online)
    }

    /// Submits a `/set` of `point` with `payload`, received now.
    @discardableResult
    func set(_ point: String, _ payload: String) -> Bool { set(point, Array(payload.utf8)) }

    @discardableResult
    func set(_ point: String, _ payload: [UInt8]) -> Bool {
        commander.submit(.set(message(point, payload), point: point, receivedAt: clock.now))
    }

    func message(_ point: String, _ payload: [UInt8], device: String = "d") -> MQTTMessage {
        MQTTMessage(topic: plan.topics.base + "/\(device)/\(point)/set", payload: payload, qos: .atLeastOnce,
                    retain: false, properties: MQTTProperties())
    }

    /// Waits for the `n`th answer and returns it.
    func answer(_ n: Int) async throws -> String {
        try await timeline.await(n, startingWith: "answer ")
        return timeline.entries.filter { $0.hasPrefix("answer ") }[n - 1]
    }
}
