import GatewayConfig
import Logging
import Modbus
import MQTT
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// The Gateway module: the domain. It turns a `GatewayConfiguration` into a running gateway
// (``GatewayRuntime``, this file): ``GatewayPlan`` works out buses, read plans and topics
// (``TopicLayout``, the one place topics are named); a ``BusUnit`` per bus polls its devices
// (``DevicePoller``, `BusPoller.swift`) and hands values and statuses to a ``PollSink``; a
// ``DeviceCommander`` (Modbus) or ``SerialDeviceRunner`` (serial) per device runs its commands on
// one ``DeviceJobQueue``, each `/set` through the ``CommandPipeline`` checks, pulses through the
// ``PulseStateMachine``; data messages go through the ``Outbox`` when the broker is away. Beside
// them, each in its own file: reload (`Reload.swift`, `ConfigurationChange.swift`), Home Assistant
// discovery, signed commands, fail-safe values, point events, metrics (`Telemetry.swift`).
//
// Concurrency, and why each idiom is where it is:
// - Structured tasks where lifetimes nest: the runtime's service `run`, its stop (a task group
//   per kind of unit), the serial device's connection loop.
// - Unstructured tasks where units start and stop one by one while the rest runs (a bus poller,
//   a serial device, a device's job task: ``BusUnit/start(_:sink:executor:liveness:logger:)``,
//   ``DeviceJobQueue``) and for pulse timers (each cancellable on its own). The runtime stops
//   every unit, and awaits it, before it ends. These tasks and the command dispatcher prefer
//   the MQTT client's loop as their executor (`MQTTClient.taskExecutor`): what they publish,
//   and the commands they take, cross no thread but to the bus.
// - A `Mutex` with parked continuations where a waiter must be woken without a task per item
//   (``DeviceJobQueue``, ``WakeSignal``); a plain `Mutex` for state read on the command path
//   (``StatusBoard``).
// - Actors for state several tasks read and write (`MQTTClient`, on its
//   connection's event loop; `ModbusBus`, on a custom executor: one thread per bus, because
//   libmodbus blocks).
// - A serial `DispatchQueue` for blocking file work off the cooperative pool and the client's
//   loop (``Outbox``'s SQLite, ``PulseJournal``'s fdatasync), awaited with `DispatchQueue.run`.
// - `AsyncStream` only where a library hands out a stream (`MQTTClient.messages`).

/// Device statuses as last published (republished after every reconnect). A lock, not an
/// actor: every command reads it on its way to the device, and an actor there cost a hop.
final class StatusBoard: Sendable {
    private let states = Mutex<[String: DeviceHealth.State]>([:])
    func set(_ device: String, _ state: DeviceHealth.State) { states.withLock { $0[device] = state } }
    func remove(_ device: String) { _ = states.withLock { $0.removeValue(forKey: device) } }
    func all() -> [String: DeviceHealth.State] { states.withLock { $0 } }
    func state(_ device: String) -> DeviceHealth.State { states.withLock { $0[device] } ?? .unknown }
}

