import GatewayConfig
import Logging
import Modbus

/// What the runtime hands every unit: the shared services, each a type of its own. No methods of
/// its own: a unit calls the service it needs.
struct UnitServices: Sendable {
    var topics: TopicLayout
    var gateway: GatewaySettings
    /// Values, events and statuses (``BrokerPublisher`` when running).
    var publisher: any DataPublisher
    /// The `/set` checks, audit and answers (``CommandRunner``).
    var commands: CommandRunner
    /// Device statuses as last published: a command reads its device's.
    var board: StatusBoard
    /// Pulses on, on storage.
    var journal: PulseJournal
    /// Where timers take their time (``SystemClock`` when running).
    var clock: any GatewayClock
    var telemetry: GatewayTelemetry?
    /// The executor unit tasks prefer: the MQTT client's loop, so what they publish crosses no thread.
    var executor: (any TaskExecutor)?
}

/// Makes the units, for start and reload alike.
struct UnitFactory: Sendable {
    /// Makes a bus: a ``ModbusBus`` (one thread, libmodbus) unless a test gives another.
    typealias MakeBus = @Sendable (BusSettings, Logger) -> any DeviceBus

    let liveness: Liveness?
    let telemetry: GatewayTelemetry?
    let logger: Logger
    var makeBus: MakeBus = { settings, logger in
        var l = logger
        l[metadataKey: "bus"] = "\(settings.name)"
        return ModbusBus(configuration: settings.busConfiguration, logger: l)
    }

    /// A bus unit, its metrics attached.
    func bus(_ settings: BusSettings) -> BusUnit {
        let unit = BusUnit(settings: settings, bus: makeBus(settings, logger))
        if let modbus = unit.bus as? ModbusBus { telemetry?.bus(settings.name)?.attach(modbus) }
        return unit
    }

    /// A Modbus device's commander, not started (``DeviceCommander/start()`` switches off the
    /// pulses an earlier run left on, before any command).
    func commander(_ device: GatewayPlan.Device, bus: BusUnit, services: UnitServices) -> DeviceCommander {
        DeviceCommander(device: device.settings, bus: bus.bus, timeoutMs: device.bus.timeoutMs, services: services, logger: logger)
    }

    /// A serial device (not started).
    func serial(_ settings: SerialDeviceSettings, services: UnitServices) -> SerialDeviceRunner {
        SerialDeviceRunner(settings: settings, services: services, liveness: liveness, logger: logger)
    }
}
