import GatewayConfig
import Logging
import Modbus
import MQTT
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Device statuses as last published (republished after every reconnect).
actor StatusBoard {
    private var states: [String: DeviceHealth.State] = [:]
    func set(_ device: String, _ state: DeviceHealth.State) { states[device] = state }
    func all() -> [String: DeviceHealth.State] { states }
    func state(_ device: String) -> DeviceHealth.State { states[device] ?? .unknown }
}

/// The running gateway: one MQTT connection (will `offline`, birth `online` after every connect),
/// one poll task per bus (its devices in turn, each on its own schedule), values and availability
/// published, commands from `<base>/+/+/set` and `/get` run by one ``DeviceCommander`` per device
/// (its task starts with its first command). A `Service`: on graceful
/// shutdown it stops polling and taking commands, ends pending pulses (the off is written),
/// publishes `offline` for every device and itself, then disconnects.
public final class GatewayRuntime: Service, Sendable {
    public let plan: GatewayPlan
    let client: MQTTClient
    private let buses: [String: ModbusBus]
    private let logger: Logger
    private let board = StatusBoard()
    private let commanders: [String: DeviceCommander]
    private let serialRunners: [String: SerialDeviceRunner]
    let context: DeviceCommander.Context
    /// Metrics and live status for the operations listener; nil when it is off.
    public let telemetry: GatewayTelemetry?
    /// Progress of the pollers, serial lines and command dispatcher (`/healthz`, the watchdog);
    /// nil when neither is on (nothing is ticked then).
    public let liveness: Liveness?
    /// Home Assistant discovery (nil when `[homeassistant] enabled = false`).
    let homeAssistant: HomeAssistantPublisher?
    /// Moved on when every poller must publish its current values again (Home Assistant's birth).
    let valuesGeneration = ValuesGeneration()
    /// Fires at the first connect to the broker (systemd's `READY=1`).
    public let firstConnect = OneShot()

    /// `password`: read by the caller (the CLI reads `mqtt.password_file` or env `GATEWAY_MQTT_PASSWORD`).
    /// `telemetry`: given when the operations listener is on.
    /// `watchLoops`: keep ``liveness`` (for `/healthz` or systemd's watchdog).
    public init(configuration: GatewayConfiguration, password: [UInt8]?, telemetry: GatewayTelemetry? = nil,
                watchLoops: Bool = true, version: String = "dev", logger: Logger = Logger(label: "gateway")) {
        self.plan = GatewayPlan(configuration)
        let liveness = watchLoops ? Liveness() : nil
        self.liveness = liveness
        self.logger = logger
        self.telemetry = telemetry
        let broker = configuration.mqtt.broker
        var mqtt = MQTTConfiguration(host: broker.host, port: broker.port, tls: broker.tls ? TLSOptions() : nil,
                                     clientIdentifier: configuration.mqtt.clientID ?? "gateway-\(configuration.gateway.id)")
        mqtt.version = configuration.mqtt.protocolVersion == 3 ? .v3_1_1 : .v5
        mqtt.keepAlive = UInt16(configuration.mqtt.keepAlive)
        mqtt.cleanStart = configuration.mqtt.cleanSession
        mqtt.username = configuration.mqtt.username
        mqtt.password = password
        mqtt.will = Will(topic: plan.topics.status, payload: Array("offline".utf8), qos: .atLeastOnce, retain: true)
        if mqtt.tls != nil {   // mqtts:// (the config checker refuses TLS files with mqtt://)
            mqtt.tls = TLSOptions(caFile: configuration.mqtt.caFile, certificateFile: configuration.mqtt.certFile, keyFile: configuration.mqtt.keyFile)
        }
        if let telemetry {
            let histogram = telemetry.mqttAckRoundTrip
            mqtt.onAcknowledged = { histogram.recordNanoseconds($0.nanoseconds) }
        }
        var mqttLogger = logger
        mqttLogger[metadataKey: "component"] = "mqtt"
        self.client = MQTTClient(configuration: mqtt, logger: mqttLogger)
        var buses: [String: ModbusBus] = [:]
        for b in configuration.buses {
            var l = logger
            l[metadataKey: "bus"] = "\(b.name)"
            let bus = ModbusBus(configuration: b.busConfiguration, logger: l)
            telemetry?.bus(b.name)?.attach(bus)
            buses[b.name] = bus
        }
        self.buses = buses
        let (journal, leftOn) = PulseJournal.open(directory: configuration.gateway.stateDirectory, pulses: Set(plan.pulsePoints), logger: logger)
        if !leftOn.isEmpty {
            logger.warning("pulses left on by an earlier run that did not end them, switching them off: \(leftOn.sorted().joined(separator: ", "))")
        }
        telemetry?.journalWritable.set(journal.path != nil ? 1.0 : 0.0)
        let context = DeviceCommander.Context(topics: plan.topics, gateway: configuration.gateway, client: client, board: board, journal: journal,
                                              telemetry: telemetry)
        self.context = context
        var commanders: [String: DeviceCommander] = [:]
        for d in plan.devices {
            guard let bus = buses[d.bus.name] else { continue }
            commanders[d.settings.name] = DeviceCommander(device: d.settings, bus: bus, timeoutMs: d.bus.timeoutMs, context: context, logger: logger)
        }
        self.commanders = commanders
        var serialRunners: [String: SerialDeviceRunner] = [:]
        for d in configuration.serialDevices {
            serialRunners[d.name] = SerialDeviceRunner(settings: d, context: context, liveness: liveness, logger: logger)
        }
        self.serialRunners = serialRunners
        if configuration.homeAssistant.enabled {
            let topics = plan.topics, values = valuesGeneration
            // After Home Assistant's birth: the statuses again, and every poller publishes its
            // current values at its next poll.
            self.homeAssistant = HomeAssistantPublisher(prefix: configuration.homeAssistant.prefix, gatewayID: configuration.gateway.id,
                                                        client: client, logger: logger,
                                                        discovery: { HomeAssistantDiscovery(configuration: configuration, topics: topics, version: version) },
                                                        republish: {
                                                            await context.publishStatuses()
                                                            values.advance()
                                                        })
        } else {
            self.homeAssistant = nil
        }
    }