/// The running gateway. It wires the parts together and does little itself:
/// - one MQTT connection (will `offline`, birth `online` after every connect, statuses again);
/// - one ``BusUnit`` per bus (its devices polled in turn; values and availability published);
/// - one ``DeviceCommander`` per Modbus device and one ``SerialDeviceRunner`` per serial device,
///   to which ``dispatchCommands()`` routes `<base>/<device>/<point>/set` and `/get`;
/// - Home Assistant discovery, when on.
///
/// What runs is kept in ``Units``; start, a reload (``reload(to:password:commandKey:)``, in
/// `Reload.swift`) and stop change it one at a time. A `Service`: on graceful shutdown it stops
/// polling and taking commands, ends pending pulses (the off is written), publishes `offline` for
/// every device and itself, then disconnects.
public final class GatewayRuntime: Service, Sendable {
    let client: MQTTClient
    let topics: TopicLayout
    let logger: Logger
    let board = StatusBoard()
    let journal: PulseJournal
    /// Switches off pulses whose point a reload moved or removed (``PulseReaper``).
    let reaper: PulseReaper
    /// Counters' last readings across restarts (``CounterStore``).
    let counters: CounterStore
    let version: String
    /// Metrics and live status for the operations listener; nil when it is off.
    public let telemetry: GatewayTelemetry?
    /// Progress of the pollers, serial lines and command dispatcher (`/healthz`, the watchdog);
    /// nil when neither is on (nothing is ticked then).
    public let liveness: Liveness?
    /// Home Assistant discovery (nil when `[homeassistant] enabled = false`).
    let homeAssistant: HomeAssistantPublisher?
    /// Moved on when every poller must publish its current values again (Home Assistant's birth).
    let valuesGeneration = ValuesGeneration()
    /// Moves on at every connect to the broker (systemd's `READY=1` waits for the first).
    let firstConnect = WakeSignal()
    /// Fail-safe values while the broker is away (a timer task only during an outage).
    let failsafe: Failsafe
    /// Data kept for the broker while it is away (nil: `outbox_max_mb = 0`).
    let outbox: Outbox?

    /// What runs now: the plan and its units. Read by the command dispatcher for every command
    /// (a dictionary lookup under a lock); changed only under ``changes``.
    struct Units: Sendable {
        enum Phase: Sendable { case starting, running, stopping }
        var phase = Phase.starting
        var plan: GatewayPlan
        var password: [UInt8]?
        var commandKey: [UInt8]?
        /// What every unit is handed (a reload replaces the settings and the command runner).
        var services: UnitServices
        var buses: [String: BusUnit] = [:]
        var commanders: [String: DeviceCommander] = [:]
        var serial: [String: SerialDeviceRunner] = [:]
        /// Devices a reload is stopping or starting: their commands are refused meanwhile.
        var restarting: Set<String> = []
    }
    let units: Mutex<Units>
    /// Start, reload and stop, one at a time.
    let changes = ChangeLock()

    /// The configuration running now, with its read plans and topics.
    public var plan: GatewayPlan { units.withLock { $0.plan } }
    var services: UnitServices { units.withLock { $0.services } }
    /// Makes the units, at start and at a reload.
    let factory: UnitFactory
    /// Values, events and statuses, through the outbox and the client.
    let publisher: BrokerPublisher

