import GatewayConfig
import Modbus
import MQTT

/// Why a command was refused: the text of the `{"ok": false, "error": ...}` answer.

/// What a `/set` payload asks for: plain (`true`, `ON`, `21.5`, `locked`) or JSON
/// `{"value": ..., "ts": <unix ms>, "id": "..."}`. Parsing checks the form only; whether the value
/// fits the point is ``PointSettings/writePlan(for:)``'s job.
public struct CommandRequest: Sendable, Equatable {
    /// `true`/`false`; a number as written (JSON number, or plain text to be read as the point
    /// needs); or text. The same kind of value a `failsafe` in `gateway.toml` holds.
    public typealias Value = ConfigScalar

    public var value: Value
    /// JSON `ts`: when the sender made the command, unix milliseconds.
    public var ts: Int64?
    /// JSON `id`: a repeated id is answered with the first result and not executed again.
    public var id: String?
    /// JSON `sig`: the signature of a signed command (``CommandSigner``).
    public var sig: String?

    public init(value: Value, ts: Int64? = nil, id: String? = nil, sig: String? = nil) {
        self.value = value
        self.ts = ts
        self.id = id
        self.sig = sig
    }

    /// Largest payload looked at; anything longer is refused unread.
    public static let maxPayload = 4096

    /// Commands (`/set`, `/get`) one device holds waiting at most; past that they are refused with
    /// an answer "busy" (a flood of commands never grows memory, and a command that would wait
    /// behind many others would run late anyway).
    public static let pendingPerDevice = 8

    public static func parse(_ payload: [UInt8]) throws(CommandRefusal) -> CommandRequest {
        guard payload.count <= maxPayload else { throw .badPayload("payload of \(payload.count) bytes is too long (at most \(maxPayload))") }
        guard let text = MQTTString.decodeUTF8(payload) else { throw .badPayload("payload is not valid UTF-8") }
        let trimmed = text.trimmingASCIIWhitespace()
        guard let first = trimmed.utf8.first else { throw .badPayload("empty payload") }
        if first == UInt8(ascii: "{") { return try parseJSON(payload) }
        if first == UInt8(ascii: "\"") {   // a bare JSON string, e.g. "locked"
            guard case .string(let s) = try? JSONValue.parse(payload) else { throw .badPayload("payload is not a valid JSON string") }
            return CommandRequest(value: .text(s))
        }
        guard !trimmed.hasControlCharacters else {
            throw .badPayload("payload contains control characters")
        }
        return CommandRequest(value: .text(trimmed))
    }

    private static func parseJSON(_ payload: [UInt8]) throws(CommandRefusal) -> CommandRequest {
        let json: JSONValue
        do { json = try JSONValue.parse(payload) } catch { throw .badPayload("\(error)") }
        guard case .object(let members) = json else { throw .badPayload("JSON payload must be an object") }
        var value: Value?
        var ts: Int64?
        var id: String?
        var sig: String?
        var seen: Set<String> = []
        for (key, v) in members {
            guard seen.insert(key).inserted else { throw .badPayload("JSON key '\(key)' appears twice") }
            switch key {
            case "value":
                switch v {
                case .bool(let b): value = .bool(b)
                case .number(let n): value = .number(n)
                case .string(let s):
                    guard !s.hasControlCharacters else { throw .badPayload("\"value\" contains control characters") }
                    value = .text(s)
                default: throw .badPayload("\"value\" must be a bool, a number or a string")
                }
            case "ts":
                guard case .number(let n) = v, let t = Int64(n), t >= 0 else {
                    throw .badPayload("\"ts\" must be a whole number of unix milliseconds")
                }
                ts = t
            case "id":
                switch v {
                case .string(let s) where !s.isEmpty && s.utf8.count <= 128 && !s.hasControlCharacters: id = s
                case .number(let n): id = n
                default: throw .badPayload("\"id\" must be a string of 1 to 128 bytes (no control characters) or a number")
                }
            case "sig":
                guard case .string(let s) = v, !s.isEmpty, s.utf8.count <= 128 else { throw .badPayload("\"sig\" must be a string (hex or base64)") }
                sig = s
            default:
                throw .badPayload("unknown JSON key '\(key)' (a command has \"value\", and optionally \"ts\", \"id\" and \"sig\")")
            }
        }
        guard let value else { throw .badPayload("JSON command has no \"value\"") }
        return CommandRequest(value: value, ts: ts, id: id, sig: sig)
    }
}

/// A checked write: what goes to the device for a command.
public struct WritePlan: Sendable, Equatable {
    public enum Data: Sendable, Equatable {
        case coil(Bool)
        case registers([UInt16])
    }