    public func run() async throws {
        let base = plan.base
        logger.info("gateway starting", metadata: ["base": "\(base)", "devices": "\(plan.devices.count)"])
        await client.start()
        for c in commanders.values { c.start() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.watchConnection() }
            if let homeAssistant { group.addTask { await homeAssistant.run() } }
            group.addTask { await self.dispatchCommands() }
            for (name, bus) in buses {
                let devices = plan.devices.filter { $0.bus.name == name }
                if !devices.isEmpty { group.addTask { await self.pollBus(bus, devices: devices) } }
            }
            for runner in serialRunners.values {
                group.addTask { await runner.run() }
            }
            // Until SIGTERM/SIGINT (or cancellation).
            try? await gracefulShutdown()
            homeAssistant?.finish()
            group.cancelAll()
        }
        // No more polls or commands; pending pulses are switched off before going offline.
        await withTaskGroup(of: Void.self) { group in
            for c in commanders.values { group.addTask { await c.stop() } }
        }
        // Polling has stopped: say so, then leave.
        logger.info("gateway stopping: publishing offline")
        let topics = plan.topics
        let statuses = plan.devices.map { topics.status($0.settings.name) }
            + plan.configuration.serialDevices.map { topics.status($0.name) } + [topics.status]
        await Self.leave(client, offline: statuses, within: .seconds(3), logger: logger)
        for bus in buses.values { bus.close() }
        logger.info("gateway stopped")
    }

    /// The last word: `offline` on every status topic, ahead of any telemetry backlog. Once the
    /// broker has acknowledged them all, the backlog gets what is left of `within` and the
    /// client disconnects cleanly. If they are not acknowledged in time (a broker that stopped
    /// reading, a full in-flight window), the socket is closed without DISCONNECT, so that the
    /// broker publishes the will: a stop never leaves `online` retained.
    static func leave(_ client: MQTTClient, offline topics: [String], within timeout: Duration, logger: Logger) async {
        let deadline = ContinuousClock.now + timeout
        let acknowledged = await withTaskGroup(of: Bool?.self) { group -> Bool in
            for topic in topics {
                group.addTask {
                    do {
                        try await client.publish(to: topic, payload: Array("offline".utf8), qos: .atLeastOnce, retain: true, ahead: true)
                        return true
                    } catch {
                        return false
                    }
                }
            }
            group.addTask {   // the timer; nil when it fires
                do { try await Task.sleep(until: deadline, clock: .continuous) } catch { return true }
                return nil
            }
            var acked = 0
            while let result = await group.next() {
                switch result {
                case .some(true):
                    acked += 1
                    if acked == topics.count {
                        group.cancelAll()
                        return true
                    }
                case .some(false), .none:
                    // Not acknowledged: no clean DISCONNECT (it would cancel the will). Closing
                    // also ends the publishes still waiting.
                    await client.closeAbruptly()
                    group.cancelAll()
                    return false
                }
            }
            return false
        }
        if acknowledged {
            await client.disconnect(timeout: max(deadline - .now, .milliseconds(100)))
        } else {
            logger.warning("offline statuses not acknowledged within \(timeout): closed the connection without DISCONNECT, so the broker publishes the will (offline)")
        }
    }

    /// Routes `<base>/<device>/<point>/set|get` to the device's commander; answers unknown devices.
    private func dispatchCommands() async {
        let topics = plan.topics
        let loop = liveness?.register("command dispatcher")
        defer { loop?.idle() }
        for await message in client.messages {
            // Handing a command on never waits for a device; only an answer to the broker may.
            loop?.expect(within: .seconds(5))
            defer { loop?.idle() }
            let receivedAt = ContinuousClock.now
            if let homeAssistant, homeAssistant.handles(message.topic) {
                homeAssistant.receive(message)
                continue
            }
            guard let command = topics.parse(message.topic) else {
                logger.debug("ignoring a message on \(message.topic.logSafe)")
                continue
            }
            let deviceName = command.device, pointName = command.point
            let isSet = command.kind == .set
            let taken: Bool
            if let runner = serialRunners[deviceName] {
                taken = runner.submit(isSet ? .set(message, command: pointName, receivedAt: receivedAt) : .get(message, point: pointName))
            } else if let commander = commanders[deviceName] {
                taken = commander.submit(isSet ? .set(message, point: pointName, receivedAt: receivedAt)
                                               : .get(message, point: pointName, receivedAt: receivedAt))
            } else {
                await refuse(message, isSet: isSet, receivedAt: receivedAt, why: "unknown device '\(deviceName)'")
                continue
            }
            if !taken {
                await refuse(message, isSet: isSet, receivedAt: receivedAt, why: "busy: device '\(deviceName)' already has \(CommandRequest.pendingPerDevice) commands waiting (not queued)")
            }
        }
    }

    /// Answers a command that goes no further than the dispatcher (`/get`: only to an MQTT 5
    /// response topic, as its other answers).
    private func refuse(_ message: MQTTMessage, isSet: Bool, receivedAt: ContinuousClock.Instant, why: String) async {
        if let telemetry, let command = plan.topics.parse(message.topic) {
            telemetry.commandAnswered(device: command.device, point: command.point,
                                      value: String(decoding: message.payload.prefix(64), as: UTF8.self),
                                      answer: .refused(why), receivedAt: receivedAt, wroteAt: nil)
        }
        logger.notice("command \(message.topic.logSafe) -> refused: \(why.logSafe)", metadata: ["topic": "\(message.topic.logSafe)"])
        await context.answer(.refused(why), to: message, fallback: isSet ? "\(message.topic)/result" : nil, logger: logger)
    }

    /// Command subscriptions at QoS 2; with MQTT 5 no retained commands at subscribe (retain
    /// handling 2) and retain-as-published, so a live retained command is seen and refused.
    private var commandSubscriptions: [Subscription] {
        plan.subscribedTopics.map { Subscription($0, qos: .exactlyOnce, retainAsPublished: true, retainHandling: .doNotSend) }
    }

    /// Birth and statuses after every (re)connect; broker loss logged once per episode.
    private func watchConnection() async {
        var subscribed = false
        for await event in client.events {
            guard !Task.isCancelled else { return }
            switch event {
            case .connected:
                // The client restores granted subscriptions itself after later reconnects.
                if !subscribed {
                    do {
                        let codes = try await client.subscribe(commandSubscriptions)
                        if let bad = codes.first(where: { $0.isFailure }) {
                            logger.error("broker refused the command subscriptions: \(bad); commands will not work")
                        }
                        subscribed = true
                        logger.info("subscribed to commands: \(plan.subscribedTopics.joined(separator: ", "))")
                    } catch {
                        logger.error("subscribing to commands failed: \(error); retrying after the next connect")
                    }
                }
                await context.publishStatuses()
                logger.info("broker connected: birth and statuses published")
                firstConnect.fire()
                homeAssistant?.connected()
                telemetry?.mqttConnected(true)
            case .disconnected(let reason):
                telemetry?.mqttConnected(false, reason: reason)
                logger.warning("broker lost: \(reason); buffering up to \(client.configuration.queueLimit) messages")
            default:
                break
            }
        }
    }

    /// One poller per bus: the bus runs one request at a time anyway, so its devices are polled in
    /// turn by one task, each on its own drift-free schedule. Of the devices due, the one waiting
    /// longest goes first (earliest due time; on a tie, the one polled least recently), so a device
    /// due later is never starved by one listed earlier. A task per device would cost a task and
    /// its stack for every device while polling no faster.
    private func pollBus(_ bus: ModbusBus, devices: [GatewayPlan.Device]) async {
        let start = ContinuousClock.now
        var pollers = devices.map { DevicePoller($0, gateway: plan.configuration.gateway, topics: plan.topics, logger: logger, start: start,
                                                 readBacks: commanders[$0.settings.name]?.readBacks,
                                                 meter: telemetry?.device($0.settings.name)) }
        guard !pollers.isEmpty else { return }
        // Liveness: one poll takes at most its start deadline (a period) plus a timeout per request.
        let loop = liveness?.register("poller of bus \(bus.configuration.name)")
        let timeout = bus.configuration.responseTimeout
        let longestPoll = pollers.map { $0.schedule.period + timeout * ($0.requestsPerPoll + 1) }.max() ?? .seconds(1)
        defer { loop?.idle() }
        #if DEBUG
        let stallAt = DebugHooks.pollerStall.map { start + $0 }
        #endif
        // When each device is due and when its last poll started, kept apart from the pollers:
        // reading them from the pollers in the scan copied every poller (100 retains and
        // releases of its fields per poll at 100 devices, measured with perf).
        var keys = pollers.map { (at: $0.schedule.next, last: $0.lastStart) }
        while !Task.isCancelled {
            // Earliest due time; on a tie, polled least recently.
            var due = 0
            for i in keys.indices.dropFirst() where keys[i].at < keys[due].at || (keys[i].at == keys[due].at && keys[i].last < keys[due].last) {
                due = i
            }
            // Devices due together are polled back to back (a sleep into the past still costs a timer).
            if keys[due].at > .now {
                loop?.expect(within: keys[due].at - .now)
                do { try await Task.sleep(until: keys[due].at, clock: .continuous) } catch { return }
            }
            #if DEBUG
            if let stallAt, ContinuousClock.now >= stallAt {
                // A test's hung poll loop (GATEWAY_DEBUG_STALL_POLLER_AFTER_S; debug builds only).
                logger.warning("debug hook: this poller now hangs")
                try? await Task.sleep(for: .seconds(86_400))
                return
            }
            #endif
            loop?.expect(within: longestPoll)
            await pollers[due].poll(bus, runtime: self)
            keys[due] = (pollers[due].schedule.next, pollers[due].lastStart)
        }
    }

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

    /// One device's poll state on its bus's poller: schedule, read plan, health, change filters.
    private struct DevicePoller {
        let settings: DeviceSettings
        var log: Logger
        var schedule: PollSchedule
        var readPlan: ReadPlan
        var health: DeviceHealth
        var backoff: OfflineBackoff
        var filters: [ChangeFilter]
        var failingPoints: Set<Int> = []
        var requestsPerPoll: Int
        /// When its latest poll started (the tie-break between devices due at the same time).
        var lastStart: ContinuousClock.Instant
        /// Values its commander published after writes: the change filters learn them.
        let readBacks: ReadBacks?
        /// Each point's value topic, built once.
        let valueTopics: [String]
        /// Its metrics and live status (operations listener on).
        let meter: DeviceMeter?
        var previousStart: ContinuousClock.Instant?
        /// The runtime's ``GatewayRuntime/valuesGeneration`` this poller last acted on.
        var valuesGeneration = 0

        init(_ device: GatewayPlan.Device, gateway: GatewaySettings, topics: TopicLayout, logger: Logger, start: ContinuousClock.Instant,
             readBacks: ReadBacks?, meter: DeviceMeter?) {
            self.readBacks = readBacks
            self.meter = meter
            valueTopics = device.settings.points.map { topics.value(device: device.settings.name, point: $0.name) }
            settings = device.settings
            log = logger
            log[metadataKey: "device"] = "\(settings.name)"
            schedule = PollSchedule(period: .milliseconds(settings.pollMs), start: start)
            readPlan = device.readPlan
            health = DeviceHealth(offlineAfter: settings.offlineAfter)
            backoff = OfflineBackoff(period: .milliseconds(settings.pollMs), cap: .milliseconds(settings.offlinePollMs))
            let refresh: Duration? = gateway.refreshSeconds > 0 ? .seconds(gateway.refreshSeconds) : nil
            filters = settings.points.map { ChangeFilter(deadband: $0.deadband, refresh: refresh) }
            requestsPerPoll = device.readPlan.requests.count
            lastStart = start
        }

        /// The poll due at `schedule.next`: read, update health, publish what changed, schedule
        /// the next one (an offline device is probed with backoff).
        mutating func poll(_ bus: ModbusBus, runtime: GatewayRuntime) async {
            let gw = runtime.plan.configuration.gateway
            let started = ContinuousClock.now
            lastStart = started
            // The poller runs one poll at a time, so only commands can hold it up: a poll that
            // cannot start within one period is dropped, not queued up.
            let results = await bus.poll(&readPlan, unit: settings.unit, deadline: started + schedule.period)
            if readPlan.requests.count != requestsPerPoll {
                requestsPerPoll = readPlan.requests.count
                log.notice("device refused a merged read (illegal data address): now \(requestsPerPoll) requests per poll")
            }
            let outcome = PollOutcome(results)
            if let meter {
                let (result, error) = DeviceMeter.pollResult(outcome, results)
                meter.poll(result: result, error: error, started: started, duration: .now - started, previousStart: previousStart)
                previousStart = started
            }
            switch outcome {
            case .answered:
                if health.pollSucceeded() != nil {
                    log.info("device online")
                    backoff.reset()
                    await runtime.publishStatus(settings.name, .online)
                }
            case .failed:
                if health.pollFailed() != nil {
                    let why = results.values.compactMap { if case .failure(let e) = $0 { "\(e)" } else { nil } }.first ?? "no answer"
                    log.warning("device offline after \(settings.offlineAfter) failed polls: \(why); probing it every \(backoff.cap) at most")
                    await runtime.publishStatus(settings.name, .offline)
                }
            case .notStarted:
                log.debug("poll skipped: the bus was busy with commands for a whole period")
            }
            let now = ContinuousClock.now
            let generation = runtime.valuesGeneration.current
            if generation != valuesGeneration {
                valuesGeneration = generation
                for i in filters.indices { filters[i].forget() }
            }
            if let learned = readBacks?.take() {
                for (i, value) in learned where i < filters.count { filters[i].learn(value, now: now) }
            }
            for (i, point) in settings.points.enumerated() {
                guard let result = results[i] else { continue }
                switch result {
                case .success(let read):
                    failingPoints.remove(i)
                    guard let value = try? point.value(from: read), filters[i].shouldPublish(value, now: now) else { continue }
                    meter?.value(point: i, value)
                    try? await runtime.client.enqueue(to: valueTopics[i], payload: valuePayload(value, point: point, gateway: gw),
                                                      qos: .atLeastOnce, retain: point.retain ?? gw.retain)
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
    }

    fileprivate func publishStatus(_ device: String, _ state: DeviceHealth.State) async {
        await context.publishStatus(device, state)
    }
}

/// A counter the pollers compare with their own: when it moves, each forgets what it published
/// and publishes every current value at its next poll.
final class ValuesGeneration: Sendable {
    private let value = Atomic<Int>(0)
    var current: Int { value.load(ordering: .relaxed) }
    func advance() { value.add(1, ordering: .relaxed) }
}

/// An event that happens once; waiters before it wait (bounded), waiters after it return at once.
public final class OneShot: Sendable {
    private struct State {
        var fired = false
        var nextID = 0
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        /// Waiters that gave up before they were parked (a timer or cancellation got there first).
        var abandoned: Set<Int> = []
    }
    private let state = Mutex(State())

    public init() {}

    public func fire() {
        let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            guard !s.fired else { return [] }
            s.fired = true
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in waiters { w.resume(returning: true) }
    }

    /// True when the event came (at once if it already had); false after `timeout` or when the
    /// waiting task is cancelled.
    public func wait(atMost timeout: Duration) async -> Bool {
        let id = state.withLock { s -> Int in s.nextID += 1; return s.nextID }
        let timer = Task { [weak self] in
            guard (try? await Task.sleep(for: timeout)) != nil else { return }   // cancelled: the wait is over
            self?.give(up: id)
        }
        defer { timer.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { s -> Bool? in
                    if s.fired { return true }
                    if s.abandoned.remove(id) != nil || Task.isCancelled { return false }
                    s.waiters[id] = c
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            give(up: id)
        }
    }

    /// Waiter `id` stops waiting (timed out or cancelled): resumed with false if still parked.
    private func give(up id: Int) {
        let parked = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            if let c = s.waiters.removeValue(forKey: id) { return c }
            if !s.fired { s.abandoned.insert(id) }
            return nil
        }
        parked?.resume(returning: false)
    }
}