    /// `password`: read by the caller (the CLI reads `mqtt.password_file` or env `GATEWAY_MQTT_PASSWORD`).
    /// `commandKey`: the key of signed commands (the CLI reads `[gateway] command_key_file`).
    /// `telemetry`: given when the operations listener is on.
    /// `watchLoops`: keep ``liveness`` (for `/healthz` or systemd's watchdog).
    public init(configuration: GatewayConfiguration, password: [UInt8]?, commandKey: [UInt8]? = nil, telemetry: GatewayTelemetry? = nil,
                watchLoops: Bool = true, version: String = "dev", logger: Logger = Logger(label: "gateway")) {
        let plan = GatewayPlan(configuration)
        self.topics = plan.topics
        self.liveness = watchLoops ? Liveness() : nil
        self.logger = logger
        self.telemetry = telemetry
        self.version = version
        var mqttLogger = logger
        mqttLogger[metadataKey: "component"] = "mqtt"
        let client = MQTTClient(configuration: Self.mqttConfiguration(configuration, password: password, telemetry: telemetry), logger: mqttLogger)
        self.client = client
        self.failsafe = Failsafe(client: client, topics: plan.topics, logger: logger)
        let g = configuration.gateway
        let outbox = g.outboxMaxMB > 0
            ? Outbox(settings: .init(path: g.stateDirectory + "/outbox", maxBytes: Int(g.outboxMaxMB * 1_048_576), sync: .milliseconds(g.outboxSyncMs)),
                     client: client, telemetry: telemetry, logger: logger)
            : nil
        self.outbox = outbox
        let (journal, leftOn) = PulseJournal.open(directory: configuration.gateway.stateDirectory, hasPulses: !plan.pulsePoints.isEmpty, logger: logger)
        if !leftOn.isEmpty {
            logger.warning("pulses left on by an earlier run that did not end them, switching them off: \(leftOn.sorted().joined(separator: ", "))")
        }
        self.journal = journal
        self.reaper = PulseReaper(journal: journal, logger: logger)
        self.counters = CounterStore(directory: g.stateDirectory, logger: logger)
        telemetry?.journalWritable.set(journal.path != nil ? 1.0 : 0.0)
        let publisher = BrokerPublisher(client: client, topics: plan.topics, board: board, outbox: outbox, telemetry: telemetry)
        self.publisher = publisher
        let factory = UnitFactory(liveness: liveness, telemetry: telemetry, logger: logger)
        self.factory = factory
        let services = UnitServices(topics: plan.topics, gateway: g, publisher: publisher,
                                    commands: Self.commandRunner(configuration.gateway, commandKey: commandKey, signing: nil, clockSync: ClockSync(logger: logger), client: client,
                                                                 topics: plan.topics, telemetry: telemetry, logger: logger),
                                    board: board, journal: journal, clock: SystemClock(), telemetry: telemetry, executor: client.taskExecutor)
        var units = Units(plan: plan, password: password, commandKey: commandKey, services: services)
        for b in configuration.buses {
            units.buses[b.name] = factory.bus(b)
        }
        for d in plan.devices {
            guard let bus = units.buses[d.bus.name] else { continue }
            units.commanders[d.settings.name] = factory.commander(d, bus: bus, services: services)
        }
        for d in configuration.serialDevices {
            units.serial[d.name] = factory.serial(d, services: services)
        }
        self.units = Mutex(units)
        if configuration.homeAssistant.enabled {
            let values = valuesGeneration
            // After Home Assistant's birth: the statuses again, and every poller publishes its
            // current values at its next poll.
            self.homeAssistant = HomeAssistantPublisher(configuration: configuration, topics: plan.topics, version: version,
                                                        client: client, logger: logger,
                                                        republish: {
                                                            await publisher.publishStatuses()
                                                            values.advance()
                                                        })
        } else {
            self.homeAssistant = nil
        }
    }

    /// How far a signed command's `ts` may be from now: `command_max_age_ms`, 30 s by default.
    static func signedMaxAgeMs(_ g: GatewaySettings) -> Int { g.commandMaxAgeMs ?? 30_000 }

    /// The `/set` checks for these settings: `signing` kept when given (a reload keeps the ids
    /// seen), else made from `commandKey` (nil: commands are not signed).
    static func commandRunner(_ g: GatewaySettings, commandKey: [UInt8]?, signing: SignedCommands?, clockSync: ClockSync, client: MQTTClient,
                              topics: TopicLayout, telemetry: GatewayTelemetry?, logger: Logger) -> CommandRunner {
        let signing = commandKey == nil ? nil
            : signing ?? commandKey.map { SignedCommands(key: $0, maxAgeMs: signedMaxAgeMs(g), stateDirectory: g.stateDirectory, logger: logger) }
        return CommandRunner(topics: topics, gateway: g, signing: signing, clockSync: clockSync, clock: SystemClock(),
                             answerer: BrokerAnswerer(client: client, base: topics.base), telemetry: telemetry)
    }

