import GatewayConfig
import Logging
import Modbus
import MQTT

/// A device whose `/set` commands the ``CommandRunner`` admits: it names what a command may
/// address (a Modbus point, a serial command) and says whether it must be signed.
protocol CommandTarget {
    associatedtype Point
    /// What `name` addresses, or why it cannot be commanded (unknown, not writable).
    func commandPoint(_ name: String) throws(CommandRefusal) -> Point
    /// True unless the point is `signed = false` (asked only when commands are signed).
    func mustBeSigned(_ point: Point) -> Bool
    /// True for a `secret = true` point: its value is never logged or shown.
    func isSecret(_ name: String) -> Bool
}

/// One `/set` on its way through a device: ``CommandRunner/admit(_:name:receivedAt:pipeline:target:)``
/// makes it, the device executes it when told to, ``CommandRunner/conclude(_:resultTopic:device:logger:)``
/// logs and answers it.
struct CommandRun: Sendable {
    let message: MQTTMessage
    let name: String
    let receivedAt: ContinuousClock.Instant
    let secret: Bool
    /// The parsed command (nil: its payload did not parse).
    var request: CommandRequest?
    /// Its id was seen before: the first answer again, nothing executed.
    var repeated = false
    var answer: CommandAnswer = .refused(.notSent("not executed"))
    /// When the device took it (nil: not executed, or refused on the way).
    var executedAt: ContinuousClock.Instant?
}

/// A `/set` on Modbus and serial devices alike: the ``CommandPipeline`` checks, then the device
/// executes, then one audit line, the metrics and the answer. Shared by every device; each device
/// keeps its own ``CommandPipeline`` (its recent ids).
struct CommandRunner: Sendable {
    let topics: TopicLayout
    /// `[gateway] require_synced_clock`: signed and timed commands wait for a set clock.
    let requireSyncedClock: Bool
    /// `command_max_age_ms`.
    let maxAgeMs: Int?
    /// Signed commands (`[gateway] command_key_file`); nil when commands are not signed.
    let signing: SignedCommands?
    /// Whether the system clock is set.
    let clockSync: ClockSync
    let clock: any GatewayClock
    let answerer: any CommandAnswerer
    let telemetry: GatewayTelemetry?

    init(topics: TopicLayout, gateway: GatewaySettings, signing: SignedCommands?, clockSync: ClockSync, clock: any GatewayClock,
         answerer: any CommandAnswerer, telemetry: GatewayTelemetry?) {
        self.topics = topics
        self.requireSyncedClock = gateway.requireSyncedClock
        self.maxAgeMs = gateway.commandMaxAgeMs
        self.signing = signing
        self.clockSync = clockSync
        self.clock = clock
        self.answerer = answerer
        self.telemetry = telemetry
    }

    /// The runner for these settings, answering through `client`: `keeping` a running runner's
    /// signed-command state when given (a reload keeps the ids already seen), else a new one from
    /// `commandKey` (nil: commands are not signed).
    static func make(_ g: GatewaySettings, commandKey: [UInt8]?, keeping signing: SignedCommands?, clockSync: ClockSync, client: MQTTClient,
                     topics: TopicLayout, telemetry: GatewayTelemetry?, logger: Logger) -> CommandRunner {
        let signing = commandKey == nil ? nil
            : signing ?? commandKey.map { SignedCommands(key: $0, maxAgeMs: SignedCommands.maxAgeMs(g), stateDirectory: g.stateDirectory, logger: logger) }
        return CommandRunner(topics: topics, gateway: g, signing: signing, clockSync: clockSync, clock: SystemClock(),
                             answerer: BrokerAnswerer(client: client, base: topics.base), telemetry: telemetry)
    }

    /// A device's own command checks' memory, with this runner's settings.
    func pipeline() -> CommandPipeline { CommandPipeline(maxAgeMs: maxAgeMs, signing: signing) }

