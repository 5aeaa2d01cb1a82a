import Crypto
import GatewayConfig
import Logging
import Synchronization

/// Signed commands (`[gateway] command_key_file`): a command must carry an HMAC-SHA256 of what it
/// asks, made with the site's key, so a leaked broker password alone unlocks nothing.
///
/// The payload is JSON `{"value": ..., "ts": <unix ms>, "id": "...", "sig": "<hex or base64>"}`;
/// `sig` is HMAC-SHA256 with the key over the canonical string
///
///     <topic> "\n" <value> "\n" <ts> "\n" <id>
///
/// (UTF-8, no trailing newline), where `<topic>` is the `/set` topic the command is published
/// to, `<value>` is `true` or `false` for a bool, the number exactly as written in the payload,
/// or the string itself (not JSON-quoted or escaped), `<ts>` the decimal `ts` and `<id>` the
/// `id` (a number id as written). None of them can hold a newline (control characters are
/// refused in values and ids), so the string is unambiguous.
///
/// A command is accepted when the signature is right (compared in constant time), `ts` is within
/// `command_max_age_ms` of the gateway's clock either way (default 30 s), and its `id` has not
/// been seen within that window (gateway-wide). Otherwise it is refused with one answer that
/// does not say which check failed; the gateway's log says.
public struct CommandSigner: Sendable {
    /// The key's bytes (swift-crypto's `SymmetricKey` is not `Sendable`; one is made per use).
    private let key: [UInt8]

    /// Keys shorter than this are refused at start.
    public static let minimumKeyBytes = 16

    public init(key: [UInt8]) {
        self.key = key
    }

    /// The bytes the signature covers.
    public static func canonical(topic: String, value: CommandRequest.Value, ts: Int64, id: String) -> [UInt8] {
        Array("\(topic)\n\(value.description)\n\(ts)\n\(id)".utf8)
    }

