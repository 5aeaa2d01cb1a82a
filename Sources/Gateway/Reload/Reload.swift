import GatewayConfig
import Logging
import MQTT
import ServiceLifecycle
import UnixSignals

/// Configuration reload: `kill -HUP` or `systemctl reload gateway` re-reads `gateway.toml`. The
/// file is checked exactly as `gateway check` does; a broken one is logged problem by problem
/// (line and key path) and nothing changes. A valid one is compared with the running
/// configuration (``ConfigurationChange``) and only the difference is applied
/// (``GatewayRuntime/reload(to:password:)``): unchanged buses and devices keep running (no
/// `offline` blink, no gap in their poll schedule, no values published again), added ones start,
/// removed ones stop and go `offline`, changed ones restart alone, `[mqtt]` changes reconnect
/// once. What cannot change on a live session (gateway id, base topic, state directory, the
/// operations listener, discovery) is refused with the reason, and the running configuration
/// stays.
///
/// The outcome is logged on one line and counted in `/metrics`
/// (`gateway_config_reloads_total{result}`, `gateway_config_last_reload_successful`).
public struct ConfigurationReloader: Service {
    /// Reads the file again: the configuration, the MQTT password and the command key (their
    /// files may have changed too). Throws what is wrong with them.
    public typealias Load = @Sendable () throws -> (configuration: GatewayConfiguration, password: [UInt8]?, commandKey: [UInt8]?)

    let runtime: GatewayRuntime
    let load: Load
    let logger: Logger

    public init(runtime: GatewayRuntime, logger: Logger, load: @escaping Load) {
        self.runtime = runtime
        self.load = load
        self.logger = logger
    }

    public func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        for await _ in hangups.cancelOnGracefulShutdown() {
            logger.notice("SIGHUP received: reloading the configuration")
            await reload()
        }
    }

    /// Reads and applies the file once.
    @discardableResult
    public func reload() async -> GatewayRuntime.ReloadOutcome {
        let loaded: (configuration: GatewayConfiguration, password: [UInt8]?, commandKey: [UInt8]?)
        do {
            loaded = try load()
        } catch {
            for line in "\(error)".split(separator: "\n") { logger.error("reload: \(line)") }
            logger.error("reload refused: the configuration file has problems (above); the running configuration stays")
            runtime.telemetry?.reloaded("invalid")
            return .invalid
        }
        for warning in loaded.configuration.warnings { logger.warning("reload: \(warning)") }
        let outcome = await runtime.reload(to: loaded.configuration, password: loaded.password, commandKey: loaded.commandKey)
        switch outcome {
        case .applied(let change):
            logger.notice("reload: \(change.summary)\(change.details.isEmpty ? "" : " (\(change.details))")")
            for note in change.notes { logger.notice("reload: \(note)") }
            runtime.telemetry?.reloaded("applied")
        case .unchanged:
            logger.notice("reload: no change")
            runtime.telemetry?.reloaded("unchanged")
        case .refused(let reasons):
            for reason in reasons { logger.error("reload refused: \(reason)") }
            logger.error("reload refused: the running configuration stays")
            runtime.telemetry?.reloaded("refused")
        case .invalid:
            runtime.telemetry?.reloaded("invalid")
        }
        return outcome
    }
}

extension GatewayRuntime {
    public enum ReloadOutcome: Sendable, Equatable {
        case applied(ConfigurationChange)
        case unchanged
        /// It cannot be applied to the running gateway (the reasons); nothing changed.
        case refused([String])
        /// The file has problems; nothing changed.
        case invalid
    }

    /// Applies `new` (already checked) to the running gateway: only what changed.
    ///
    /// Order: commands to the devices concerned are refused from the start ("restarting"); the
    /// pollers of the buses concerned stop after their poll under way and hand back the poll
    /// states of their other devices; serial devices concerned close their ports; commanders of
    /// removed and changed devices run the commands they had queued and end their pulses with
    /// the off, written with the settings they started with (the journal entry goes after it);
    /// removed devices go `offline`; then buses, commanders, pollers and serial devices start
    /// with the new settings, the unchanged devices' poll states carried over; last, the MQTT
    /// client reconnects if `[mqtt]` changed and discovery publishes what differs.
    public func reload(to new: GatewayConfiguration, password: [UInt8]?, commandKey: [UInt8]? = nil) async -> ReloadOutcome {
        await changes.lock()
        let outcome = await apply(new, password: password, commandKey: commandKey)
        await changes.unlock()
        return outcome
    }

