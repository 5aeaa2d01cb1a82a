import GatewayConfig
import Logging
import Modbus
import MQTT
import ServiceLifecycle

// The Gateway module: the domain. It turns a `GatewayConfiguration` into a running gateway
// (``GatewayRuntime``, this file), in folders that follow the two flows:
// - `Units/`: what runs per bus and device, made by one ``UnitFactory`` for start and reload and
//   kept in ``RunningUnits``; each unit is handed the ``UnitServices`` and a ``GatewayClock``.
// - `Uplink/`: bus to broker. A ``BusUnit`` per bus polls its devices (``DevicePoller``,
//   `BusPoller.swift`) into a ``PollSink``; the ``BrokerPublisher`` sends values through the
//   ``Outbox``; the ``ConnectionWatcher`` follows the connection and tells every
//   ``BrokerListener``; ``Farewell`` leaves the broker at a stop.
// - `Downlink/`: broker to device. The ``CommandDispatcher`` routes each message to its device's
//   ``DeviceCommander`` (Modbus, through a ``DeviceBus``) or ``SerialDeviceRunner``; the
//   ``CommandRunner`` admits each `/set` (``CommandPipeline``), logs and answers it
//   (``CommandAnswerer``); a refusal is a ``CommandRefusal``.
// - `Features/`: the optional capabilities as ``GatewayFeature``s, made in one place
//   (``GatewayFeatures``), each in its folder: `Failsafe/`, `Outbox/`, `HomeAssistant/`,
//   `Telemetry/` (metrics, liveness, the operations listener). The runtime names none of them.
// - `Reload/`, `ModbusFront/`, `Support/` (state files, the instance lock, signals, the heap);
//   topics are named in one place (``TopicLayout``).
//
// Concurrency, and why each idiom is where it is:
// - Structured tasks where lifetimes nest: the runtime's service `run` (the connection watcher
//   and the features' tasks in its group), its stop (a task group per kind of unit), the serial
//   device's connection loop.
// - Unstructured tasks where units start and stop one by one while the rest runs (a bus poller,
//   a serial device, a device's job task: ``BusUnit/start(_:sink:executor:liveness:logger:)``,
//   ``DeviceJobQueue``) and for pulse timers (each cancellable on its own). The runtime stops
//   every unit, and awaits it, before it ends. These tasks and the command dispatcher prefer
//   the MQTT client's loop as their executor (`MQTTClient.taskExecutor`): what they publish,
//   and the commands they take, cross no thread but to the bus.
// - A `Mutex` with parked continuations where a waiter must be woken without a task per item
//   (``WakeSignal``); a `Mutex` with a `running` flag where a task runs a device's jobs only
//   while there are some, started at once on the submitter's thread (``DeviceJobQueue``); a
//   plain `Mutex` for state read on the command path (``StatusBoard``, ``RunningUnits``).
// - Actors for state several tasks read and write (`MQTTClient`, on its
//   connection's event loop; `ModbusBus`, on a custom executor: one thread per bus, because
//   libmodbus blocks).
// - A serial `DispatchQueue` for blocking file work off the cooperative pool and the client's
//   loop (``Outbox``'s SQLite, ``PulseJournal``'s fdatasync), awaited with `DispatchQueue.run`.
// - `AsyncStream` only where a library hands out a stream (`MQTTClient.messages`).

/// The running gateway. It wires the parts together and does little itself:
/// - one MQTT connection (will `offline`, birth `online` after every connect, statuses again);
/// - the units: one ``BusUnit`` per bus, one ``DeviceCommander`` per Modbus device, one
///   ``SerialDeviceRunner`` per serial device, in ``RunningUnits``;
/// - the ``CommandDispatcher`` on the client's messages, the ``ConnectionWatcher`` on its events;
/// - the ``GatewayFeature``s, through their hooks.
///
/// Start, a reload (``reload(to:password:commandKey:)``, in `Reload.swift`) and stop change the
/// units one at a time. A `Service`: on graceful shutdown it stops polling and taking commands,
/// ends pending pulses (the off is written), publishes `offline` for every device and itself,
/// then disconnects.
public final class GatewayRuntime: Service, Sendable {
    typealias Units = RunningUnits.State