    /// The signature, lowercase hex.
    public func sign(topic: String, value: CommandRequest.Value, ts: Int64, id: String) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Self.canonical(topic: topic, value: value, ts: ts, id: id), using: SymmetricKey(data: key))
        return Self.hex(Array(mac))
    }

    /// True when `signature` (hex or base64) is the HMAC of the command; constant time in the
    /// signature's content.
    public func verify(topic: String, value: CommandRequest.Value, ts: Int64, id: String, signature: String) -> Bool {
        guard let mac = Self.decode(signature), mac.count == SHA256.byteCount else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: Self.canonical(topic: topic, value: value, ts: ts, id: id),
                                                       using: SymmetricKey(data: key))
    }

    /// A signed command's payload, ready to publish to `topic`.
    public func payload(topic: String, value: CommandRequest.Value, ts: Int64, id: String) -> String {
        let json = switch value {
        case .bool(let b): b ? "true" : "false"
        case .number(let n): n
        case .text(let t): JSONValue.quoted(t)
        }
        return "{\"value\":\(json),\"ts\":\(ts),\"id\":\(JSONValue.quoted(id)),\"sig\":\"\(sign(topic: topic, value: value, ts: ts, id: id))\"}"
    }

    /// A fresh command id: 16 random hex digits.
    public static func newID() -> String { hex((0..<8).map { _ in UInt8.random(in: 0...255) }) }

    /// Now, in unix milliseconds (a signed command's `ts`).
    public static func now() -> Int64 { unixMilliseconds() }

    /// A command value as typed on a command line: `true`/`false`, a JSON number, or else text.
    public static func value(argument: String) -> CommandRequest.Value {
        switch try? JSONValue.parse(Array(argument.utf8)) {
        case .bool(let b)?: .bool(b)
        case .number(let n)?: .number(n)
        case .string(let s)?: .text(s)
        default: .text(argument)
        }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Hex (either case) or base64 (standard or URL alphabet, padding optional).
    static func decode(_ s: String) -> [UInt8]? {
        let u = Array(s.utf8)
        if u.count == SHA256.byteCount * 2, let bytes = fromHex(u) { return bytes }
        return fromBase64(u)
    }

    private static func fromHex(_ u: [UInt8]) -> [UInt8]? {
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        var out = [UInt8]()
        var i = 0
        while i + 1 < u.count {
            guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func fromBase64(_ u: [UInt8]) -> [UInt8]? {
        var bits: UInt32 = 0, count = 0
        var out = [UInt8]()
        var padding = 0
        for c in u {
            let v: UInt32
            switch c {
            case 65...90: v = UInt32(c - 65)
            case 97...122: v = UInt32(c - 71)
            case 48...57: v = UInt32(c + 4)
            case 43, 45: v = 62          // + or -
            case 47, 95: v = 63          // / or _
            case 61: padding += 1; continue
            default: return nil
            }
            guard padding == 0 else { return nil }   // nothing after '='
            bits = bits << 6 | v
            count += 6
            if count >= 8 {
                count -= 8
                out.append(UInt8(truncatingIfNeeded: bits >> UInt32(count)))
            }
        }
        return padding <= 2 ? out : nil
    }
}

/// The checks a signed command passes before anything else happens to it: signature, age, and
/// an id not seen before. One per gateway (ids are remembered gateway-wide); the key can be
/// replaced by a reload.
///
/// - An id is remembered from its arrival until `command_max_age_ms` later by the monotonic
///   clock, never by the wall clock, which may step at any time (NTP, a Pi without a clock).
/// - When an id is forgotten, its `ts` becomes the floor: no `ts` at or before it is accepted
///   again, so a wall clock stepped back cannot make a forgotten command fresh again.
/// - Ids and the floor are kept in `state_dir` (``CommandIDFile``) and read at start; what an
///   earlier run left is remembered for a whole window from this start.
/// - A command refused for any other reason (unknown device, device restarting, queue full,
///   stale, not writable) whose signature is right spends its id too (``spend(_:topic:now:)``):
///   a refused command cannot be replayed later, when it would be accepted.
final class SignedCommands: Sendable {
    private struct Seen: Sendable {
        var ts: Int64
        /// When it arrived (or when this run started, for ids an earlier run left).
        var arrived: ContinuousClock.Instant
    }
    private struct State: Sendable {
        var signer: CommandSigner
        var maxAgeMs: Int64
        var seen: [String: Seen] = [:]
        /// No `ts` at or before this is accepted: the newest `ts` of an id forgotten, and after
        /// the window grew, the start of the old window.
        var floor: Int64 = .min
    }
    private let state: Mutex<State>
    /// Where ids are kept across restarts; nil: in memory only.
    private let file: CommandIDFile?

    /// At most this many ids are remembered; past it (more than 33 signed commands a second for
    /// a whole window of 5 minutes) new commands are refused rather than an id forgotten early.
    static let capacity = 10_000
    /// The one answer to every refused signed command.

    /// `stateDirectory`: where the ids are kept (nil: in memory only, for tests).
    init(key: [UInt8], maxAgeMs: Int, stateDirectory: String?, logger: Logger = Logger(label: "gateway"),
         now: ContinuousClock.Instant = .now) {
        var s = State(signer: CommandSigner(key: key), maxAgeMs: Int64(maxAgeMs))
        if let stateDirectory {
            let (file, contents) = CommandIDFile.open(directory: stateDirectory, logger: logger)
            self.file = file
            s.floor = contents.floor
            // Bounded: the newest ids by ts; the rest only raise the floor.
            let kept = contents.ids.sorted { $0.value > $1.value }
            for (id, ts) in kept.prefix(Self.capacity) { s.seen[id] = Seen(ts: ts, arrived: now) }
            if let dropped = kept.dropFirst(Self.capacity).first { s.floor = max(s.floor, dropped.value) }
            if !contents.ids.isEmpty || contents.floor != .min {
                logger.info("signed commands: \(s.seen.count) ids an earlier run saw are remembered for \(maxAgeMs) ms")
            }
        } else {
            file = nil
        }
        state = Mutex(s)
    }

    /// A reload's key and window. The ids seen are kept, so a reload never opens a replay: a
    /// shorter window applies at once (an id it forgets is one whose `ts` it refuses anyway); a
    /// longer one refuses every `ts` from before the old window, whose ids may be forgotten.
    func update(key: [UInt8], maxAgeMs: Int, now: Int64) {
        state.withLock { s in
            s.signer = CommandSigner(key: key)
            let window = Int64(maxAgeMs)
            if window > s.maxAgeMs { s.floor = max(s.floor, now - s.maxAgeMs) }
            s.maxAgeMs = window
        }
    }

    /// Why `request` on `topic` is not accepted (for the log), or nil when it is; an accepted
    /// id is remembered (and handed to the file: await ``flushed()`` before acting on it).
    /// `now`: the wall clock (unix ms), against `ts`; `monotonic`: when ids are forgotten.
    func check(_ request: CommandRequest, topic: String, now: Int64, monotonic: ContinuousClock.Instant = .now) -> String? {
        guard let sig = request.sig, let ts = request.ts, let id = request.id else {
            return "unsigned (a signed command has value, ts, id and sig)"
        }
        return state.withLock { s -> String? in
            guard s.signer.verify(topic: topic, value: request.value, ts: ts, id: id, signature: sig) else { return "wrong signature" }
            forget(&s, monotonic: monotonic)
            guard s.seen[id] == nil else { return "id '\(id)' already used (a replay)" }
            guard abs(now - ts) <= s.maxAgeMs else { return "ts \(ts) is \(now - ts) ms from now (window \(s.maxAgeMs) ms)" }
            guard ts > s.floor else { return "ts \(ts) is not after \(s.floor), the ts of a command already forgotten (the clock stepped back?)" }
            guard s.seen.count < Self.capacity else { return "too many signed commands in the window to remember their ids" }
            remember(&s, id: id, ts: ts, monotonic: monotonic)
            return nil
        }
    }

    /// A command refused before or after the checks (unknown device or point, restarting, busy,
    /// stale...): when `payload` is a command signed with the key for `topic`, its id is spent,
    /// so it cannot be replayed later when it would be accepted. Whatever its `ts`.
    func spend(_ payload: [UInt8], topic: String, now monotonic: ContinuousClock.Instant = .now) {
        guard let request = try? CommandRequest.parse(payload), let sig = request.sig, let ts = request.ts, let id = request.id else { return }
        state.withLock { s in
            guard s.signer.verify(topic: topic, value: request.value, ts: ts, id: id, signature: sig) else { return }
            forget(&s, monotonic: monotonic)
            guard s.seen[id] == nil, s.seen.count < Self.capacity else { return }
            remember(&s, id: id, ts: ts, monotonic: monotonic)
        }
    }

    /// Returns once every id remembered so far is on storage (at once without a file).
    func flushed() async {
        await file?.flushed()
    }

    /// Ids arrived more than a window ago are forgotten; their newest `ts` becomes the floor.
    private func forget(_ s: inout State, monotonic: ContinuousClock.Instant) {
        let window = Duration.milliseconds(s.maxAgeMs)
        var floor = s.floor
        s.seen = s.seen.filter { _, seen in
            if monotonic - seen.arrived <= window { return true }
            floor = max(floor, seen.ts)
            return false
        }
        if floor != s.floor {
            s.floor = floor
            guard let file else { return }
            file.append("floor \(floor)")
            if file.wantsRewrite(live: s.seen.count) { file.rewrite(.init(ids: s.seen.mapValues(\.ts), floor: floor)) }
        }
    }

    private func remember(_ s: inout State, id: String, ts: Int64, monotonic: ContinuousClock.Instant) {
        s.seen[id] = Seen(ts: ts, arrived: monotonic)
        guard let file else { return }
        file.append("\(ts) \(id)")
        if file.wantsRewrite(live: s.seen.count) { file.rewrite(.init(ids: s.seen.mapValues(\.ts), floor: s.floor)) }
    }
}

extension SignedCommands {
    /// How far a signed command's `ts` may be from now: `command_max_age_ms`, 30 s by default.
    static func maxAgeMs(_ g: GatewaySettings) -> Int { g.commandMaxAgeMs ?? 30_000 }
}
