import GatewayConfig
import Logging
import MQTT
import Synchronization

/// What one fail-safe write did.
struct FailsafeWrite: Sendable, Equatable {
    enum Outcome: Sendable, Equatable {
        case written(at: Int64)
        /// Not tried: the device is not online (tried again when it is, while the broker is away).
        case deviceOffline
        /// Tried and failed (tried again a second later).
        case failed(String)
        /// The value does not fit the point: never written (said once).
        case refused(String)

        var kind: String {
            switch self {
            case .written: "written"
            case .deviceOffline: "offline"
            case .failed: "failed"
            case .refused: "refused"
            }
        }
    }
    var device: String
    var point: String
    var index: Int
    var value: String
    var outcome: Outcome
}

/// Fail-safe states: a site decides what its barriers and turnstiles do when the broker is gone
/// (a barrier `free` so people can leave, a turnstile `locked`). Per writable point
/// `failsafe = <value>`, with `failsafe_after_s` in `[gateway]` or per device:
/// - when the broker has been unreachable that long, each such point gets its value written
///   once (through its device's commander, in line with commands and pulses), logged at error
///   level;
/// - a device that is offline then gets it when it comes back (tried every second), as long as
///   the broker is still away; never once the broker is back, and never while connected;
/// - when the broker is back, `<base>/failsafe` says what was written (QoS 1, retained: it
///   stays as the account of the last outage):
///   `{"broker_away_ms":..., "written":[{"device":...,"point":...,"value":...,"ts":...}]}`;
/// - with `failsafe_on_stop = true`, a graceful stop writes them too.
///
/// Nothing runs while the broker is connected: a timer task exists only during an outage.
final class Failsafe: Sendable {
    /// A device's fail-safe points, as the runtime runs them now (a reload may change them).
    struct Target: Sendable {
        let commander: DeviceCommander
        let device: String
        let points: [Int]
        /// nil: only on a graceful stop (`failsafe_on_stop` without `failsafe_after_s`).
        let after: Duration?
    }

    private struct State: Sendable {
        var timer: Task<Void, Never>?
        var awaySince: ContinuousClock.Instant?
        var written: [FailsafeWrite] = []
    }
    private let state = Mutex(State())
    private let client: MQTTClient
    private let topics: TopicLayout
    private let logger: Logger
    /// Where the countdown takes its time (``SystemClock`` when running).
    private let clock: any GatewayClock
    /// How often an offline device (or a failed write) is tried again during an outage.
    static let retry = Duration.seconds(1)

    init(client: MQTTClient, topics: TopicLayout, logger: Logger, clock: any GatewayClock = SystemClock()) {
        self.client = client
        self.topics = topics
        self.clock = clock
        var l = logger
        l[metadataKey: "component"] = "failsafe"
        self.logger = l
    }

    /// The fail-safe points of the devices in `units`.
    static func targets(_ plan: GatewayPlan, commanders: [String: DeviceCommander]) -> [Target] {
        plan.devices.compactMap { d in
            let points = d.settings.points.indices.filter { d.settings.points[$0].failsafe != nil }
            guard !points.isEmpty, let commander = commanders[d.settings.name] else { return nil }
            let after = d.settings.failsafeAfterSeconds ?? plan.configuration.gateway.failsafeAfterSeconds
            return Target(commander: commander, device: d.settings.name, points: points, after: after.map { .seconds($0) })
        }
    }

    /// The broker is gone: from now, count down. `targets` is asked again each round (a reload
    /// during the outage counts).
    func brokerLost(targets: @escaping @Sendable () -> [Target]) {
        let start = clock.now
        guard targets().contains(where: { $0.after != nil }) else { return }
        state.withLock { s in
            guard s.timer == nil else { return }
            s.awaySince = start
            s.written = []
            // An unstructured task: it lives exactly as long as the outage (cancelled when the
            // broker is back), so a connected gateway holds none.
            s.timer = Task { await self.countDown(from: start, targets: targets) }
        }
    }

    /// The broker is back: no more fail-safe writes; what was written is published.
    func brokerBack() async {
        let (timer, since) = state.withLock { s in
            defer { s.timer = nil; s.awaySince = nil }
            return (s.timer, s.awaySince)
        }
        guard let timer, let since else { return }
        timer.cancel()
        await timer.value
        logger.info("broker reached: fail-safe countdown over")
        let written = state.withLock { s in
            defer { s.written = [] }
            return s.written
        }
        guard !written.isEmpty else { return }
        let away = clock.now - since
        logger.notice("broker back after \(away): the fail-safe had written \(written.map { "\($0.device)/\($0.point)=\($0.value)" }.joined(separator: ", "))")
        try? await client.enqueue(to: topics.failsafe, payload: Self.report(written, away: away), qos: .atLeastOnce, retain: true)
    }