    let client: MQTTClient
    let topics: TopicLayout
    let logger: Logger
    let board = StatusBoard()
    /// Switches off pulses whose point a reload moved or removed (``PulseReaper``).
    let reaper: PulseReaper
    /// Counters' last readings across restarts (``CounterStore``).
    let counters: CounterStore
    /// Metrics and live status for the operations listener; nil when it is off.
    public let telemetry: GatewayTelemetry?
    /// Progress of the pollers, serial lines and command dispatcher (`/healthz`, the watchdog);
    /// nil when neither is on (nothing is ticked then).
    public let liveness: Liveness?
    /// Moved on when every poller must publish its current values again (Home Assistant's birth).
    let valuesGeneration = ValuesGeneration()
    /// Moves on at every connect to the broker (systemd's `READY=1` waits for the first).
    let firstConnect = WakeSignal()
    /// Values, events and statuses, through the outbox and the client.
    let publisher: BrokerPublisher
    /// What runs now.
    let units: RunningUnits
    /// Makes the units, at start and at a reload.
    let factory: UnitFactory
    let features: [any GatewayFeature]
    /// Start, reload and stop, one at a time.
    let changes = ChangeLock()

    /// The configuration running now, with its read plans and topics.
    public var plan: GatewayPlan { units.withLock { $0.plan } }
    var services: UnitServices { units.withLock { $0.services } }

    /// `password`: read by the caller (the CLI reads `mqtt.password_file` or env `GATEWAY_MQTT_PASSWORD`).
    /// `commandKey`: the key of signed commands (the CLI reads `[gateway] command_key_file`).
    /// `telemetry`: given when the operations listener is on.
    /// `watchLoops`: keep ``liveness`` (for `/healthz` or systemd's watchdog).
    public convenience init(configuration: GatewayConfiguration, password: [UInt8]?, commandKey: [UInt8]? = nil, telemetry: GatewayTelemetry? = nil,
                            watchLoops: Bool = true, version: String = "dev", logger: Logger = Logger(label: "gateway")) {
        self.init(configuration: configuration, password: password, commandKey: commandKey, telemetry: telemetry, watchLoops: watchLoops,
                  version: version, logger: logger, makeBus: nil)
    }

