import GatewayConfig
import Logging
import Modbus
import MQTT
import Synchronization

/// Where a poll's results go. The pollers hold this, not the runtime, so nothing on the poll
/// path reaches back into its owner; a test records them instead (``DevicePoller`` is tested
/// in-process with a scripted bus).
protocol PollSink: Sendable {
    /// Bumped when every value must be published again (see ``ValuesGeneration``).
    var valuesGeneration: Int { get }
    /// A device went online or offline.
    func publishStatus(_ device: String, _ state: DeviceHealth.State) async
    /// A value or an event.
    func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async
}

/// The running gateway's sink: its ``DataPublisher`` (the status board and the broker, through
/// the outbox), and the generation Home Assistant's birth moves on.
struct GatewayPollSink: PollSink {
    let publisher: any DataPublisher
    let generation: ValuesGeneration

    var valuesGeneration: Int { generation.current }

    func publishStatus(_ device: String, _ state: DeviceHealth.State) async {
        await publisher.publishStatus(device, state)
    }

    func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async {
        await publisher.publishData(to: topic, payload: payload, retain: retain, compactable: compactable, ts: ts)
    }
}

/// What a poller reads its devices through: a ``ModbusBus``, or a scripted bus in tests.
protocol PollingBus: Sendable {
    /// Reads what `plan` asks of `unit`, started before `deadline` or not at all (`busBusy`).
    func pollDevice(_ plan: inout ReadPlan, unit: Int, deadline: ContinuousClock.Instant) async -> [Int: ModbusBus.ItemResult]
}

extension ModbusBus: PollingBus {
    func pollDevice(_ plan: inout ReadPlan, unit: Int, deadline: ContinuousClock.Instant) async -> [Int: ModbusBus.ItemResult] {
        await poll(&plan, unit: unit, deadline: deadline)
    }
}

/// One bus and its poller: the bus runs one request at a time anyway, so its devices are polled
/// in turn by one task, each on its own drift-free schedule. Of the devices due, the one waiting
/// longest goes first (earliest due time; on a tie, the one polled least recently), so a device
/// due later is never starved by one listed earlier. A task per device would cost a task and its
/// stack for every device while polling no faster.
///
/// A reload stops the poller softly (``stop(hard:)``): the poll under way finishes and the task
/// hands back every device's poll state, so unchanged devices go on with the same schedule,
/// health and change filters, and the poller starts again with the devices added or changed.
final class BusUnit: Sendable {
    let settings: BusSettings
    /// A ``ModbusBus`` when running; a scripted one in in-process tests.
    let bus: any DeviceBus

    private struct Control: Sendable {
        var task: Task<[DevicePoller], Never>?
        /// The poll states handed to the loop, until it takes them: passed through here, not
        /// captured by the task's closure, so that the loop holds the only reference and its
        /// first poll does not copy every poller (and every array in it) while the closure keeps
        /// the originals (1.4 KiB per device, measured with heaptrack).
        var handedOver: [DevicePoller] = []
        /// Stop after the poll under way.
        var stopRequested = false
        /// Between polls, in its sleep (a soft stop may cancel it there, never mid-poll: a
        /// cancelled bus request would count as a failed poll).
        var sleeping = false
    }
    private let control = Mutex(Control())

    init(settings: BusSettings, bus: any DeviceBus) {
        self.settings = settings
        self.bus = bus
    }

    /// Polls `pollers` until stopped. An unstructured task, because units start and stop one by
    /// one at a reload while the rest keeps running (a task group cannot cancel one child); the
    /// runtime stops every unit, and awaits its task, before it ends.
    /// `executor`: where the loop's own code runs (the MQTT client's loop, which takes what it
    /// publishes); the bus requests run on the bus's thread either way.
    func start(_ pollers: [DevicePoller], sink: GatewayPollSink, executor: (any TaskExecutor)?, liveness: Liveness?, logger: Logger) {
        guard !pollers.isEmpty else { return }
        control.withLock { $0 = Control(handedOver: pollers) }
        let task = Task(executorPreference: executor) { await self.pollLoop(sink: sink, liveness: liveness, logger: logger) }
        control.withLock { $0.task = task }
    }

