import MQTT

/// The checks every `/set` passes before anything is written, on Modbus and serial devices
/// alike, in this order: retained flag; the target (unknown, not writable); payload form;
/// signature (when the point must be signed); repeated id (the first answer again, nothing
/// executed); freshness (`command_max_age_ms` against `ts`, MQTT 5 message expiry).
///
/// No MQTT, bus or clock inside: the caller passes the time, executes what ``admit`` lets
/// through, and hands its answer to ``finish``. One per device, owned by its command job loop
/// (it remembers the ids of that device's recent commands).
struct CommandPipeline: Sendable {
    /// What to do with one command.
    enum Admission<Target> {
        /// Answer this refusal; nothing is executed. `why`: what failed, for the log only (a
        /// refused signature gets one answer whatever failed).
        case refuse(CommandRefusal, request: CommandRequest?, why: String? = nil)
        /// The id was seen before: answer the first answer again; nothing is executed.
        case repeated(CommandAnswer, request: CommandRequest)
        /// Execute it, then call ``finish(_:request:answer:now:)``.
        case execute(Target, CommandRequest)
    }

    /// `command_max_age_ms` (nil: `ts` is not judged).
    var maxAgeMs: Int?
    /// Signed commands (`command_key_file`); nil when commands are not signed.
    var signing: SignedCommands?
    private var ids = CommandIDCache<CommandAnswer>()

    init(maxAgeMs: Int?, signing: SignedCommands?) {
        self.maxAgeMs = maxAgeMs
        self.signing = signing
    }

    /// Decides on `message`, a command for `name` (a point or serial command), received at
    /// `receivedAt`; `now` and `unixNow` are the time it is looked at; `clockTrusted`: whether
    /// a `ts` may be judged by `unixNow` (``ClockSync``; asked only of timed commands). A refusal of a command
    /// with an id is remembered, so its repeat gets the same answer; a refused signature is not
    /// (anyone could otherwise block the id a genuine command will use).
    mutating func admit<Target>(_ message: MQTTMessage, name: String, receivedAt: ContinuousClock.Instant,
                                now: ContinuousClock.Instant, unixNow: Int64, clockTrusted: () -> Bool = { true },
                                target: () throws(CommandRefusal) -> Target,
                                mustBeSigned: (Target) -> Bool) -> Admission<Target> {
        var request: CommandRequest?
        do throws(CommandRefusal) {
            // A retained command would fire again on every reconnect.
            guard !message.retain else { throw .retained }
            let t = try target()
            let req = try CommandRequest.parse(message.payload)
            request = req
            // Signed commands and `command_max_age_ms` judge `ts` by the system clock: not
            // before it has been set (a Pi boots with the time of its last shutdown).
            let signed = signing != nil && mustBeSigned(t)
            if (signed || maxAgeMs != nil) && !clockTrusted() { throw CommandRefusal.clockNotSynchronised }
            if let signing, signed, let why = signing.check(req, topic: message.topic, now: unixNow, monotonic: now) {
                return .refuse(.signatureRequired, request: req, why: why)
            }
            if let id = req.id, let first = ids.answer(for: Self.key(name, id), now: now) {
                return .repeated(first, request: req)
            }
            try Self.checkFresh(req, message: message, receivedAt: receivedAt, maxAgeMs: maxAgeMs, now: now, unixNow: unixNow)
            return .execute(t, req)
        } catch {
            if let id = request?.id { ids.record(.refused(error), for: Self.key(name, id), now: now) }
            // A signed command refused for another reason spends its id all the same.
            signing?.spend(message.payload, topic: message.topic, now: now)
            return .refuse(error, request: request)
        }
    }

    /// Remembers the answer of an executed command by its id.
    mutating func finish(_ name: String, request: CommandRequest, answer: CommandAnswer, now: ContinuousClock.Instant) {
        if let id = request.id { ids.record(answer, for: Self.key(name, id), now: now) }
    }

    private static func key(_ name: String, _ id: String) -> String { "\(name)\u{0}\(id)" }

    /// Stale: never open a door for a command that waited somewhere. `command_max_age_ms` against
    /// the JSON `ts` (required when it is set), and an MQTT 5 message expiry that has passed.
    static func checkFresh(_ req: CommandRequest, message: MQTTMessage, receivedAt: ContinuousClock.Instant, maxAgeMs: Int?,
                           now: ContinuousClock.Instant, unixNow: Int64) throws(CommandRefusal) {
        if let maxAge = maxAgeMs {
            guard let ts = req.ts else {
                throw .timestampRequired
            }
            let age = unixNow - ts
            if age > Int64(maxAge) { throw .tooOld(ageMs: age, maxAgeMs: maxAge) }
            if age < -Int64(maxAge) { throw .aheadOfClock(aheadMs: -age) }
        }
        if let expiry = message.properties.messageExpiryInterval {
            if expiry == 0 || now >= receivedAt + .seconds(Int(expiry)) {
                throw .expired
            }
        }
    }
}