    /// `makeBus`: how a bus is made (nil: a ``ModbusBus``); in-process tests give a scripted one.
    init(configuration: GatewayConfiguration, password: [UInt8]?, commandKey: [UInt8]?, telemetry: GatewayTelemetry?,
         watchLoops: Bool, version: String, logger: Logger, makeBus: UnitFactory.MakeBus?) {
        let plan = GatewayPlan(configuration)
        let g = configuration.gateway
        self.topics = plan.topics
        self.liveness = watchLoops ? Liveness() : nil
        self.logger = logger
        self.telemetry = telemetry
        var mqttLogger = logger
        mqttLogger[metadataKey: "component"] = "mqtt"
        let client = MQTTClient(configuration: MQTTConfiguration(gateway: configuration, password: password, telemetry: telemetry), logger: mqttLogger)
        self.client = client
        let (journal, leftOn) = PulseJournal.open(directory: g.stateDirectory, hasPulses: !plan.pulsePoints.isEmpty, logger: logger)
        if !leftOn.isEmpty {
            logger.warning("pulses left on by an earlier run that did not end them, switching them off: \(leftOn.sorted().joined(separator: ", "))")
        }
        self.reaper = PulseReaper(journal: journal, logger: logger)
        self.counters = CounterStore(directory: g.stateDirectory, logger: logger)
        let wiring = GatewayFeatures(configuration: configuration, client: client, topics: plan.topics, board: board,
                                     telemetry: telemetry, version: version, logger: logger)
        self.publisher = wiring.publisher
        var factory = UnitFactory(liveness: liveness, telemetry: telemetry, logger: logger)
        if let makeBus { factory.makeBus = makeBus }
        self.factory = factory
        let services = UnitServices(topics: plan.topics, gateway: g, publisher: wiring.publisher,
                                    commands: CommandRunner.make(g, commandKey: commandKey, keeping: nil, clockSync: ClockSync(logger: logger),
                                                                 client: client, topics: plan.topics, telemetry: telemetry, logger: logger),
                                    board: board, journal: journal, clock: SystemClock(), telemetry: telemetry, executor: client.taskExecutor)
        var units = Units(plan: plan, password: password, commandKey: commandKey, services: services)
        for b in configuration.buses { units.buses[b.name] = factory.bus(b) }
        for d in plan.devices {
            guard let bus = units.buses[d.bus.name] else { continue }
            units.commanders[d.settings.name] = factory.commander(d, bus: bus, services: services)
        }
        for d in configuration.serialDevices { units.serial[d.name] = factory.serial(d, services: services) }
        self.units = RunningUnits(units)
        self.features = wiring.list(units: self.units, values: valuesGeneration)
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
        await start()
        let dispatcher = CommandDispatcher(topics: topics, units: units, features: features, logger: logger)
        let publisher = publisher
        // The statuses first (the birth), then the features, then readiness.
        let listeners: [any BrokerListener] = [StatusRepublisher { await publisher.publishStatuses() }] + features + [firstConnect]
        let watcher = ConnectionWatcher(client: client, subscriptions: dispatcher.subscriptions, listeners: listeners, logger: logger)
        await dispatcher.install(on: client, liveness: liveness)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await watcher.run() }
            for feature in features { group.addTask { await feature.run() } }
            // Until SIGTERM/SIGINT (or cancellation).
            try? await gracefulShutdown()
            await client.onMessage(nil)
            for feature in features { await feature.stopping() }
            group.cancelAll()
        }
        await stop()
    }

    /// The features, then the client, then the units: commanders first (pulses an earlier run
    /// left on are switched off before any command), the reaper, the pollers, the serial devices.
    private func start() async {
        await changes.lock()
        let starting = units.current
        logger.info("gateway starting", metadata: ["base": "\(topics.base)", "devices": "\(starting.plan.devices.count)"])
        for feature in features { await feature.starting() }
        await client.start()
        for c in starting.commanders.values { c.start() }
        await reaper.adoptOrphans(of: starting.plan, bus: deviceBusNamed)
        for bus in starting.buses.values { startPoller(bus, units: starting) }
        for runner in starting.serial.values { runner.start() }
        units.withLock { $0.phase = .running }
        await changes.unlock()
        for feature in features { feature.unitsStarted() }
    }

    /// No more polls or commands; pending pulses are switched off, what waits for the broker goes
    /// to disk, then `offline` for every device and the gateway.
    private func stop() async {
        await changes.lock()
        let running = units.withLock { u -> Units in
            u.phase = .stopping
            return u
        }
        await withTaskGroup(of: Void.self) { group in
            for bus in running.buses.values { group.addTask { _ = await bus.stop(hard: true) } }
            for runner in running.serial.values { group.addTask { await runner.stop() } }
        }
        for feature in features { await feature.pollingStopped() }
        await withTaskGroup(of: Void.self) { group in
            for c in running.commanders.values { group.addTask { await c.stop() } }
        }
        reaper.stop()
        await counters.flush()
        for feature in features { await feature.stopped() }
        logger.info("gateway stopping: publishing offline")
        let statuses = running.plan.devices.map { topics.status($0.settings.name) }
            + running.plan.configuration.serialDevices.map { topics.status($0.name) } + [topics.status]
        await Farewell.leave(client, offline: statuses, within: .seconds(3), logger: logger)
        for bus in running.buses.values { bus.bus.close() }
        await changes.unlock()
        logger.info("gateway stopped")
    }

    /// The Modbus bus of that name running now (the Modbus TCP front asks at every request).
    public var busNamed: @Sendable (String) -> ModbusBus? {
        { [units] name in units.bus(named: name) as? ModbusBus }
    }

    /// The bus of that name running now (the ``PulseReaper`` asks at every attempt).
    var deviceBusNamed: @Sendable (String) -> (any DeviceBus)? {
        { [units] name in units.bus(named: name) }
    }
}
