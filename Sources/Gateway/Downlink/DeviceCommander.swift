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

    let device: DeviceSettings
    let bus: any DeviceBus
    let timeout: Duration
    let services: UnitServices
    private var clock: any GatewayClock { services.clock }
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

    /// Its jobs, run one at a time by a task that a job finding the device idle starts.
    private let jobs: DeviceJobQueue<Job, Work>

    init(device: DeviceSettings, bus: any DeviceBus, timeoutMs: Int, services: UnitServices, logger: Logger) {
        self.device = device
        self.bus = bus
        self.timeout = .milliseconds(timeoutMs)
        self.services = services
        jobs = DeviceJobQueue(Work(pipeline: services.commands.pipeline()), executor: services.executor)
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
        let leftOn = services.journal.current
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
            await handleSet(message, pointName: pointName, receivedAt: receivedAt, work: &work)
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
            perform(work.pulses.offFailed(index, now: clock.now), timers: &work.timers)
        case .latchClear(let index):
            let point = device.points[index]
            do {
                try await write(point.offWrite, point: point, deadline: clock.now + timeout)
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
            let clock = clock
            timers[point] = Task {
                try? await clock.sleep(until: at)
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
    private func handleSet(_ message: MQTTMessage, pointName: String, receivedAt: ContinuousClock.Instant, work: inout Work) async {
        let commands = services.commands
        // The device's logger is made only when a line is logged (it costs a formatting of its
        // metadata): the audit line takes the device as metadata of its own.
        var (run, index) = await commands.admit(message, name: pointName, receivedAt: receivedAt, pipeline: &work.pipeline,
                                                target: self, logger: self.logger)
        if let index, let req = run.request {
            let answer: CommandAnswer
            do throws(CommandRefusal) {
                answer = try await execute(req, index: index, receivedAt: receivedAt, work: &work)
            } catch {
                answer = .refused(error)
            }
            commands.executed(&run, answer: answer, pipeline: &work.pipeline)
        }
        await commands.conclude(run, resultTopic: services.topics.setResult(device: device.name, point: pointName), device: device.name,
                                logger: sharedLogger)
    }

    /// Checks the value and the device, writes (once), starts or ends the point's pulse, reads back.
    private func execute(_ req: CommandRequest, index: Int, receivedAt: ContinuousClock.Instant, work: inout Work) async throws(CommandRefusal) -> CommandAnswer {
        let point = device.points[index]
        let plan = try point.writePlan(for: req.value)
        switch services.board.state(device.name) {
        case .online: break
        case .offline: throw .deviceOffline(device.name)
        case .unknown: throw .notPolledYet(device.name)
        }
        // Not queued for later: if the bus cannot start it within one response timeout, refuse.
        let deadline = receivedAt + timeout
        guard clock.now < deadline else { throw .busBusy(timeout: timeout) }
        // Journal first: if the gateway dies after this write, the next start switches it off.
        let journalled = (point.pulseMs != nil && !plan.isOff) ? await services.journal.markOn(pulseLine(of: index)) : false
        do {
            try await write(plan, point: point, deadline: deadline)
        } catch let e as ModbusError where e.isOutcomeUnknown {
            // The device may have switched: make sure a pulse still ends.
            if let ms = point.pulseMs, !plan.isOff {
                perform(work.pulses.switchedOn(index, pulse: .milliseconds(ms), now: clock.now), timers: &work.timers)
            }
            throw .outcomeUnknown("\(e) (not retried)")
        } catch {
            // Refused by the device, not sent, or not started in time: nothing changed, and a
            // pulse already running keeps its end (and its journal entry).
            if journalled { await markOff(index) }
            throw .failed("\(error)")
        }
        if let ms = point.pulseMs {
            if plan.isOff {
                perform(work.pulses.switchedOff(index), timers: &work.timers)
                await markOff(index)
            } else {
                perform(work.pulses.switchedOn(index, pulse: .milliseconds(ms), now: clock.now), timers: &work.timers)
            }
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
        await services.journal.markOff(pulseLine(of: index), legacy: PulseJournal.key(device: device.name, point: device.points[index].name))
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
                                          priority: .high, deadline: clock.now + timeout)
            let value = try point.value(from: read)
            readBacks.record(value, point: index)
            services.telemetry?.device(device.name)?.value(point: index, value)
            await services.publisher.publishData(to: services.topics.value(device: device.name, point: point.name),
                                                 payload: ValuePayload(value, point: point, gateway: services.gateway).bytes,
                                                 retain: point.retain ?? services.gateway.retain, compactable: true)
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
        if whileBrokerAway, await services.publisher.brokerConnected { return [] }
        let online = services.board.state(device.name) == .online
        var out: [FailsafeWrite] = []
        for index in points {
            let point = device.points[index]
            guard let value = point.failsafe else { continue }
            var w = FailsafeWrite(device: device.name, point: point.name, index: index, value: value.description, outcome: .deviceOffline)
            if online {
                do throws(CommandRefusal) {
                    let plan = try point.writePlan(for: value)
                    do {
                        try await write(plan, point: point, deadline: clock.now + timeout)
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
                try await write(point.offWrite, point: point, deadline: clock.now + timeout)
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
                let clock = clock
                await Task.detached { try? await clock.sleep(until: clock.now + pause) }.value
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
            case .failure(let e): answer = .refused(.failed("\(e)"))
            }
        } else {
            answer = .refused(.unknownPoint(pointName, device: device.name))
        }
        log.info("get \(message.topic.logSafe): \(answer.json().logSafe) in \(CommandRunner.milliseconds(since: receivedAt, now: clock.now)) ms")
        // /get answers go to an MQTT 5 response topic when one is given; the value topic has the value.
        await services.commands.answerer.answer(answer, to: message, fallback: nil, logger: logger)
    }

}

extension DeviceCommander: CommandTarget {
    /// A `/set` addresses a point by name; it must be writable.
    func commandPoint(_ name: String) throws(CommandRefusal) -> Int {
        guard let index = device.points.firstIndex(where: { $0.name == name }) else {
            throw .unknownPoint(name, device: device.name)
        }
        guard device.points[index].writable else { throw .notWritable(point: name) }
        return index
    }

    func mustBeSigned(_ index: Int) -> Bool { device.points[index].signed ?? true }

    func isSecret(_ name: String) -> Bool { device.points.first { $0.name == name }?.secret ?? false }
}
