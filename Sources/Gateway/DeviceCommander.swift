import GatewayConfig
import Logging
import Modbus
import MQTT
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Values a device's commander published after a write (its read-back), handed to the device's
/// poller: its change filter learns them, so the next poll does not publish the same value again,
/// and a poll that began before the read-back does not publish its older value of the point.
final class ReadBacks: Sendable {
    private let values = Mutex<[Int: (value: PointValue, at: ContinuousClock.Instant)]>([:])

    func record(_ value: PointValue, point: Int) { values.withLock { $0[point] = (value, .now) } }

    /// The values recorded since the last call, with when they were read, by point index.
    func take() -> [Int: (value: PointValue, at: ContinuousClock.Instant)] {
        values.withLock { v in
            guard !v.isEmpty else { return [:] }
            defer { v = [:] }
            return v
        }
    }

    /// Latches the commander cleared on the device (not published: the poller reads them).
    private let latches = Mutex<[Int: ContinuousClock.Instant]>([:])

    func recordLatchCleared(point: Int) { latches.withLock { $0[point] = .now } }

    /// The latches cleared since the last call, with when the clear was acknowledged.
    func takeLatchClears() -> [Int: ContinuousClock.Instant] {
        latches.withLock { v in
            guard !v.isEmpty else { return [:] }
            defer { v = [:] }
            return v
        }
    }
}

/// Runs one device's commands: `/set`, `/get` and the ends of pulses, one at a time in arrival
/// order, so that a pulse's end can never overtake the command that extended it.
///
/// Every `/set` is answered. Checks, in order: those of the ``CommandPipeline`` (retained flag,
/// unknown point, not writable, payload form, signature, repeated id, age), then value (type,
/// `map`, `min`/`max`), device offline, start deadline. Then one write
/// at high priority with a deadline (never retried: a lost answer is `outcome unknown`), a read
/// back, and the value published. Pulses end with a write of the released state, retried
/// because that state is the safe one, also on shutdown and while the broker is away.
final class DeviceCommander: Sendable {
    enum Job: DeviceJob {
        case set(MQTTMessage, point: String, receivedAt: ContinuousClock.Instant)
        case get(MQTTMessage, point: String, receivedAt: ContinuousClock.Instant)
        case pulseEnd(point: Int, generation: Int, why: PulseStateMachine.End)
        /// A latch the poller saw set: write it clear (``PointEvents``).
        case latchClear(point: Int)
        /// Write the `failsafe` values of these points (``Failsafe``); `whileBrokerAway`: only if
        /// the broker is still unreachable when the job runs.
        case failsafe(points: [Int], whileBrokerAway: Bool, reply: @Sendable ([FailsafeWrite]) -> Void)

        var isCommand: Bool {
            switch self {
            case .set, .get: true
            case .pulseEnd, .latchClear, .failsafe: false
            }
        }

        func isCovered(by waiting: Job) -> Bool {
            if case .latchClear(let a) = self, case .latchClear(let b) = waiting { a == b } else { false }
        }
    }

    struct Context: Sendable {
        var topics: TopicLayout
        var gateway: GatewaySettings
        var client: MQTTClient
        var board: StatusBoard
        var journal: PulseJournal
        var telemetry: GatewayTelemetry?
        /// Signed commands (`[gateway] command_key_file`); nil when commands are not signed.
        var signing: SignedCommands?
        /// Where data messages go when the broker is away (nil: `outbox_max_mb = 0`).
        var outbox: Outbox?
        /// Whether the system clock is set (`[gateway] require_synced_clock`).
        var clock: ClockSync

        /// A data message (a value, a frame, an event): through the outbox, which sends it at
        /// once while the broker keeps up. `compactable`: a retained value an newer one of its
        /// topic may replace when the outbox is full.
        func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64 = unixMilliseconds()) async {
            if let outbox {
                await outbox.publish(to: topic, payload: payload, retain: retain, compactable: compactable, ts: ts)
            } else {
                try? await client.enqueue(to: topic, payload: payload, qos: .atLeastOnce, retain: retain, properties: Outbox.properties(ts: ts))
            }
        }

