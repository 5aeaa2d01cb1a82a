import GatewayConfig
import Logging
import MQTT
import Serial
import Synchronization

extension SerialDeviceSettings {
    var serialSettings: SerialSettings {
        SerialSettings(path: port, baud: baud, parity: parity,
                       dataBits: dataBits, stopBits: stopBits, hardwareFlowControl: rtscts)
    }

    var framingValue: Framing {
        switch framing {
        case .line: .line
        case .delimiter: .delimiter(end: delimiter, start: start)
        case .fixed: .fixed(length)
        }
    }
}

/// One raw serial device: keeps its port open (reopening with backoff when it vanishes), turns
/// frames into point values through the points' regexes, optionally polls, and sends command
/// templates. Online while the port is open (and, with `idle_timeout_ms`, frames keep arriving;
/// with `poll`, replies keep coming).
final class SerialDeviceRunner: Sendable {
    enum Job: DeviceJob {
        case set(MQTTMessage, command: String, receivedAt: ContinuousClock.Instant)
        case get(MQTTMessage, point: String)

        var isCommand: Bool { true }
        func isCovered(by waiting: Job) -> Bool { false }
    }

    /// What its commands change: the command checks' memory, and when a write last stalled (the
    /// line did not take it in time).
    private struct Work: Sendable {
        var pipeline: CommandPipeline
        var stalled: ContinuousClock.Instant?
    }

    let settings: SerialDeviceSettings
    let services: UnitServices
    let logger: Logger
    private let line = Mutex<SerialLine?>(nil)
    private let health: Mutex<DeviceHealth>
    private let lastFrame = Mutex<ContinuousClock.Instant?>(nil)
    private let replies = WakeSignal()
    /// Its metrics and live status (operations listener on).
    private let meter: DeviceMeter?
    /// Its commands, run one at a time by a task the first command starts.
    private let jobs: DeviceJobQueue<Job, Work>
    /// A command must start within this, and the line must take it within this again
    /// (`response_timeout_ms`): a barrier command never goes out late.
    private var commandTimeout: Duration { .milliseconds(settings.responseTimeoutMs) }

    private let liveness: Liveness?

    init(settings: SerialDeviceSettings, services: UnitServices, liveness: Liveness?, logger: Logger) {
        self.settings = settings
        self.liveness = liveness
        self.meter = services.telemetry?.device(settings.name)
        self.services = services
        var l = logger
        l[metadataKey: "device"] = "\(settings.name)"
        self.logger = l
        self.health = Mutex(DeviceHealth(offlineAfter: settings.offlineAfter))
        jobs = DeviceJobQueue(Work(pipeline: services.commands.pipeline()), executor: services.executor)
    }

    /// Queues a job; false (nothing queued) when the device already has
    /// ``CommandRequest/pendingPerDevice`` jobs waiting: the caller answers "busy".
    func submit(_ job: Job) -> Bool {
        jobs.submit(job) { job, work in await self.run(job, work: &work) }
    }

    /// Its task: unstructured for the same reason as a bus poller's (``BusUnit/start``).
    private let task = Mutex<Task<Void, Never>?>(nil)

    /// Opens the port and keeps it open, reading frames and taking commands, until ``stop()``.
    func start() {
        task.withLock { t in
            guard t == nil else { return }
            // Unstructured, as a bus poller's: units start and stop one by one at a reload;
            // ``stop()`` cancels this task and awaits it. On the MQTT client's loop, as a bus
            // poller's: what it publishes reaches the client without a thread switch.
            t = Task(executorPreference: services.executor) { await self.run() }
        }
    }

    /// Closes the port and ends the device's tasks; commands still queued are answered (the
    /// device is offline by then).
    func stop() async {
        let t = task.withLock { $0.take() }
        t?.cancel()
        await t?.value
        _ = await jobs.stop()
    }

    private func run() async {
        await connectionLoop()
        await line.withLock { $0 }?.close()
    }

    // MARK: port

    private func connectionLoop() async {
        var delay = Duration.milliseconds(250)
        var lastOpenError = ""
        var opens = 0
        while !Task.isCancelled {
            let opened: SerialLine
            do {
                opened = try await SerialLine.open(settings.serialSettings, framing: settings.framingValue, maxFrame: settings.maxFrame)
            } catch {
                if "\(error)" != lastOpenError {
                    lastOpenError = "\(error)"
                    logger.warning("serial port unavailable, retrying with backoff: \(error)")
                }
                await setState(.offline, force: true)
                do { try await Task.sleep(for: delay) } catch { return }
                delay = min(delay * 2, .seconds(5))
                continue
            }
            delay = .milliseconds(250)
            lastOpenError = ""
            opens += 1
            if opens > 1 { meter?.reopens?.increment() }
            line.withLock { $0 = opened }
            logger.info("serial port \(settings.port) open (\(settings.baud) baud, \(settings.dataBits)\(settings.parity)\(settings.stopBits), framing \(settings.framingValue))")
            lastFrame.withLock { $0 = .now }
            if settings.poll == nil { await setState(.online, force: true) }
            await withTaskGroup(of: Void.self) { session in
                if settings.poll != nil { session.addTask { await self.pollLoop(opened) } }
                if let idle = settings.idleTimeoutMs { session.addTask { await self.idleWatch(.milliseconds(idle)) } }
                await self.readFrames(opened)
                session.cancelAll()
            }
            line.withLock { $0 = nil }
            if Task.isCancelled { await opened.close(); return }
            logger.warning("serial port closed: \(opened.closeReason ?? "closed"); reopening")
            await setState(.offline, force: true)
            await opened.close()
        }
    }