    public var data: Data
    public init(data: Data) { self.data = data }
    /// True for the released state (coil off, registers zero): the end of a pulse.
    public var isOff: Bool {
        switch data {
        case .coil(let b): !b
        case .registers(let r): r.allSatisfy { $0 == 0 }
        }
    }
}

extension PointSettings {
    /// The released state a pulse returns to: coil off, or zero in every register.
    public var offWrite: WritePlan {
        table == .coil ? WritePlan(data: .coil(false)) : WritePlan(data: .registers(Array(repeating: 0, count: width)))
    }

    /// Checks `value` against the point (writable, type, `map`, `min`/`max`, scaling) and returns
    /// what to write. Throws with the reason otherwise; nothing is written then.
    public func writePlan(for value: CommandRequest.Value) throws(CommandRefusal) -> WritePlan {
        guard writable else { throw .notWritable(point: name) }
        // Names from `map` (case-insensitive) stand for their raw value.
        if !map.isEmpty {
            let raw: Int64
            if case .text(let s) = value, let hit = map.first(where: { $0.value.lowercased() == s.lowercased() }) {
                raw = hit.key
            } else if let n = Self.integer(value), map[n] != nil {
                raw = n
            } else if type == .bool, let b = Self.boolean(value) {
                raw = b ? 1 : 0
            } else {
                let names = map.sorted { $0.key < $1.key }.map { "\($0.value) (\($0.key))" }.joined(separator: ", ")
                throw .badValue("'\(value)' is not a value of '\(name)': use one of \(names)")
            }
            return try encode(raw: type == .bool ? .bool(raw != 0) : .int(raw), asked: "\(value)")
        }
        if type == .bool {
            guard let b = Self.boolean(value) else { throw .badValue("'\(value)' is not a bool: use true/false, on/off or 1/0") }
            return try encode(raw: .bool(b), asked: "\(value)")
        }
        if type == .string {
            guard case .text(let s) = value else { throw .badValue("'\(value)' is not text") }
            return try encode(raw: .string(s), asked: s)
        }
        guard let number = Self.number(value), let d = number.doubleValue else {
            throw .badValue("'\(value)' is not a number")
        }
        if let min, d < min { throw .badValue("\(value) is below the minimum \(Scaling.format(min))") }
        if let max, d > max { throw .badValue("\(value) is above the maximum \(Scaling.format(max))") }
        let raw: ModbusValue
        do { raw = try scaling.invert(number, for: dataType) } catch { throw .badValue("\(error)") }
        return try encode(raw: raw, asked: "\(value)")
    }

    private func encode(raw: ModbusValue, asked: String) throws(CommandRefusal) -> WritePlan {
        if table == .coil {
            guard case .bool(let b) = raw else { throw .badValue("'\(asked)' is not a bool") }
            return WritePlan(data: .coil(b))
        }
        do {
            return WritePlan(data: .registers(try RegisterCodec.encode(raw, as: dataType, order: registerOrder)))
        } catch {
            throw .badValue("'\(asked)' does not fit \(type.rawValue): \(error)")
        }
    }

    static func boolean(_ v: CommandRequest.Value) -> Bool? {
        switch v {
        case .bool(let b): return b
        case .number(let s), .text(let s):
            switch s.lowercased() {
            case "true", "on", "1": return true
            case "false", "off", "0": return false
            default: return nil
            }
        }
    }

    static func integer(_ v: CommandRequest.Value) -> Int64? {
        switch v {
        case .bool: return nil
        case .number(let s), .text(let s): return isDecimal(s, integerOnly: true) ? Int64(s) : nil
        }
    }

    /// A number written in decimal (`-12`, `21.5`, `1e3`): no hex, `inf`, `nan` or stray text.
    static func number(_ v: CommandRequest.Value) -> ModbusValue? {
        switch v {
        case .bool: return nil
        case .number(let s), .text(let s):
            guard isDecimal(s, integerOnly: false) else { return nil }
            if let i = Int64(s) { return .int(i) }
            if let u = UInt64(s) { return .uint(u) }
            guard let d = Double(s), d.isFinite else { return nil }
            return .double(d)
        }
    }

