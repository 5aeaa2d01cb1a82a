import Foundation
import MQTT
import Synchronization

/// An MQTT client that records every message under its filters (retained and live), with a
/// wake-up at each arrival: how end-to-end tests watch the gateway. ``waitUntil(_:timeout:log:_:)``
/// is the one bounded wait of the gateway tests.
public final class MQTTObserver: Sendable {
    public let client: MQTTClient
    /// Every message received, in arrival order, with its properties.
    public let seen = Mutex<[MQTTMessage]>([])
    /// Messages seen per topic: a count a wait condition can read at every arrival without
    /// scanning everything seen (10,000 answers made that scan quadratic).
    private let counts = Mutex<[String: Int]>([:])
    private let arrivals = Signal()

    /// Connects to the broker on `port` (loopback) and subscribes to `filters` at QoS 1.
    /// `reconnect`: the client comes back by itself when the broker restarts. `receiveMaximum`:
    /// how many QoS 1 messages the broker may have in flight to it (beyond that it queues them).
    public init(port: Int, filters: [String], reconnect: Bool = false, name: String = "observer",
                receiveMaximum: UInt16? = nil) async throws {
        var c = MQTTConfiguration(host: "127.0.0.1", port: port, clientIdentifier: "\(name)-\(UUID().uuidString.prefix(6))")
        if let receiveMaximum { c.receiveMaximum = receiveMaximum }
        c.reconnect = reconnect ? MQTTReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(300)) : nil
        client = MQTTClient(configuration: c)
        try await client.connect()
        let stream = client.messages
        Task { [weak self] in
            for await m in stream {
                self?.seen.withLock { $0.append(m) }
                self?.counts.withLock { $0[m.topic, default: 0] += 1 }
                self?.arrivals.push()
            }
        }
        _ = try await client.subscribe(filters.map { MQTTSubscription($0, qos: .atLeastOnce) })
    }

    /// Waits until `condition` holds, re-checking at every arrival, for at most `timeout`; the
    /// error names `what` and ends with `log()` (a process's last lines, say).
    public func waitUntil(_ what: String, timeout: Duration = .seconds(20), log: () -> String = { "" },
                          _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            let generation = arrivals.generation
            if condition() { return }
            guard ContinuousClock.now < deadline else {
                let tail = log()
                throw FixtureError("timed out after \(timeout) waiting for \(what)\(tail.isEmpty ? "" : "\n\(tail)")")
            }
            await arrivals.wait(after: generation, until: deadline)
        }
    }

    /// The payloads seen on `topic`, as text, in order.
    public func payloads(_ topic: String) -> [String] { seen.withLock { $0.filter { $0.topic == topic }.map(\.payloadString) } }
    public func count(_ topic: String) -> Int { counts.withLock { $0[topic] ?? 0 } }
    public func last(_ topic: String) -> [UInt8]? { seen.withLock { $0.last { $0.topic == topic }?.payload } }
    /// "topic=payload" of everything seen, for failure messages.
    public var summary: String { seen.withLock { $0.map { "\($0.topic)=\($0.payloadString)" }.joined(separator: ", ") } }
}

/// Wakes waiters when something arrives. A generation counter prevents lost wake-ups: a waiter
/// that read generation g returns at once if anything arrived since.
public final class Signal: Sendable {
    private let state = Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))

    public init() {}

    public var generation: Int { state.withLock { $0.count } }

    public func push() {
        let ws = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.count += 1
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        ws.forEach { $0.resume() }
    }

    /// Returns when something arrives after `generation`, or at the deadline.
    public func wait(after generation: Int, until deadline: ContinuousClock.Instant) async {
        let timer = Task {
            try? await Task.sleep(until: deadline, clock: .continuous)
            self.push()
        }
        await withCheckedContinuation { c in
            let now = state.withLock { s -> Bool in
                if s.count != generation { return true }
                s.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
        timer.cancel()
    }
}