        /// The gateway's birth and every known device status (retained): after every connect, and
        /// after Home Assistant's birth.
        func publishStatuses() async {
            try? await client.enqueue(to: topics.status, payload: Array("online".utf8), qos: .atLeastOnce, retain: true)
            for (device, state) in board.all() where state != .unknown {
                try? await client.enqueue(to: topics.status(device), payload: Array(state.rawValue.utf8), qos: .atLeastOnce, retain: true)
            }
        }

        /// Records a device's state; publishes it when connected (else the connect handler
        /// republishes the board after the birth).
        func publishStatus(_ device: String, _ state: DeviceHealth.State) async {
            board.set(device, state)
            telemetry?.device(device)?.state(state)
            guard await client.isConnected else { return }
            try? await client.enqueue(to: topics.status(device), payload: Array(state.rawValue.utf8), qos: .atLeastOnce, retain: true)
        }

        /// A `/set` on Modbus and serial devices alike: the ``CommandPipeline`` checks, then
        /// `execute` (which checks the value and the device and returns the `ok` answer or throws
        /// the refusal), then its audit line and its answer. `secret`: the value is never logged
        /// or shown (`secret = true`); a refused command's value is never shown either.
        func runCommand<Target>(_ message: MQTTMessage, name: String, receivedAt: ContinuousClock.Instant,
                                pipeline: inout CommandPipeline, resultTopic: String, secret: Bool = false, logger: Logger,
                                target: () throws(CommandRefused) -> Target,
                                mustBeSigned: (Target) -> Bool = { _ in false },
                                execute: (Target, CommandRequest) async throws(CommandRefused) -> CommandAnswer) async {
            var request: CommandRequest?
            var repeated = false
            var executedAt: ContinuousClock.Instant?
            let answer: CommandAnswer
            let requireSync = gateway.requireSyncedClock
            switch pipeline.admit(message, name: name, receivedAt: receivedAt, now: .now, unixNow: unixMilliseconds(),
                                  clockTrusted: { !requireSync || clock.isSynchronised },
                                  target: target, mustBeSigned: mustBeSigned) {
            case .refuse(let refusal, let req, let why):
                request = req
                if let why { logger.warning("signed command refused: \(why.logSafe)", metadata: ["topic": "\(message.topic.logSafe)"]) }
                answer = .refused(refusal.reason)
            case .repeated(let first, let req):
                request = req
                repeated = true
                answer = first
            case .execute(let t, let req):
                request = req
                // A signed command's id is on storage before its write reaches the device.
                if req.sig != nil, let signing { await signing.flushed() }
                do throws(CommandRefused) {
                    answer = try await execute(t, req)
                    executedAt = .now
                } catch {
                    answer = .refused(error.reason)
                }
                pipeline.finish(name, request: req, answer: answer, now: .now)
            }
            // Everything from the message is escaped: a command cannot forge a log line.
            let value = secret ? "(secret)" : request.map { "\($0.value)" } ?? String(decoding: message.payload.prefix(64), as: UTF8.self)
            var meta: Logger.Metadata = [
                "point": "\(name.logSafe)",
                "topic": "\(message.topic.logSafe)",
                "value": "\(value.logSafe)",
                "latency_ms": "\(DeviceCommander.milliseconds(since: receivedAt))",
            ]
            if let id = request?.id { meta["id"] = "\(id.logSafe)" }
            if repeated { meta["note"] = "repeated id: not executed again" }
            let shown = secret
                ? answer.secretMasked(sent: [String(decoding: message.payload, as: UTF8.self)] + (request.map { ["\($0.value)"] } ?? []))
                : answer
            logger.notice("command \(message.topic.logSafe) -> \(shown.json().logSafe)", metadata: meta)
            if let telemetry, let command = topics.parse(message.topic) {
                telemetry.commandAnswered(device: command.device, point: command.point, value: value,
                                          answer: shown, receivedAt: receivedAt, wroteAt: executedAt)
            }
            await self.answer(answer, to: message, fallback: resultTopic, logger: logger)
        }