    /// The MQTT client's settings from `[mqtt]`: will `offline` on the gateway's status topic.
    static func mqttConfiguration(_ configuration: GatewayConfiguration, password: [UInt8]?, telemetry: GatewayTelemetry?) -> MQTTConfiguration {
        let broker = configuration.mqtt.broker
        var mqtt = MQTTConfiguration(host: broker.host, port: broker.port, tls: broker.tls ? MQTTTLSOptions() : nil,
                                     clientIdentifier: configuration.mqtt.clientID ?? "gateway-\(configuration.gateway.id)")
        mqtt.alternates = configuration.mqtt.alternates.map { MQTTServer(host: $0.host, port: $0.port) }
        mqtt.version = configuration.mqtt.protocolVersion == 3 ? .v3_1_1 : .v5
        mqtt.keepAlive = UInt16(configuration.mqtt.keepAlive)
        mqtt.cleanStart = configuration.mqtt.cleanSession
        mqtt.username = configuration.mqtt.username
        mqtt.password = password
        mqtt.will = MQTTWill(topic: TopicLayout(base: configuration.baseTopic).status, payload: Array("offline".utf8), qos: .atLeastOnce, retain: true)
        if mqtt.tls != nil {   // mqtts:// (the config checker refuses TLS files with mqtt://)
            mqtt.tls = MQTTTLSOptions(caFile: configuration.mqtt.caFile, certificateFile: configuration.mqtt.certFile, keyFile: configuration.mqtt.keyFile)
        }
        if let telemetry {
            let histogram = telemetry.mqttAckRoundTrip
            mqtt.onAcknowledged = { histogram.recordNanoseconds($0.nanoseconds) }
        }
        return mqtt
    }

    /// A device's poll state, new: polled first at `start`.
    func makePoller(_ device: GatewayPlan.Device, gateway: GatewaySettings, commander: DeviceCommander?, start: ContinuousClock.Instant) -> DevicePoller {
        var clear: (@Sendable (Int) -> Void)?
        if let commander, device.settings.points.contains(where: { $0.latch && $0.latchClear }) {
            clear = { point in commander.submit(.latchClear(point: point)) }
        }
        return DevicePoller(device, gateway: gateway, topics: topics, logger: logger, start: start, readBacks: commander?.readBacks,
                            meter: telemetry?.device(device.settings.name), clearLatch: clear, counters: counters)
    }

    /// Starts the poller of `bus` with the plan's devices on it: the poll states in `kept` go on
    /// where they were; the other devices are polled at once.
    func startPoller(_ bus: BusUnit, units u: Units, kept: [DevicePoller] = []) {
        let start = ContinuousClock.now
        let kept = Dictionary(kept.map { ($0.settings.name, $0) }, uniquingKeysWith: { a, _ in a })
        let pollers = u.plan.devices.filter { $0.bus.name == bus.settings.name }.map { d in
            kept[d.settings.name] ?? makePoller(d, gateway: u.plan.configuration.gateway, commander: u.commanders[d.settings.name], start: start)
        }
        bus.start(pollers, sink: GatewayPollSink(publisher: u.services.publisher, generation: valuesGeneration), executor: u.services.executor,
                  liveness: liveness, logger: logger)
    }