    /// Ends the poller and returns its devices' poll states (none if it was not running).
    /// `hard`: cancelled at once, even mid-poll (the gateway is stopping); otherwise after the
    /// poll under way.
    func stop(hard: Bool) async -> [DevicePoller] {
        let (task, asleep) = control.withLock { c -> (Task<[DevicePoller], Never>?, Bool) in
            c.stopRequested = true
            defer { c.task = nil }
            return (c.task, c.sleeping)
        }
        guard let task else { return [] }
        if hard || asleep { task.cancel() }
        return await task.value
    }

    /// True when the loop may sleep; false when a stop was asked (it ends instead).
    private func willSleep() -> Bool {
        control.withLock { c in
            guard !c.stopRequested else { return false }
            c.sleeping = true
            return true
        }
    }

    /// After the sleep: false when a stop was asked meanwhile.
    private func wokeUp() -> Bool {
        control.withLock { c in
            c.sleeping = false
            return !c.stopRequested
        }
    }

    private var stopRequested: Bool { control.withLock { $0.stopRequested } }

    private func pollLoop(sink: GatewayPollSink, liveness: Liveness?, logger: Logger) async -> [DevicePoller] {
        var pollers = control.withLock { c in
            defer { c.handedOver = [] }
            return c.handedOver
        }
        // Liveness: one poll takes at most its start deadline (a period) plus a timeout per request.
        let loop = liveness?.register("poller of bus \(settings.name)")
        let timeout = bus.responseTimeout
        let longestPoll = pollers.map { $0.schedule.period + timeout * ($0.requestsPerPoll + 1) }.max() ?? .seconds(1)
        defer { loop?.idle() }
        #if DEBUG
        let stallAt = DebugHooks.pollerStall.map { ContinuousClock.now + $0 }
        #endif
        // When each device is due and when its last poll started, kept apart from the pollers:
        // reading them from the pollers in the scan copied every poller (100 retains and
        // releases of its fields per poll at 100 devices, measured with perf).
        var keys = pollers.map { (at: $0.schedule.next, last: $0.lastStart) }
        while !Task.isCancelled && !stopRequested {
            // Earliest due time; on a tie, polled least recently.
            var due = 0
            for i in keys.indices.dropFirst() where keys[i].at < keys[due].at || (keys[i].at == keys[due].at && keys[i].last < keys[due].last) {
                due = i
            }
            // Devices due together are polled back to back (a sleep into the past still costs a timer).
            if keys[due].at > .now {
                loop?.expect(within: keys[due].at - .now)
                guard willSleep() else { break }
                let slept = (try? await Task.sleep(until: keys[due].at, clock: .continuous)) != nil
                guard wokeUp(), slept else { break }
            }
            #if DEBUG
            if let stallAt, ContinuousClock.now >= stallAt {
                // A test's hung poll loop (GATEWAY_DEBUG_STALL_POLLER_AFTER_S; debug builds only).
                logger.warning("debug hook: this poller now hangs")
                try? await Task.sleep(for: .seconds(86_400))
                return pollers
            }
            #endif
            loop?.expect(within: longestPoll)
            await pollers[due].poll(bus, sink: sink)
            keys[due] = (pollers[due].schedule.next, pollers[due].lastStart)
        }
        return pollers
    }
}

extension GatewayRuntime {
    /// How one poll went, for the device's health: only a device that was asked and did not
    /// answer (or answered garbage) counts as failed; a poll the bus could not start in time
    /// (`busBusy`: commands ahead of it) says nothing about the device.
    enum PollOutcome: Equatable {
        case answered, failed, notStarted

        init(_ results: [Int: ModbusBus.ItemResult]) {
            var sawBusy = false, sawFailure = false
            for result in results.values {
                switch result {
                case .failure(.exception(.gatewayPathUnavailable, _)), .failure(.exception(.gatewayTargetFailedToRespond, _)):
                    sawFailure = true   // a TCP gateway in front of it answered: the device did not
                case .success, .failure(.exception):
                    self = .answered    // data, or a refusal: either way the device is alive
                    return
                case .failure(.busBusy), .failure(.closed): sawBusy = true
                case .failure: sawFailure = true
                }
            }
            self = sawBusy && !sawFailure ? .notStarted : .failed
        }
    }
}