    private func readFrames(_ line: SerialLine) async {
        // Regexes are compiled here, once per session, and used by this task only.
        let points: [(SerialPointSettings, Regex<AnyRegexOutput>)] = settings.points.compactMap { p in
            (try? Regex(p.match)).map { (p, $0) }
        }
        var reportedOversized = 0
        var reportedOverflow = 0
        for await frame in line.frames {
            let overflowed = line.overflowedFrames
            if overflowed != reportedOverflow {
                meter?.frames["overflow"]?.increment(by: Int64(overflowed - reportedOverflow))
                logger.error("lost \(overflowed - reportedOverflow) frame(s): the device sent faster than they could be published for too long (\(overflowed) so far)")
                reportedOverflow = overflowed
            }
            lastFrame.withLock { $0 = .now }
            meter?.answered()
            replies.push()
            let oversized = line.oversizedFrames
            if oversized != reportedOversized {
                meter?.frames["oversized"]?.increment(by: Int64(oversized - reportedOversized))
                logger.warning("dropped \(oversized - reportedOversized) frame(s) longer than max_frame = \(settings.maxFrame) bytes (\(oversized) so far)")
                reportedOversized = oversized
            }
            if settings.idleTimeoutMs != nil, settings.poll == nil, health.withLock({ $0.state }) != .online {
                await setState(.online, force: true)
            }
            let text = String(decoding: frame, as: UTF8.self)
            var matched = false
            for (point, regex) in points {
                guard let m = try? regex.firstMatch(in: text) else { continue }
                matched = true
                let value: Substring?
                if let g = point.group {
                    if let n = Int(g) { value = n < m.output.count ? m.output[n].substring : nil } else { value = m.output[g]?.substring }
                } else {
                    value = m.output.count > 1 ? m.output[1].substring : m.output[0].substring
                }
                guard let value else { continue }
                await publish(point, String(value))
            }
            meter?.frame(matched ? "matched" : "unmatched")
            if !matched {
                if settings.raw {
                    await services.publisher.publishData(to: services.topics.raw(device: settings.name), payload: frame, retain: false, compactable: false)
                } else {
                    logger.debug("frame matched no point: \(text.debugDescription)")
                }
            }
        }
        if line.oversizedFrames != reportedOversized {
            logger.warning("dropped frames longer than max_frame = \(settings.maxFrame) bytes: \(line.oversizedFrames) so far")
        }
    }

    private func publish(_ point: SerialPointSettings, _ text: String) async {
        let value = PointValue.text(text)
        if let meter, let i = meter.pointNames.firstIndex(of: point.name) { meter.value(point: i, value) }
        let payload = ValuePayload(value, format: point.format ?? services.gateway.format)
        // A scan is an event: never compacted away, however full the outbox.
        await services.publisher.publishData(to: services.topics.value(device: settings.name, point: point.name), payload: payload.bytes,
                                             retain: point.retain ?? services.gateway.retain, compactable: false, ts: payload.ts)
    }

    /// Request/response devices: send `poll` every `poll_ms`, await a frame within the timeout.
    private func pollLoop(_ line: SerialLine) async {
        guard let request = settings.poll else { return }
        let period = Duration.milliseconds(settings.pollMs)
        var schedule = PollSchedule(period: period, start: .now)
        let loop = liveness?.register("serial poller of \(settings.name)")
        defer { loop?.idle() }
        while !Task.isCancelled {
            loop?.expect(within: max(.zero, schedule.next - .now))
            do { try await Task.sleep(until: schedule.next, clock: .continuous) } catch { return }
            // A write the line does not take is bounded by the response timeout, and so is the wait for the reply.
            loop?.expect(within: .milliseconds(2 * settings.responseTimeoutMs))
            let generation = replies.generation
            var answered = false
            do {
                try await line.write(request, within: .milliseconds(settings.responseTimeoutMs))
                answered = await replies.wait(after: generation, until: .now + .milliseconds(settings.responseTimeoutMs))
            } catch {
                logger.debug("poll not sent: \(error)")
            }
            if answered {
                await setState(.online)
            } else {
                meter?.failed("no reply within \(settings.responseTimeoutMs) ms")
                let changed = health.withLock { $0.pollFailed() }
                if changed != nil {
                    logger.warning("device offline after \(settings.offlineAfter) polls without a reply within \(settings.responseTimeoutMs) ms")
                    await services.publisher.publishStatus(settings.name, .offline)
                }
            }
            _ = schedule.advance(now: .now)
        }
    }