    /// The ``CommandPipeline`` checks. Returns the run, and the point to execute it on (nil: it is
    /// answered already, refused or repeated; call ``conclude(_:resultTopic:device:logger:)``). A signed
    /// command's id is on storage before this returns the point: before its write can reach the device.
    func admit<Target: CommandTarget>(_ message: MQTTMessage, name: String, receivedAt: ContinuousClock.Instant,
                                      pipeline: inout CommandPipeline, target: Target, logger: @autoclosure () -> Logger) async -> (CommandRun, Target.Point?) {
        var run = CommandRun(message: message, name: name, receivedAt: receivedAt, secret: target.isSecret(name))
        let requireSync = requireSyncedClock, clockSync = clockSync
        switch pipeline.admit(message, name: name, receivedAt: receivedAt, now: clock.now, unixNow: unixMilliseconds(),
                              clockTrusted: { !requireSync || clockSync.isSynchronised },
                              target: { () throws(CommandRefusal) in try target.commandPoint(name) },
                              mustBeSigned: target.mustBeSigned) {
        case .refuse(let refusal, let req, let why):
            run.request = req
            if let why { logger().warning("signed command refused: \(why.logSafe)", metadata: ["topic": "\(message.topic.logSafe)"]) }
            run.answer = .refused(refusal)
            return (run, nil)
        case .repeated(let first, let req):
            run.request = req
            run.repeated = true
            run.answer = first
            return (run, nil)
        case .execute(let point, let req):
            run.request = req
            if req.sig != nil, let signing { await signing.flushed() }
            return (run, point)
        }
    }

    /// The device executed it: `answer` is what it did (or why not).
    func executed(_ run: inout CommandRun, answer: CommandAnswer, pipeline: inout CommandPipeline) {
        run.answer = answer
        if case .refused = answer {} else { run.executedAt = clock.now }
        if let req = run.request { pipeline.finish(run.name, request: req, answer: answer, now: clock.now) }
    }

    /// Its audit line (with `device` in its metadata), its metrics and its answer (to the MQTT 5
    /// response topic, else `resultTopic`). A `secret` value is never logged or shown; a refused
    /// command's value is never shown either.
    func conclude(_ run: CommandRun, resultTopic: String, device: String, logger: Logger) async {
        let message = run.message
        // Everything from the message is escaped: a command cannot forge a log line.
        let value = run.secret ? "(secret)" : run.request.map { "\($0.value)" } ?? String(decoding: message.payload.prefix(64), as: UTF8.self)
        var meta: Logger.Metadata = [
            "device": "\(device)",
            "point": "\(run.name.logSafe)",
            "topic": "\(message.topic.logSafe)",
            "value": "\(value.logSafe)",
            "latency_ms": "\(Self.milliseconds(since: run.receivedAt, now: clock.now))",
        ]
        if let id = run.request?.id { meta["id"] = "\(id.logSafe)" }
        if run.repeated { meta["note"] = "repeated id: not executed again" }
        let shown = run.secret
            ? run.answer.secretMasked(sent: [String(decoding: message.payload, as: UTF8.self)] + (run.request.map { ["\($0.value)"] } ?? []))
            : run.answer
        logger.notice("command \(message.topic.logSafe) -> \(shown.json().logSafe)", metadata: meta)
        if let telemetry, let command = topics.parse(message.topic) {
            telemetry.commandAnswered(device: command.device, point: command.point, value: value,
                                      answer: shown, receivedAt: run.receivedAt, wroteAt: run.executedAt)
        }
        await answerer.answer(run.answer, to: message, fallback: resultTopic, logger: logger)
    }

    /// Answers a command that goes no further than the dispatcher (unknown device, restarting,
    /// queue full; `/get`: only to an MQTT 5 response topic, as its other answers). A signed
    /// command's id is spent at once, before the next message is read (else a copy of it would be
    /// accepted once the device is back); the answer is published by a task of its own.
    func refuseUnqueued(_ message: MQTTMessage, isSet: Bool, receivedAt: ContinuousClock.Instant, why: CommandRefusal,
                        executor: (any TaskExecutor)?, logger: Logger) {
        if isSet { signing?.spend(message.payload, topic: message.topic) }
        if let telemetry, let command = topics.parse(message.topic) {
            telemetry.commandAnswered(device: command.device, point: command.point, value: "",
                                      answer: .refused(why), receivedAt: receivedAt, wroteAt: nil)
        }
        logger.notice("command \(message.topic.logSafe) -> refused: \(why.reason.logSafe)", metadata: ["topic": "\(message.topic.logSafe)"])
        let answerer = answerer
        Task(executorPreference: executor) {
            await answerer.answer(.refused(why), to: message, fallback: isSet ? "\(message.topic)/result" : nil, logger: logger)
        }
    }

    static func milliseconds(since start: ContinuousClock.Instant, now: ContinuousClock.Instant = .now) -> String {
        Scaling.format(Double((now - start).nanoseconds / 1000) / 1000)
    }
}