    static func isDecimal(_ s: String, integerOnly: Bool) -> Bool {
        var it = s.utf8.makeIterator()
        var c = it.next()
        if c == UInt8(ascii: "-") || c == UInt8(ascii: "+") { c = it.next() }
        var digits = 0
        func isDigit(_ c: UInt8?) -> Bool { c.map { $0 >= 48 && $0 <= 57 } ?? false }
        while isDigit(c) { digits += 1; c = it.next() }
        if integerOnly { return digits > 0 && c == nil }
        if c == UInt8(ascii: ".") {
            c = it.next()
            while isDigit(c) { digits += 1; c = it.next() }
        }
        guard digits > 0 else { return false }
        if c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
            c = it.next()
            if c == UInt8(ascii: "-") || c == UInt8(ascii: "+") { c = it.next() }
            var exp = 0
            while isDigit(c) { exp += 1; c = it.next() }
            guard exp > 0 else { return false }
        }
        return c == nil
    }
}

extension String {
    func trimmingASCIIWhitespace() -> String {
        let u = Array(utf8)
        func space(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }
        guard let a = u.firstIndex(where: { !space($0) }), let b = u.lastIndex(where: { !space($0) }) else { return "" }
        return String(decoding: u[a...b], as: UTF8.self)
    }
}

/// The answer to a `/set` or `/get`, on Modbus and serial devices alike, with its one JSON
/// rendering: `{"ok":true,"value":...}`, `{"ok":true,"value":null,"readback_error":"..."}` (written,
/// but the read-back failed), `{"ok":false,"error":"..."}`; `note` adds `"note":"..."`.
public enum CommandAnswer: Sendable, Equatable {
    case ok(PointValue)
    case readBackFailed(String)
    case refused(CommandRefusal)

    /// The answer as logged and shown for a `secret = true` point: the value read back masked,
    /// and `sent` (what the command asked, as the refusal may quote it) wherever a reason holds it.
    func secretMasked(sent: [String]) -> CommandAnswer {
        switch self {
        case .ok: .ok(.text("(secret)"))
        case .readBackFailed(let why): .readBackFailed(sent.filter { !$0.isEmpty }.reduce(why) { $0.replacing($1, with: "(secret)") })
        case .refused(let refusal): .refused(.masked(refusal, sent: sent))
        }
    }

    public func json(note: String? = nil) -> String {
        var s = switch self {
        case .ok(let value): "{\"ok\":true,\"value\":\(value.json)"
        case .readBackFailed(let why): "{\"ok\":true,\"value\":null,\"readback_error\":\(JSONValue.quoted(why))"
        case .refused(let refusal): "{\"ok\":false,\"error\":\(JSONValue.quoted(refusal.reason))"
        }
        if let note { s += ",\"note\":\(JSONValue.quoted(note))" }
        return s + "}"
    }
}

/// Remembers command ids for 10 minutes so that a repeated id is answered with the first result
/// and not executed again (a QoS 1 duplicate must never pulse a door twice). Bounded in size.
public struct CommandIDCache<Answer: Sendable>: Sendable {
    public let lifetime: Duration
    public let capacity: Int
    private var answers: [String: (at: ContinuousClock.Instant, answer: Answer)] = [:]
    private var order: [(key: String, at: ContinuousClock.Instant)] = []
    private var head = 0

    public init(lifetime: Duration = .seconds(600), capacity: Int = 4096) {
        self.lifetime = lifetime
        self.capacity = capacity
    }

    public var count: Int { answers.count }

    public mutating func answer(for key: String, now: ContinuousClock.Instant) -> Answer? {
        expire(now: now)
        return answers[key]?.answer
    }

    public mutating func record(_ answer: Answer, for key: String, now: ContinuousClock.Instant) {
        expire(now: now)
        if answers[key] == nil {
            if answers.count >= capacity { evictOldest() }
            order.append((key, now))
        }
        answers[key] = (now, answer)
    }

    private mutating func expire(now: ContinuousClock.Instant) {
        while head < order.count, now - order[head].at >= lifetime { evictOldest() }
    }

    private mutating func evictOldest() {
        guard head < order.count else { return }
        answers[order[head].key] = nil
        head += 1
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }
}

extension String {
    /// C0 controls, DEL and C1 controls: refused in command values, escaped in logs.
    var hasControlCharacters: Bool { unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) } }

    /// The text with control characters escaped (`\n`, `\u{1B}`), for log lines: a command
    /// cannot forge a line of the log.
    var logSafe: String {
        guard hasControlCharacters || contains("\\") else { return self }
        var out = ""
        for u in unicodeScalars {
            switch u {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            case _ where u.value < 0x20 || (0x7F...0x9F).contains(u.value): out += "\\u{\(String(u.value, radix: 16, uppercase: true))}"
            default: out.unicodeScalars.append(u)
            }
        }
        return out
    }
}