    /// The gateway stops: no more countdown (nothing published).
    func cancel() async {
        let timer = state.withLock { s in
            defer { s.timer = nil; s.awaySince = nil }
            return s.timer
        }
        timer?.cancel()
        await timer?.value
    }

    /// `failsafe_on_stop`: every fail-safe value written now, connected or not.
    func writeOnStop(_ targets: [Target]) async {
        var written: [FailsafeWrite] = []
        for t in targets {
            for w in await t.commander.failsafe(t.points, whileBrokerAway: false) {
                log(w, why: "gateway stopping")
                if case .written = w.outcome { written.append(w) }
            }
        }
        if !written.isEmpty {
            try? await client.enqueue(to: topics.failsafe, payload: Self.report(written, away: nil), qos: .atLeastOnce, retain: true)
        }
    }

    private func countDown(from start: ContinuousClock.Instant, targets: @Sendable () -> [Target]) async {
        var done: [String: Set<Int>] = [:]
        // Offline and failed are said once per point and outage, not every second.
        var said: Set<String> = []
        while !Task.isCancelled {
            var next: ContinuousClock.Instant?
            for t in targets() {
                guard let after = t.after else { continue }
                let due = start + after
                let remaining = t.points.filter { !(done[t.device]?.contains($0) ?? false) }
                guard !remaining.isEmpty else { continue }
                guard clock.now >= due else {
                    next = min(next ?? due, due)
                    continue
                }
                for w in await t.commander.failsafe(remaining, whileBrokerAway: true) where !Task.isCancelled {
                    switch w.outcome {
                    case .written:
                        done[t.device, default: []].insert(w.index)
                        state.withLock { $0.written.append(w) }
                    case .refused:
                        done[t.device, default: []].insert(w.index)
                    case .deviceOffline, .failed:
                        next = min(next ?? clock.now + Self.retry, clock.now + Self.retry)
                    }
                    let key = "\(w.device)/\(w.point)/\(w.outcome.kind)"
                    if said.insert(key).inserted { log(w, why: "broker unreachable for \(clock.now - start)") }
                }
            }
            guard let next else { return }   // everything written
            do { try await clock.sleep(until: next) } catch { return }
        }
    }

    private func log(_ w: FailsafeWrite, why: String) {
        var l = logger
        l[metadataKey: "device"] = "\(w.device)"
        l[metadataKey: "point"] = "\(w.point)"
        switch w.outcome {
        case .written:
            l.error("FAIL-SAFE: wrote \(w.point) = \(w.value) (\(why))")
        case .deviceOffline:
            l.warning("fail-safe: device offline, \(w.point) = \(w.value) is written when it is back (while the broker is away)")
        case .failed(let e):
            l.warning("fail-safe: writing \(w.point) = \(w.value) failed: \(e); trying again")
        case .refused(let e):
            l.error("fail-safe: \(w.point) = \(w.value) cannot be written: \(e)")
        }
    }

    static func report(_ written: [FailsafeWrite], away: Duration?) -> [UInt8] {
        let items = written.map { w -> String in
            var ts = 0 as Int64
            if case .written(let at) = w.outcome { ts = at }
            return "{\"device\":\(JSONValue.quoted(w.device)),\"point\":\(JSONValue.quoted(w.point)),\"value\":\(JSONValue.quoted(w.value)),\"ts\":\(ts)}"
        }
        var s = "{"
        if let away { s += "\"broker_away_ms\":\(away.nanoseconds / 1_000_000)," }
        else { s += "\"reason\":\"gateway stopping\"," }
        return Array((s + "\"written\":[" + items.joined(separator: ",") + "]}").utf8)
    }
}

/// The fail-safe as a feature: it counts while the broker is away (from the start, until the
/// first connect), over the devices running at the time; a graceful stop ends the countdown and,
/// with `failsafe_on_stop`, writes every fail-safe value once polling has stopped.
struct FailsafeFeature: GatewayFeature {
    let failsafe: Failsafe
    let units: RunningUnits

    func unitsStarted() { failsafe.brokerLost { [units] in units.failsafeTargets() } }
    func brokerConnected() async { await failsafe.brokerBack() }
    func brokerLost(reason: MQTTDisconnectReason) async { failsafe.brokerLost { [units] in units.failsafeTargets() } }
    func stopping() async { await failsafe.cancel() }
    func pollingStopped() async {
        guard units.current.plan.configuration.gateway.failsafeOnStop else { return }
        await failsafe.writeOnStop(units.failsafeTargets())
    }
}