    private func apply(_ new: GatewayConfiguration, password: [UInt8]?, commandKey: [UInt8]?) async -> ReloadOutcome {
        let before = units.withLock { $0 }
        guard before.phase == .running else {
            return .refused([before.phase == .starting ? "the gateway is still starting" : "the gateway is stopping"])
        }
        let old = before.plan.configuration
        let change = ConfigurationChange(from: old, to: new)
        guard change.refusals.isEmpty else { return .refused(change.refusals) }
        let passwordChanged = password != before.password
        // The key and window of signed commands change in place, for every device at once, and
        // the ids already seen stay (a reload never opens a replay).
        if let commandKey, let signing = before.services.commands.signing {
            if commandKey != before.commandKey { logger.notice("reload: the command key changed") }
            signing.update(key: commandKey, maxAgeMs: SignedCommands.maxAgeMs(new.gateway), now: unixMilliseconds())
            units.withLock { $0.commandKey = commandKey }
        }
        if change.isEmpty && !passwordChanged { return .unchanged }

        let plan = GatewayPlan(new)
        let leaving = Set(change.removed + change.changed)
        let arriving = Set(change.added + change.changed)
        // Buses whose poller stops: removed or changed ones, and those a device leaves or joins.
        var touched = Set(change.removedBuses + change.changedBuses)
        for d in before.plan.devices where leaving.contains(d.settings.name) { touched.insert(d.bus.name) }
        for d in plan.devices where arriving.contains(d.settings.name) { touched.insert(d.bus.name) }
        units.withLock { $0.restarting = leaving.union(arriving) }

        // Stop what leaves.
        var kept: [String: [DevicePoller]] = [:]
        for name in touched.sorted() {
            guard let bus = before.buses[name] else { continue }
            kept[name] = await bus.stop(hard: false).filter { !leaving.contains($0.settings.name) }
        }
        for name in leaving.sorted() { await before.serial[name]?.stop() }
        await withTaskGroup(of: Void.self) { group in
            for name in leaving { if let c = before.commanders[name] { group.addTask { await c.stop() } } }
        }
        for name in change.removed {
            board.remove(name)
            try? await client.enqueue(to: topics.status(name), payload: StatusPayload.offline.bytes, qos: .atLeastOnce, retain: true)
            logger.notice("device removed by reload: offline", metadata: ["device": "\(name)"])
        }

        // Start what arrives (the metrics know the new devices first).
        for feature in features { feature.reloaded(from: old, to: new) }
        var next = before
        next.plan = plan
        next.password = password
        next.services.gateway = new.gateway
        next.commandKey = commandKey
        // Signing switched on or off: every device is "changed" (its [gateway] settings differ)
        // and restarts with these services. (A key that stays was updated above, and its ids stay.)
        next.services.commands = CommandRunner.make(new.gateway, commandKey: commandKey, keeping: before.services.commands.signing,
                                                    clockSync: before.services.commands.clockSync, client: client,
                                                    topics: topics, telemetry: telemetry, logger: logger)
        for name in change.removedBuses + change.changedBuses {
            next.buses.removeValue(forKey: name)?.bus.close()
        }
        for b in new.buses where next.buses[b.name] == nil {
            next.buses[b.name] = factory.bus(b)
        }
        for name in leaving {
            next.commanders[name] = nil
            next.serial[name] = nil
        }
        for d in plan.devices where arriving.contains(d.settings.name) {
            guard let bus = next.buses[d.bus.name] else { continue }
            let commander = factory.commander(d, bus: bus, services: next.services)
            next.commanders[d.settings.name] = commander
            commander.start()
        }
        for name in touched.sorted() {
            guard let bus = next.buses[name] else { continue }
            startPoller(bus, units: next, kept: kept[name] ?? [])
        }
        for d in new.serialDevices where arriving.contains(d.name) {
            let runner = factory.serial(d, services: next.services)
            next.serial[d.name] = runner
            runner.start()
        }
        next.restarting = []
        units.withLock { $0 = next }
        // A pulse whose off the stopped commander could not write and whose point moved or went
        // is switched off where it was switched on.
        await reaper.adoptOrphans(of: plan, bus: deviceBusNamed)

        if change.mqttChanged || passwordChanged {
            logger.notice("reload: MQTT settings changed: reconnecting to \(new.mqtt.url)")
            await client.reconfigure(MQTTConfiguration(gateway: new, password: password, telemetry: telemetry))
        }
        return .applied(change)
    }
}

/// Start, reload and stop of the runtime, one at a time: each awaits units starting and stopping,
/// so a lock held across those awaits is needed (a `Mutex` cannot be; an actor alone would let a
/// second reload in at its first await).
actor ChangeLock {
    private var held = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func lock() async {
        guard held else {
            held = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func unlock() {
        if waiting.isEmpty {
            held = false
        } else {
            waiting.removeFirst().resume()   // handed over: stays held
        }
    }
}