/// One device's poll state on its bus's poller: schedule, read plan, health, change filters.
struct DevicePoller {
    let settings: DeviceSettings
    let gateway: GatewaySettings
    /// The gateway's logger, shared by every device (the device's name is added when something
    /// is logged, not kept in a copy per device: 0.4 KiB each).
    private let sharedLogger: Logger
    var log: Logger {
        var l = sharedLogger
        l[metadataKey: "device"] = "\(settings.name)"
        return l
    }
    var schedule: PollSchedule
    var readPlan: ReadPlan
    var health: DeviceHealth
    var backoff: OfflineBackoff
    var filters: [ChangeFilter]
    /// `[gateway] refresh_s`: an unchanged value is published again this often.
    let refresh: Duration?
    var failingPoints: Set<Int> = []
    var requestsPerPoll: Int
    /// When its latest poll started (the tie-break between devices due at the same time).
    var lastStart: ContinuousClock.Instant
    /// Values its commander published after writes: the change filters learn them.
    let readBacks: ReadBacks?
    /// Where its values go: each value topic is built when a value is published (kept built,
    /// ten topics a device cost about 600 bytes).
    let topics: TopicLayout
    /// Its metrics and live status (operations listener on).
    let meter: DeviceMeter?
    /// Counter and latch points (``PointEvents``): their trackers and event topics.
    var events: [Int: EventKind] = [:]
    let eventTopics: [Int: String]
    /// Where counters' readings are kept across restarts (nil: not kept).
    let counters: CounterStore?
    /// Counters whose first reading counts from an earlier run's (its event has `"gap":true`).
    var counterGaps: Set<Int> = []
    /// Clears a latch on the device (through its commander, in line with commands).
    let clearLatch: (@Sendable (Int) -> Void)?
    /// Latches cleared on the device (read back clear by the commander) after the poll that read
    /// them began: the next poll's reading is the device's state after the clear.
    var latchClearedAt: [Int: ContinuousClock.Instant] = [:]
    var previousStart: ContinuousClock.Instant?
    /// The runtime's ``GatewayRuntime/valuesGeneration`` this poller last acted on.
    var valuesGeneration = 0

    init(_ device: GatewayPlan.Device, gateway: GatewaySettings, topics: TopicLayout, logger: Logger, start: ContinuousClock.Instant,
         readBacks: ReadBacks?, meter: DeviceMeter?, clearLatch: (@Sendable (Int) -> Void)? = nil, counters: CounterStore? = nil) {
        self.counters = counters
        self.readBacks = readBacks
        self.meter = meter
        self.topics = topics
        settings = device.settings
        self.gateway = gateway
        sharedLogger = logger
        schedule = PollSchedule(period: .milliseconds(settings.pollMs), start: start)
        readPlan = device.readPlan
        health = DeviceHealth(offlineAfter: settings.offlineAfter)
        backoff = OfflineBackoff(period: .milliseconds(settings.pollMs), cap: .milliseconds(settings.offlinePollMs))
        self.refresh = gateway.refreshSeconds > 0 ? .seconds(gateway.refreshSeconds) : nil
        filters = Array(repeating: ChangeFilter(), count: settings.points.count)
        requestsPerPoll = device.readPlan.requests.count
        lastStart = start
        var topicsByPoint: [Int: String] = [:]
        for (i, p) in device.settings.points.enumerated() {
            guard var kind = p.eventKind else { continue }
            if case .counter(let c) = kind, let kept = counters?.take(CounterStore.key(device: device.settings.name, point: p.name)) {
                kind = .counter(CounterTracker(bits: c.bits, last: kept.count))
                if kept.spansGap { counterGaps.insert(i) }
            }
            events[i] = kind
            topicsByPoint[i] = topics.event(device: device.settings.name, point: p.name)
        }
        eventTopics = topicsByPoint
        self.clearLatch = clearLatch
    }