    public func run() async throws {
        await changes.lock()
        let starting = units.withLock { $0 }
        logger.info("gateway starting", metadata: ["base": "\(topics.base)", "devices": "\(starting.plan.devices.count)"])
        await outbox?.start()
        await client.start()
        for c in starting.commanders.values { c.start() }
        await reaper.adoptOrphans(of: starting.plan, bus: busNamed)
        for bus in starting.buses.values { startPoller(bus, units: starting) }
        for runner in starting.serial.values { runner.start() }
        units.withLock { $0.phase = .running }
        await changes.unlock()
        // The broker is away until the first connect: the fail-safe countdown starts now.
        failsafe.brokerLost { self.failsafeTargets() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.watchConnection() }
            if let homeAssistant { group.addTask { await homeAssistant.run() } }
            await dispatchCommands()
            // Until SIGTERM/SIGINT (or cancellation).
            try? await gracefulShutdown()
            await client.onMessage(nil)
            homeAssistant?.finish()
            group.cancelAll()
        }
        await changes.lock()
        let running = units.withLock { u -> Units in
            u.phase = .stopping
            return u
        }
        // No more polls or commands; pending pulses are switched off before going offline.
        await failsafe.cancel()
        await withTaskGroup(of: Void.self) { group in
            for bus in running.buses.values { group.addTask { _ = await bus.stop(hard: true) } }
            for runner in running.serial.values { group.addTask { await runner.stop() } }
        }
        if running.plan.configuration.gateway.failsafeOnStop {
            await failsafe.writeOnStop(Failsafe.targets(running.plan, commanders: running.commanders))
        }
        await withTaskGroup(of: Void.self) { group in
            for c in running.commanders.values { group.addTask { await c.stop() } }
        }
        reaper.stop()
        await counters.flush()
        // What waits for the broker goes to disk (nothing is lost by a stop).
        await outbox?.close()
        // Polling has stopped: say so, then leave.
        logger.info("gateway stopping: publishing offline")
        let statuses = running.plan.devices.map { topics.status($0.settings.name) }
            + running.plan.configuration.serialDevices.map { topics.status($0.name) } + [topics.status]
        await Self.leave(client, offline: statuses, within: .seconds(3), logger: logger)
        for bus in running.buses.values { bus.bus.close() }
        await changes.unlock()
        logger.info("gateway stopped")
    }

    /// The bus of that name running now (the ``PulseReaper`` asks at every attempt).
    public var busNamed: @Sendable (String) -> ModbusBus? {
        { [weak self] name in self?.units.withLock { $0.buses[name]?.bus } }
    }

    /// The fail-safe points of the devices running now.
    func failsafeTargets() -> [Failsafe.Target] {
        units.withLock { Failsafe.targets($0.plan, commanders: $0.commanders) }
    }

    /// Where a command for `device` goes now.
    enum CommandTarget {
        case modbus(DeviceCommander), serial(SerialDeviceRunner), restarting, unknown
    }

    func target(_ device: String) -> CommandTarget {
        units.withLock { u in
            if u.restarting.contains(device) { return .restarting }
            if let runner = u.serial[device] { return .serial(runner) }
            if let commander = u.commanders[device] { return .modbus(commander) }
            return .unknown
        }
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
    /// Each incoming message is taken on the MQTT client's loop as it is read
    /// (``MQTTClient/onMessage(_:)``): a command goes to its device's queue at once, before the
    /// broker's acknowledgement is flushed, with no task in between.
    private func dispatchCommands() async {
        let loop = liveness?.register("command dispatcher")
        await client.onMessage { [weak self] message in
            // Never waits (a refusal is answered by a task of its own): a dispatch stuck on a
            // lock shows in the liveness check.
            loop?.expect(within: .seconds(5))
            defer { loop?.idle() }
            self?.dispatch(message)
        }
    }

    private func dispatch(_ message: MQTTMessage) {
        let receivedAt = ContinuousClock.now
        if let homeAssistant, homeAssistant.handles(message.topic) {
            homeAssistant.receive(message)
            return
        }
        guard let command = topics.parse(message.topic) else {
            logger.debug("ignoring a message on \(message.topic.logSafe)")
            return
        }
        let deviceName = command.device, pointName = command.point
        let isSet = command.kind == .set
        let taken: Bool
        switch target(deviceName) {
        case .serial(let runner):
            taken = runner.submit(isSet ? .set(message, command: pointName, receivedAt: receivedAt) : .get(message, point: pointName))
        case .modbus(let commander):
            taken = commander.submit(isSet ? .set(message, point: pointName, receivedAt: receivedAt)
                                           : .get(message, point: pointName, receivedAt: receivedAt))
        case .restarting:
            return refuse(message, isSet: isSet, receivedAt: receivedAt, why: .restarting(device: deviceName))
        case .unknown:
            return refuse(message, isSet: isSet, receivedAt: receivedAt, why: .unknownDevice(deviceName))
        }
        if !taken {
            refuse(message, isSet: isSet, receivedAt: receivedAt, why: .queueFull(device: deviceName))
        }
    }

    /// Answers a command that goes no further than the dispatcher (`/get`: only to an MQTT 5
    /// response topic, as its other answers). A signed command's id is spent here, before the
    /// next message is read; the answer is published by a task of its own.
    private func refuse(_ message: MQTTMessage, isSet: Bool, receivedAt: ContinuousClock.Instant, why: CommandRefusal) {
        // A signed command refused here (unknown device, restarting, busy) spends its id: else a
        // copy of it would be accepted once the device is back.
        if isSet { services.commands.signing?.spend(message.payload, topic: message.topic) }
        if let telemetry, let command = topics.parse(message.topic) {
            telemetry.commandAnswered(device: command.device, point: command.point, value: "",
                                      answer: .refused(why), receivedAt: receivedAt, wroteAt: nil)
        }
        logger.notice("command \(message.topic.logSafe) -> refused: \(why.reason.logSafe)", metadata: ["topic": "\(message.topic.logSafe)"])
        let answerer = services.commands.answerer, logger = logger
        Task(executorPreference: client.taskExecutor) {
            await answerer.answer(.refused(why), to: message, fallback: isSet ? "\(message.topic)/result" : nil, logger: logger)
        }
    }

    /// Command subscriptions at QoS 2; with MQTT 5 no retained commands at subscribe (retain
    /// handling 2) and retain-as-published, so a live retained command is seen and refused.
    private var commandSubscriptions: [MQTTSubscription] {
        topics.commandFilters.map { MQTTSubscription($0, qos: .exactlyOnce, retainAsPublished: true, retainHandling: .doNotSend) }
    }

    /// The capabilities that act when the broker comes and goes, in the order they act: the
    /// statuses first (the birth), then the fail-safe, the outbox, readiness, Home Assistant and
    /// the metrics.
    func brokerListeners() -> [any BrokerListener] {
        var listeners: [any BrokerListener] = [
            // The context running at the time (a reload may replace it).
            StatusRepublisher { [publisher] in await publisher.publishStatuses() },
            FailsafeListener(failsafe: failsafe) { [weak self] in self?.failsafeTargets() ?? [] },
        ]
        if let outbox { listeners.append(outbox) }
        listeners.append(firstConnect)
        if let homeAssistant { listeners.append(homeAssistant) }
        if let telemetry { listeners.append(telemetry) }
        return listeners
    }

    /// The command subscription after the first connect, then every listener; broker loss logged
    /// once per episode.
    private func watchConnection() async {
        var subscribed = false
        var takeovers = 0
        let listeners = brokerListeners()
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
                        logger.info("subscribed to commands: \(topics.commandFilters.joined(separator: ", "))")
                    } catch {
                        logger.error("subscribing to commands failed: \(error); retrying after the next connect")
                    }
                }
                for listener in listeners { await listener.brokerConnected() }
                let node = await client.server
                logger.info("broker connected (\(node)): birth and statuses published")
            case .disconnected(let reason):
                logger.warning("broker lost: \(reason)")
                for listener in listeners { await listener.brokerLost(reason: reason) }
            case .sessionTakenOver:
                // The broker said so (MQTT 5), or it keeps switching between us and a twin. Control
                // is lost as surely as with the broker gone: the fail-safe counts on, by design.
                takeovers += 1
                let id = await client.configuration.clientIdentifier
                logger.error("session taken over by another client with client id '\(id)' (\(takeovers) since start): no commands reach the gateway while it waits to take the session back, and the fail-safe counts this as the broker lost")
            default:
                break
            }
        }
    }
}

/// A counter the pollers compare with their own: when it moves, each forgets what it published
/// and publishes every current value at its next poll.
final class ValuesGeneration: Sendable {
    private let value = Atomic<Int>(0)
    var current: Int { value.load(ordering: .relaxed) }
    func advance() { value.add(1, ordering: .relaxed) }
}