        /// Why an MQTT 5 response topic is not used (nil: it is fine). An answer published there
        /// could be taken for something else: a topic filter with wildcards, any command topic
        /// (`.../set`, `.../get`), or anything under the gateway's own base but a `/set/result`.
        static func refusedResponseTopic(_ topic: String, base: String) -> String? {
            if topic.contains("+") || topic.contains("#") { return "it has wildcards" }
            if topic.hasSuffix("/set") || topic.hasSuffix("/get") || topic == "set" || topic == "get" { return "it is a command topic" }
            if (topic == base || topic.hasPrefix(base + "/")) && !topic.hasSuffix("/set/result") {
                return "it is under the gateway's base topic \(base)"
            }
            return nil
        }

        /// Publishes a command's answer: to the MQTT 5 response topic (with the correlation data)
        /// when the request has one, else to `fallback`.
        func answer(_ answer: CommandAnswer, to message: MQTTMessage, fallback: String?, logger: Logger) async {
            var props = MQTTProperties()
            var note: String?
            let topic: String
            if let rt = message.properties.responseTopic, let why = Self.refusedResponseTopic(rt, base: topics.base) {
                // Never publish an answer where it could be taken for a command or a value.
                logger.warning("response topic \(rt.logSafe) of \(message.topic.logSafe) refused: \(why)")
                guard let fallback else { return }
                topic = fallback
                note = "response topic refused: \(why); answered here instead"
            } else if let rt = message.properties.responseTopic {
                topic = rt
                props.correlationData = message.properties.correlationData
            } else if let fallback {
                topic = fallback
            } else {
                return
            }
            // Not kept for later: nobody waits for an answer after the broker is back, and it must
            // not push telemetry out of the offline queue.
            guard await client.isConnected else {
                logger.info("answer to \(topic.logSafe) not sent: the broker is away")
                return
            }
            do {
                try await client.enqueue(to: topic, payload: Array(answer.json(note: note).utf8), qos: .atLeastOnce, retain: false, properties: props)
            } catch {
                logger.warning("answer to \(topic.logSafe) not published: \(error)")
            }
        }
    }

    let device: DeviceSettings
    let bus: ModbusBus
    let timeout: Duration
    let context: Context
    /// The gateway's logger, shared by every device (a copy with the device's name in its
    /// metadata is made when something is logged, not kept: 0.4 KiB per device).
    private let sharedLogger: Logger
    var logger: Logger {
        var l = sharedLogger
        l[metadataKey: "device"] = "\(device.name)"
        return l
    }
    /// Read-backs this commander published, for the device's poller.
    let readBacks = ReadBacks()

    /// What jobs change: the pulses, their timers, and the command checks (recent ids). Owned by
    /// the job task while it runs, parked in ``jobs`` before it starts and after it ends.
    private struct Work: Sendable {
        var pulses = PulseStateMachine()
        /// The timers of ``PulseStateMachine/Action/scheduleOff(point:generation:at:why:)``, by point.
        var timers: [Int: Task<Void, Never>] = [:]
        var pipeline: CommandPipeline
    }

    /// Its jobs, run one at a time by a task the first job starts.
    private let jobs: DeviceJobQueue<Job, Work>

    init(device: DeviceSettings, bus: ModbusBus, timeoutMs: Int, context: Context, logger: Logger) {
        self.device = device
        self.bus = bus
        self.timeout = .milliseconds(timeoutMs)
        self.context = context
        jobs = DeviceJobQueue(Work(pipeline: CommandPipeline(maxAgeMs: context.gateway.commandMaxAgeMs, signing: context.signing)), executor: context.client.taskExecutor)
        sharedLogger = logger
    }

    /// Queues a job for the command task (started by the first job). Ignored once stopping. False
    /// (nothing queued) for a command when the device already has
    /// ``CommandRequest/pendingPerDevice`` waiting: the caller answers "busy".
    @discardableResult
    func submit(_ job: Job) -> Bool {
        jobs.submit(job) { job, work in await self.run(job, work: &work) }
    }

    /// Pulses an earlier run switched on and never switched off (it crashed) are switched off
    /// first, before any command: call before commands are dispatched.
    /// A journal line of an earlier release (the name only) is taken as this point's; a line
    /// whose target differs (the point was moved) is the ``PulseReaper``'s.
    func start() {
        let leftOn = context.journal.current
        let points = device.points.indices.filter { device.points[$0].pulseMs != nil
            && (leftOn.contains(pulseLine(of: $0)) || leftOn.contains(PulseJournal.key(device: device.name, point: device.points[$0].name))) }
        let actions = jobs.withIdleState { $0.pulses.leftOn(points) } ?? []
        for case .offNow(let point, let g, let why) in actions { submit(.pulseEnd(point: point, generation: g, why: why)) }
    }

    /// Takes no more jobs, waits for the queued ones to be run, then switches off every pulse
    /// still on (in a task of its own, so a cancelled caller does not cancel the safety writes).
    func stop() async {
        guard var work = await jobs.stop() else { return }
        for t in work.timers.values { t.cancel() }
        let pending = work.pulses.stop()
        guard !pending.isEmpty else { return }
        await Task {
            for index in pending { await self.endPulse(index, attempts: 3, why: "gateway stopping") }
        }.value
    }

    private func run(_ job: Job, work: inout Work) async {
        switch job {
        case .set(let message, let pointName, let receivedAt):
            await handleSet(message, pointName: pointName, receivedAt: receivedAt, pipeline: &work.pipeline) { index, period in
                perform(work.pulses.switchedOn(index, pulse: period, now: .now), timers: &work.timers)
            } endPulse: { index in
                perform(work.pulses.switchedOff(index), timers: &work.timers)
                await markOff(index)
            }
        case .get(let message, let pointName, let receivedAt):
            await handleGet(message, pointName: pointName, receivedAt: receivedAt)
        case .pulseEnd(let index, let g, let why):
            guard case .writeOff(_, let attempts, _) = work.pulses.endDue(index, generation: g, why: why) else { return }
            work.timers[index] = nil
            let text = switch why {
            case .over: "pulse of \(device.points[index].pulseMs ?? 0) ms over"
            case .leftOnEarlier: "left on by an earlier run that did not end it"
            case .retry: "retried after the device did not take the off"
            }
            if await endPulse(index, attempts: attempts, why: text, quiet: why == .retry) {
                return
            }
            perform(work.pulses.offFailed(index, now: .now), timers: &work.timers)
        case .latchClear(let index):
            let point = device.points[index]
            do {
                try await write(point.offWrite, point: point, deadline: .now + timeout)
                // The poller takes its next reading as the device's state after the clear.
                readBacks.recordLatchCleared(point: index)
                logger.info("latch cleared", metadata: ["point": "\(point.name)"])
            } catch {
                // The next poll that sees it still set asks again (``DevicePoller``).
                logger.warning("latch clear failed: \(error)", metadata: ["point": "\(point.name)"])
            }
        case .failsafe(let points, let whileBrokerAway, let reply):
            reply(await writeFailsafe(points, whileBrokerAway: whileBrokerAway))
        }
    }

    /// Does what the pulse state machine asked: an end job after a timer (replacing the point's
    /// timer, whose job the new generation would make a no-op anyway), or no timer at all.
    private func perform(_ action: PulseStateMachine.Action, timers: inout [Int: Task<Void, Never>]) {
        switch action {
        case .scheduleOff(let point, let g, let at, let why):
            timers[point]?.cancel()
            // A timer per pulsing point, outliving the job that set it: it submits the end job.
            timers[point] = Task {
                try? await Task.sleep(until: at, clock: .continuous)
                if !Task.isCancelled { self.submit(.pulseEnd(point: point, generation: g, why: why)) }
            }
        case .offNow(let point, let g, let why):
            submit(.pulseEnd(point: point, generation: g, why: why))
        case .cancelTimer(let point):
            timers.removeValue(forKey: point)?.cancel()
        case .writeOff, .none:
            break
        }
    }

    // MARK: /set

    /// Handles one `/set` and publishes its answer.
    private func handleSet(_ message: MQTTMessage, pointName: String, receivedAt: ContinuousClock.Instant,
                           pipeline: inout CommandPipeline,
                           startPulse: (Int, Duration) -> Void, endPulse: (Int) async -> Void) async {
        await context.runCommand(message, name: pointName, receivedAt: receivedAt, pipeline: &pipeline,
                                 resultTopic: context.topics.setResult(device: device.name, point: pointName),
                                 secret: device.points.first { $0.name == pointName }?.secret ?? false, logger: logger) { () throws(CommandRefused) -> Int in
            guard let index = device.points.firstIndex(where: { $0.name == pointName }) else {
                throw CommandRefused("unknown point '\(pointName)' on device '\(device.name)'")
            }
            guard device.points[index].writable else { throw CommandRefused("point '\(pointName)' is not writable") }
            return index
        } mustBeSigned: { index in
            device.points[index].signed ?? true
        } execute: { (index, req) throws(CommandRefused) in
            try await execute(req, index: index, receivedAt: receivedAt, startPulse: startPulse, endPulse: endPulse)
        }
    }

    private func execute(_ req: CommandRequest, index: Int, receivedAt: ContinuousClock.Instant, startPulse: (Int, Duration) -> Void,
                         endPulse: (Int) async -> Void) async throws(CommandRefused) -> CommandAnswer {
        let point = device.points[index]
        let plan = try point.writePlan(for: req.value)
        switch context.board.state(device.name) {
        case .online: break
        case .offline: throw CommandRefused("device '\(device.name)' is offline")
        case .unknown: throw CommandRefused("device '\(device.name)' has not answered a poll yet")
        }
        // Not queued for later: if the bus cannot start it within one response timeout, refuse.
        let deadline = receivedAt + timeout
        guard ContinuousClock.now < deadline else { throw CommandRefused("bus busy: the command could not start within \(timeout)") }
        // Journal first: if the gateway dies after this write, the next start switches it off.
        let journalled = (point.pulseMs != nil && !plan.isOff) ? await context.journal.markOn(pulseLine(of: index)) : false
        do {
            try await write(plan, point: point, deadline: deadline)
        } catch let e as ModbusError where e.isOutcomeUnknown {
            // The device may have switched: make sure a pulse still ends.
            if let ms = point.pulseMs, !plan.isOff { startPulse(index, .milliseconds(ms)) }
            throw CommandRefused("outcome unknown: \(e) (not retried)")
        } catch {
            // Refused by the device, not sent, or not started in time: nothing changed, and a
            // pulse already running keeps its end (and its journal entry).
            if journalled { await markOff(index) }
            throw CommandRefused("\(error)")
        }
        if let ms = point.pulseMs {
            if plan.isOff { await endPulse(index) } else { startPulse(index, .milliseconds(ms)) }
        }
        let back = await readBack(index)
        switch back {
        case .success(let v): return .ok(v)
        case .failure(let e): return .readBackFailed("\(e)")
        }
    }

    /// Point `index`'s pulse journal line: where its off goes (``PulseTarget``).
    private func pulseLine(of index: Int) -> String {
        PulseTarget(device: device, point: device.points[index]).line(device: device.name, point: device.points[index].name)
    }

    /// Its pulse is off: its journal line goes (and an earlier release's line for it).
    private func markOff(_ index: Int) async {
        await context.journal.markOff(pulseLine(of: index), legacy: PulseJournal.key(device: device.name, point: device.points[index].name))
    }

    private func write(_ plan: WritePlan, point: PointSettings, deadline: ContinuousClock.Instant) async throws {
        try await bus.write(plan.data, unit: device.unit, address: point.address, multiple: device.writeMultiple, deadline: deadline)
    }

    /// Reads point `index` now (high priority) and publishes it on its value topic; the device's
    /// poller learns the value, so its next poll does not publish it again.
    private func readBack(_ index: Int) async -> Result<PointValue, any Error> {
        let point = device.points[index]
        do {
            let read = try await bus.read(point.registerKind, unit: device.unit, address: point.address, count: point.width,
                                          priority: .high, deadline: .now + timeout)
            let value = try point.value(from: read)
            readBacks.record(value, point: index)
            context.telemetry?.device(device.name)?.value(point: index, value)
            await context.publishData(to: context.topics.value(device: device.name, point: point.name),
                                      payload: valuePayload(value, point: point, gateway: context.gateway),
                                      retain: point.retain ?? context.gateway.retain, compactable: true)
            return .success(value)
        } catch {
            return .failure(error)
        }
    }

    // MARK: fail-safe

    /// Writes the `failsafe` values of `points` (``Failsafe``): once each, if the device is
    /// online (and, `whileBrokerAway`, the broker still away).
    func failsafe(_ points: [Int], whileBrokerAway: Bool) async -> [FailsafeWrite] {
        await withCheckedContinuation { (c: CheckedContinuation<[FailsafeWrite], Never>) in
            if !submit(.failsafe(points: points, whileBrokerAway: whileBrokerAway, reply: { c.resume(returning: $0) })) {
                c.resume(returning: [])   // stopping: it would never run
            }
        }
    }

    private func writeFailsafe(_ points: [Int], whileBrokerAway: Bool) async -> [FailsafeWrite] {
        if whileBrokerAway, await context.client.isConnected { return [] }
        let online = context.board.state(device.name) == .online
        var out: [FailsafeWrite] = []
        for index in points {
            let point = device.points[index]
            guard let value = point.failsafe else { continue }
            var w = FailsafeWrite(device: device.name, point: point.name, index: index, value: value.description, outcome: .deviceOffline)
            if online {
                do throws(CommandRefused) {
                    let plan = try point.writePlan(for: value)
                    do {
                        try await write(plan, point: point, deadline: .now + timeout)
                        w.outcome = .written(at: unixMilliseconds())
                        _ = await readBack(index)
                    } catch {
                        w.outcome = .failed("\(error)")
                    }
                } catch {
                    w.outcome = .refused(error.reason)
                }
            }
            out.append(w)
        }
        return out
    }

    // MARK: pulses

    /// Writes the released state, retrying (it is the safe state, and writing it twice is harmless).
    /// Returns false when every attempt failed. `quiet`: failures are logged at debug level (the
    /// later retries of an off that already failed loudly).
    @discardableResult
    private func endPulse(_ index: Int, attempts: Int, why: String, quiet: Bool = false) async -> Bool {
        let point = device.points[index]
        var log = logger
        log[metadataKey: "point"] = "\(point.name)"
        for attempt in 1...attempts {
            do {
                try await write(point.offWrite, point: point, deadline: .now + timeout)
                await markOff(index)
                log.info("pulse ended: switched off (\(why))")
                _ = await readBack(index)
                return true
            } catch {
                if attempt == attempts {
                    if quiet {
                        log.debug("pulse end: write off failed again: \(error)")
                    } else {
                        log.error("pulse end FAILED after \(attempts) attempts, the point may still be on; retrying every \(PulseStateMachine.offRetry) until it is off (and at the next start): \(error)")
                    }
                    return false
                }
                log.log(level: quiet ? .debug : .warning, "pulse end: write off failed (attempt \(attempt) of \(attempts)), retrying: \(error)")
                // Not a cancellable sleep: this write must be tried again even while stopping.
                let pause = Duration.milliseconds(min(2000, 250 << (attempt - 1)))
                await Task.detached { try? await Task.sleep(for: pause) }.value
            }
        }
        return false
    }

    // MARK: /get

    private func handleGet(_ message: MQTTMessage, pointName: String, receivedAt: ContinuousClock.Instant) async {
        var log = logger
        log[metadataKey: "point"] = "\(pointName.logSafe)"
        let answer: CommandAnswer
        if let index = device.points.firstIndex(where: { $0.name == pointName }) {
            switch await readBack(index) {
            case .success(let v): answer = .ok(v)
            case .failure(let e): answer = .refused("\(e)")
            }
        } else {
            answer = .refused("unknown point '\(pointName)' on device '\(device.name)'")
        }
        log.info("get \(message.topic.logSafe): \(answer.json().logSafe) in \(Self.milliseconds(since: receivedAt)) ms")
        // /get answers go to an MQTT 5 response topic when one is given; the value topic has the value.
        await context.answer(answer, to: message, fallback: nil, logger: logger)
    }

    // MARK: answers and audit

    static func milliseconds(since start: ContinuousClock.Instant) -> String {
        Scaling.format(Double((ContinuousClock.now - start).nanoseconds / 1000) / 1000)
    }
}