    /// The poll due at `schedule.next`: read, update health, publish what changed, schedule
    /// the next one (an offline device is probed with backoff). `clock`: the time (a test's own).
    mutating func poll(_ bus: some PollingBus, sink: some PollSink, clock: () -> ContinuousClock.Instant = { .now }) async {
        let gw = gateway
        let started = clock()
        lastStart = started
        // The poller runs one poll at a time, so only commands can hold it up: a poll that
        // cannot start within one period is dropped, not queued up.
        let results = await bus.pollDevice(&readPlan, unit: settings.unit, deadline: started + schedule.period)
        if readPlan.requests.count != requestsPerPoll {
            requestsPerPoll = readPlan.requests.count
            log.notice("device refused a merged read (illegal data address): now \(requestsPerPoll) requests per poll")
        }
        let outcome = GatewayRuntime.PollOutcome(results)
        if let meter {
            let (result, error) = DeviceMeter.pollResult(outcome, results)
            meter.poll(result: result, error: error, started: started, duration: clock() - started, previousStart: previousStart)
            previousStart = started
        }
        switch outcome {
        case .answered:
            if health.pollSucceeded() != nil {
                log.info("device online")
                backoff.reset()
                await sink.publishStatus(settings.name, .online)
            }
        case .failed:
            if health.pollFailed() != nil {
                let why = results.values.compactMap { if case .failure(let e) = $0 { "\(e)" } else { nil } }.first ?? "no answer"
                log.warning("device offline after \(settings.offlineAfter) failed polls: \(why); probing it every \(backoff.cap) at most")
                await sink.publishStatus(settings.name, .offline)
            }
        case .notStarted:
            log.debug("poll skipped: the bus was busy with commands for a whole period")
        }
        let now = clock()
        let generation = sink.valuesGeneration
        if generation != valuesGeneration {
            valuesGeneration = generation
            for i in filters.indices { filters[i].forget() }
        }
        // A point read back after this poll began: this poll may have read it before the write
        // (the command overtook the poll on the bus); its value waits for the next poll.
        var readBackDuringPoll: Set<Int> = []
        if let readBacks {
            for (i, r) in readBacks.take() where i < filters.count {
                filters[i].learn(r.value, now: now)
                if r.at > started { readBackDuringPoll.insert(i) }
            }
            for (i, at) in readBacks.takeLatchClears() { latchClearedAt[i] = at }
        }
        for (i, point) in settings.points.enumerated() {
            guard let result = results[i] else { continue }
            switch result {
            case .success(let read):
                failingPoints.remove(i)
                guard let value = try? point.value(from: read) else { continue }
                if let cleared = latchClearedAt[i], cleared <= started {
                    // Cleared before this poll began: a latch read set now was set again since.
                    events[i]?.latchCleared()
                    latchClearedAt[i] = nil
                }
                var published = false
                if events[i] != nil, let event = events[i]?.observe(value) {
                    await publish(event, point: i, sink: sink, gap: counterGaps.contains(i))
                    published = true
                }
                if point.counter {
                    // Kept for the next start (``CounterStore``): what it counts while down is published then.
                    counterGaps.remove(i)
                    if let n = events[i]?.lastCount { counters?.record(CounterStore.key(device: settings.name, point: point.name), n) }
                } else if !published, point.latch, point.latchClear, value == .bool(true), latchClearedAt[i] == nil {
                    // Still set, and no clear has landed since it was seen: the clear failed
                    // (device busy, a timeout). Asked again, without a second event.
                    clearLatch?(i)
                }
                guard !readBackDuringPoll.contains(i), filters[i].shouldPublish(value, now: now, deadband: point.deadband, refresh: refresh) else { continue }
                meter?.value(point: i, value)
                await sink.publishData(to: topics.value(device: settings.name, point: point.name), payload: ValuePayload(value, point: point, gateway: gw).bytes,
                                       retain: point.retain ?? gw.retain, compactable: true, ts: unixMilliseconds())
            case .failure(let error):
                if outcome == .answered, error != .busBusy, failingPoints.insert(i).inserted {
                    var l = log
                    l[metadataKey: "point"] = "\(point.name)"
                    l.warning("point read failed: \(error)")
                }
            }
        }
        if health.state == .offline {
            // A dead unit costs the bus one timeout per probe, not one per period.
            schedule.restart(at: now + backoff.next())
        } else if schedule.advance(now: now), outcome == .answered, now - started > schedule.period {
            // Only its own slow poll is worth a warning (not the wait behind another device).
            log.warning("poll overran its period of \(settings.pollMs) ms (\(schedule.overruns) ticks skipped so far)")
        }
    }

    /// An event seen by this poll: published (QoS 1, not retained); a latch seen set is cleared
    /// on the device unless `latch_clear = false`; a counter reset is said in the log.
    private func publish(_ event: PointEvent, point i: Int, sink: some PollSink, gap: Bool = false) async {
        let point = settings.points[i]
        switch event {
        case .reset(let count):
            log.notice("counter \(point.name) went down (a device reset?): counting again from \(count)")
        case .set where point.latchClear:
            clearLatch?(i)
        default:
            break
        }
        guard let topic = eventTopics[i] else { return }
        let ts = unixMilliseconds()
        await sink.publishData(to: topic, payload: event.payload(ts: ts, gap: gap), retain: false, compactable: false, ts: ts)
    }
}
