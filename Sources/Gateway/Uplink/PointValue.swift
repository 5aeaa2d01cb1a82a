#if canImport(Glibc)
import Glibc
#endif
import GatewayConfig
import Modbus

/// A point's value, converted from registers and ready to publish.
public enum PointValue: Sendable, Equatable {
    case bool(Bool)
    case number(Double, integer: Bool)
    case text(String)

    /// Plain payload: `21.5`, `true`, `open`.
    public var plain: String {
        switch self {
        case .bool(let b): b ? "true" : "false"
        case .number(let d, _): Scaling.format(d)
        case .text(let s): s
        }
    }

    /// JSON literal of the value.
    public var json: String {
        switch self {
        case .bool(let b): b ? "true" : "false"
        case .number(let d, _): d.isFinite ? Scaling.format(d) : "null"
        case .text(let s): JSONValue.quoted(s)
        }
    }

    var number: Double? { if case .number(let d, _) = self { d } else { nil } }
}

extension PointSettings {
    /// Converts what the poll read for this point: type, order, bit, scale/offset, then `map`.
    public func value(from result: ReadResult) throws(ModbusError) -> PointValue {
        let raw: ModbusValue
        switch result {
        case .bits(let bits):
            guard let b = bits.first else { throw .invalidArgument("no bit read") }
            raw = .bool(b)
        case .registers(let regs):
            if let bit {
                guard let r = regs.first else { throw .invalidArgument("no register read") }
                raw = .bool(RegisterCodec.decodeBit(r, bit: bit))
            } else {
                raw = try RegisterCodec.decode(regs, as: dataType, order: registerOrder)
            }
        }
        if !map.isEmpty {
            let key: Int64? = switch raw {
            case .bool(let b): b ? 1 : 0
            case .int(let i): i
            case .uint(let u): u <= UInt64(Int64.max) ? Int64(u) : nil
            default: nil
            }
            if let key, let name = map[key] { return .text(name) }
            // An unmapped raw value is published as the number, so nothing is hidden.
        }
        switch scaling.apply(raw) {
        case .bool(let b): return .bool(b)
        case .int(let i): return .number(Double(i), integer: true)
        case .uint(let u): return .number(Double(u), integer: true)
        case .double(let d): return .number(d, integer: false)
        case .string(let s): return .text(s)
        }
    }
}

/// Decides when a point's value is published: on change (beyond the point's deadband for
/// numbers) and every `refresh` even when unchanged. Holds only what was published: the point's
/// settings are passed in, not copied into each filter (48 bytes a point, not 80).
public struct ChangeFilter: Sendable {
    private(set) var last: PointValue?
    private(set) var lastPublished: ContinuousClock.Instant?

    public init() {}

    /// True when `value` read at `now` should be published (and records it as published).
    public mutating func shouldPublish(_ value: PointValue, now: ContinuousClock.Instant, deadband: Double, refresh: Duration?) -> Bool {
        var publish: Bool
        if let last {
            if let a = last.number, let b = value.number, deadband > 0 {
                publish = abs(a - b) >= deadband - 1e-12
            } else {
                publish = last != value
            }
        } else {
            publish = true
        }
        if !publish, let refresh, let at = lastPublished, now - at >= refresh { publish = true }
        if publish {
            last = value
            lastPublished = now
        }
        return publish
    }

    /// Records `value` as published at `now` by someone else (a command's read-back), so that
    /// the next poll does not publish it again.
    public mutating func learn(_ value: PointValue, now: ContinuousClock.Instant) {
        last = value
        lastPublished = now
    }

    /// Forgets what was published: the next value is published whatever it is (after Home
    /// Assistant's restart, every current value is sent again).
    public mutating func forget() {
        last = nil
        lastPublished = nil
    }
}

// MARK: - Payloads of value topics (the uplink and the read-backs of commands)

/// Wall-clock unix milliseconds (for JSON `ts`; commands' age is judged against it).
func unixMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// The payload of a value topic, the same for every device kind (polled, read back after a
/// command, sent by a serial device): the value alone (`format = "plain"`), or JSON with the
/// value, its unit when the point has one, and the time it was read.
struct ValuePayload: Sendable, Equatable {
    var value: PointValue
    var format: ValueFormat
    var unit: String?
    /// Unix milliseconds (JSON only).
    var ts: Int64

    init(_ value: PointValue, format: ValueFormat, unit: String? = nil, ts: Int64 = unixMilliseconds()) {
        self.value = value
        self.format = format
        self.unit = unit
        self.ts = ts
    }

    /// A Modbus point's value, in the point's format (else the gateway's).
    init(_ value: PointValue, point: PointSettings, gateway: GatewaySettings) {
        self.init(value, format: point.format ?? gateway.format, unit: point.unit)
    }

    var bytes: [UInt8] {
        if format == .plain { return Array(value.plain.utf8) }
        var s = "{\"value\":\(value.json)"
        if let unit { s += ",\"unit\":\(JSONValue.quoted(unit))" }
        return Array((s + ",\"ts\":\(ts)}").utf8)
    }
}