    private func idleWatch(_ idle: Duration) async {
        while !Task.isCancelled {
            let last = lastFrame.withLock { $0 } ?? .now
            let due = last + idle
            if ContinuousClock.now >= due {
                if health.withLock({ $0.state }) == .online {
                    logger.warning("device offline: no frame for \(idle)")
                    await setState(.offline, force: true)
                }
                do { try await Task.sleep(for: idle) } catch { return }
            } else {
                do { try await Task.sleep(until: due, clock: .continuous) } catch { return }
            }
        }
    }

    /// `force`: the state follows the port directly (no `offline_after` counting).
    private func setState(_ state: DeviceHealth.State, force: Bool = false) async {
        let changed: DeviceHealth.State? = health.withLock { h in
            switch state {
            case .online: return h.pollSucceeded()
            case .offline: return force ? h.markOffline() : h.pollFailed()
            case .unknown: return nil
            }
        }
        guard let changed else { return }
        logger.info("device \(changed.rawValue)")
        await services.publisher.publishStatus(settings.name, changed)
    }

    // MARK: commands

    private func run(_ job: Job, work: inout Work) async {
        switch job {
        case .set(let message, let name, let receivedAt):
            await handleSet(message, name: name, receivedAt: receivedAt, pipeline: &work.pipeline, stalled: &work.stalled)
        case .get(let message, let name):
            let answer = CommandAnswer.refused(.notReadable(name))
            logger.notice("get \(message.topic.logSafe) -> \(answer.json().logSafe)")
            await services.commands.answerer.answer(answer, to: message, fallback: nil, logger: logger)
        }
    }

    private func handleSet(_ message: MQTTMessage, name: String, receivedAt: ContinuousClock.Instant, pipeline: inout CommandPipeline,
                           stalled: inout ContinuousClock.Instant?) async {
        let commands = services.commands
        var (run, command) = await commands.admit(message, name: name, receivedAt: receivedAt, pipeline: &pipeline, target: self, logger: logger)
        if let command, let req = run.request {
            let answer: CommandAnswer
            do throws(CommandRefusal) {
                answer = try await execute(command, value: "\(req.value)", receivedAt: receivedAt, stalled: &stalled)
            } catch {
                answer = .refused(error)
            }
            commands.executed(&run, answer: answer, pipeline: &pipeline)
        }
        await commands.conclude(run, resultTopic: services.topics.setResult(device: settings.name, point: name), device: settings.name, logger: logger)
    }

    /// Checks the value, the queue's age and the line, then sends (once).
    private func execute(_ command: SerialCommandSettings, value: String, receivedAt: ContinuousClock.Instant,
                         stalled: inout ContinuousClock.Instant?) async throws(CommandRefusal) -> CommandAnswer {
        let bytes = try Self.render(command, value: value)
        // Not queued for later: a command that waited behind a write the line did not take,
        // or behind others past its time, is refused.
        if let stalled, receivedAt < stalled {
            throw .lineStalled
        }
        guard services.clock.now < receivedAt + commandTimeout else {
            throw .lineBusy(timeoutMs: settings.responseTimeoutMs)
        }
        guard health.withLock({ $0.state }) == .online, let port = line.withLock({ $0 }) else {
            throw .deviceOffline(settings.name)
        }
        do {
            try await port.write(bytes, within: commandTimeout)
        } catch SerialError.writeTimedOut {
            stalled = services.clock.now
            throw .outcomeUnknown("the line did not take the command within \(settings.responseTimeoutMs) ms (flow control, or nobody reading); the rest was discarded and the port is reopened")
        } catch {
            throw .notSent("\(error)")
        }
        return .ok(.text(value))
    }

    /// The bytes to send: the template with `{value}` replaced, after checking the value.
    static func render(_ command: SerialCommandSettings, value: String) throws(CommandRefusal) -> [UInt8] {
        guard command.takesValue else { return command.send }
        guard !value.isEmpty else { throw .badValue("empty value") }
        guard value.utf8.count <= command.maxLength else { throw .badValue("value longer than \(command.maxLength) bytes") }
        guard !value.hasControlCharacters else {
            throw .badValue("value contains control characters")
        }
        if let pattern = command.pattern {
            guard let regex = try? Regex(pattern), (try? regex.wholeMatch(in: value)) != nil else {
                throw .badValue("'\(value)' does not match the pattern \(pattern)")
            }
        }
        var out: [UInt8] = []
        var rest = command.send[...]
        let placeholder = Array("{value}".utf8)
        while let r = rest.firstRange(of: placeholder) {
            out += rest[..<r.lowerBound]
            out += Array(value.utf8)
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

extension SerialDeviceRunner: CommandTarget {
    /// A `/set` addresses one of its `[[device.command]]`s by name.
    func commandPoint(_ name: String) throws(CommandRefusal) -> SerialCommandSettings {
        guard let command = settings.commands.first(where: { $0.name == name }) else {
            throw .unknownCommand(name, device: settings.name, known: settings.commands.map(\.name))
        }
        return command
    }

    func mustBeSigned(_ command: SerialCommandSettings) -> Bool { command.signed ?? true }

    func isSecret(_ name: String) -> Bool { settings.commands.first { $0.name == name }?.secret ?? false }
}
