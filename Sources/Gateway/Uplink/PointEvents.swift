import GatewayConfig

/// Events that happen between polls: a passage counter's increments (`counter = true`) and a
/// flag the device holds until cleared (`latch = true`). Published on
/// `<base>/<device>/<point>/event` at QoS 1, not retained, each with `ts` (unix ms, when the
/// poll saw it):
///
///     {"event_type":"count","count":3,"ts":...}     the counter grew by 3 since the last poll
///     {"event_type":"reset","count":2,"ts":...}     it went down (a device reset): counting from 0 again
///     {"event_type":"set","ts":...}                 the latch was seen set
///
/// A count published at the first reading after a start, from the last reading an earlier run
/// kept (``CounterStore``), spans the time the gateway was down: it carries `"gap":true`.
///
/// The trackers here are pure (unit-tested); the device's poller holds one per such point.
enum PointEvent: Sendable, Equatable {
    case count(UInt64)
    case reset(count: UInt64)
    case set

    var type: String {
        switch self {
        case .count: "count"
        case .reset: "reset"
        case .set: "set"
        }
    }

    func payload(ts: Int64, gap: Bool = false) -> [UInt8] {
        let g = gap ? ",\"gap\":true" : ""
        let s = switch self {
        case .count(let n): "{\"event_type\":\"count\",\"count\":\(n)\(g),\"ts\":\(ts)}"
        case .reset(let n): "{\"event_type\":\"reset\",\"count\":\(n)\(g),\"ts\":\(ts)}"
        case .set: "{\"event_type\":\"set\",\"ts\":\(ts)}"
        }
        return Array(s.utf8)
    }

    /// The event types a point announces (Home Assistant's `event_types`).
    static func types(of p: PointSettings) -> [String] {
        if p.counter { return ["count", "reset"] }
        if p.latch { return ["set"] }
        return []
    }
}

/// A uint16 or uint32 counter: the increment since the last reading, counting one wrap-around
/// (65535 -> 2 is 3). A decrease that is not a plausible wrap (the way down is shorter than the
/// way round: 10 -> 0) is a device reset; the count starts again from the new value.
struct CounterTracker: Sendable, Equatable {
    let bits: Int
    private(set) var last: UInt64?

    /// `last`: the reading to count from (an earlier run's, or nil: the first reading is the baseline).
    init(bits: Int, last: UInt64? = nil) {
        self.bits = bits
        self.last = last
    }

    /// The event for `value` (nil: the first reading, or no change).
    mutating func observe(_ value: UInt64) -> PointEvent? {
        defer { last = value }
        guard let last, value != last else { return nil }
        if value > last { return .count(value - last) }
        let modulus = UInt64(1) << UInt64(bits)
        let forward = (value &+ modulus &- last) & (modulus - 1)
        return forward < modulus / 2 ? .count(forward) : .reset(count: value)
    }
}

/// A latched flag: an event each time it is seen set after having been seen clear (or at the
/// first reading, when it is already set: it happened while nobody looked).
struct LatchTracker: Sendable, Equatable {
    private(set) var seenSet = false

    mutating func observe(_ set: Bool) -> PointEvent? {
        defer { seenSet = set }
        return set && !seenSet ? .set : nil
    }

    /// The gateway cleared it on the device: the next time it is seen set is a new event.
    mutating func cleared() { seenSet = false }
}

extension PointSettings {
    /// Event tracking for this point, when it is a counter or a latch.
    var eventKind: EventKind? {
        if counter { return .counter(CounterTracker(bits: type == .uint16 ? 16 : 32)) }
        if latch { return .latch(LatchTracker()) }
        return nil
    }
}

enum EventKind: Sendable, Equatable {
    case counter(CounterTracker)
    case latch(LatchTracker)

    /// A latch the gateway cleared on the device (no-op for a counter).
    mutating func latchCleared() {
        if case .latch(var l) = self { l.cleared(); self = .latch(l) }
    }

    /// A counter's last reading (nil for a latch, or before the first).
    var lastCount: UInt64? {
        if case .counter(let c) = self { c.last } else { nil }
    }

    /// The event for a new reading of the point.
    mutating func observe(_ value: PointValue) -> PointEvent? {
        switch (self, value) {
        case (.counter(var c), .number(let d, _)) where d >= 0 && d < 18_446_744_073_709_551_616:
            let e = c.observe(UInt64(d))
            self = .counter(c)
            return e
        case (.latch(var l), .bool(let b)):
            let e = l.observe(b)
            self = .latch(l)
            return e
        default:
            return nil
        }
    }
}
