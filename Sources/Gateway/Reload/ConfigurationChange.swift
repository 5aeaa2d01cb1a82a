import GatewayConfig

/// What a reload would change, worked out from the running configuration and the new one with
/// no side effects: the runtime applies it (``GatewayRuntime/reload(to:password:)``), and
/// `gateway check --config new.toml --running old.toml` prints its summary.
///
/// A device is *changed* when anything it runs with differs: its own table (points, poll, unit,
/// bus name...), the settings of its bus, its kind (Modbus or serial), or the `[gateway]`
/// settings every device uses (value format, retain, refresh, command age). A changed bus
/// restarts with its devices; unchanged buses and devices are left alone.
public struct ConfigurationChange: Sendable, Equatable {
    /// Why the new configuration cannot be applied to a running gateway (empty: it can).
    public var refusals: [String] = []
    /// Settings that are taken at the next start only (said, not refused).
    public var notes: [String] = []
    /// `[mqtt]` differs: one reconnect with the new settings.
    public var mqttChanged = false
    public var addedBuses: [String] = []
    public var removedBuses: [String] = []
    public var changedBuses: [String] = []
    /// Device names (Modbus and serial), each sorted.
    public var added: [String] = []
    public var removed: [String] = []
    public var changed: [String] = []
    public var unchanged: [String] = []

    public init(from old: GatewayConfiguration, to new: GatewayConfiguration) {
        if old.gateway.id != new.gateway.id {
            refusals.append("[gateway] id changed ('\(old.gateway.id)' -> '\(new.gateway.id)'): restart to change it (the broker holds the will of the running session)")
        }
        if old.baseTopic != new.baseTopic {
            refusals.append("base topic changed ('\(old.baseTopic)' -> '\(new.baseTopic)'): restart to change the base topic (the will cannot move on a live session)")
        }
        if old.gateway.stateDirectory != new.gateway.stateDirectory {
            refusals.append("[gateway] state_dir changed: restart to change it (the pulse journal and the instance lock live there)")
        }
        if old.http != new.http {
            refusals.append("[http] changed: restart to change the operations listener")
        }
        if old.homeAssistant != new.homeAssistant {
            refusals.append("[homeassistant] changed: restart to change discovery")
        }
        if old.modbusServers.map(\.written) != new.modbusServers.map(\.written) {
            refusals.append("[[modbus_server]] changed: restart to change the Modbus TCP front")
        } else if old.modbusServers.map(\.units) != new.modbusServers.map(\.units) {
            notes.append("[[modbus_server]] units follow the devices at the next start (the front keeps its unit map until then)")
        }
        if old.gateway.outboxMaxMB != new.gateway.outboxMaxMB || old.gateway.outboxSyncMs != new.gateway.outboxSyncMs {
            notes.append("[gateway] outbox_max_mb and outbox_sync_ms take effect at the next start")
        }
        mqttChanged = old.mqtt != new.mqtt

        let oldBuses = Dictionary(old.buses.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let newBuses = Dictionary(new.buses.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        addedBuses = newBuses.keys.filter { oldBuses[$0] == nil }.sorted()
        removedBuses = oldBuses.keys.filter { newBuses[$0] == nil }.sorted()
        changedBuses = newBuses.compactMap { name, b in oldBuses[name].flatMap { $0 != b ? name : nil } }.sorted()

        // What a device runs with: its own settings, its bus's, and the gateway-wide ones.
        var shared = new.gateway
        shared.outboxMaxMB = old.gateway.outboxMaxMB
        shared.outboxSyncMs = old.gateway.outboxSyncMs
        let everyDeviceChanged = shared != old.gateway
        enum Unit: Equatable {
            case modbus(DeviceSettings, BusSettings?)
            case serial(SerialDeviceSettings)
        }
        func units(_ c: GatewayConfiguration, buses: [String: BusSettings]) -> [String: Unit] {
            var u: [String: Unit] = [:]
            for d in c.devices { u[d.name] = .modbus(d, buses[d.bus]) }
            for d in c.serialDevices { u[d.name] = .serial(d) }
            return u
        }
        let before = units(old, buses: oldBuses), after = units(new, buses: newBuses)
        for (name, unit) in after {
            guard let was = before[name] else {
                added.append(name)
                continue
            }
            if everyDeviceChanged || was != unit { changed.append(name) } else { unchanged.append(name) }
        }
        removed = before.keys.filter { after[$0] == nil }
        added.sort()
        removed.sort()
        changed.sort()
        unchanged.sort()
    }

    /// Nothing to do (a reload of the same file).
    public var isEmpty: Bool {
        !mqttChanged && added.isEmpty && removed.isEmpty && changed.isEmpty
            && addedBuses.isEmpty && removedBuses.isEmpty && changedBuses.isEmpty
    }

    /// One line: `+1 device, -0, ~1 changed, 3 unchanged`, then buses and MQTT when they change.
    public var summary: String {
        var s = "+\(added.count) device\(added.count == 1 ? "" : "s"), -\(removed.count), ~\(changed.count) changed, \(unchanged.count) unchanged"
        if !(addedBuses.isEmpty && removedBuses.isEmpty && changedBuses.isEmpty) {
            s += "; buses +\(addedBuses.count), -\(removedBuses.count), ~\(changedBuses.count) changed"
        }
        if mqttChanged { s += "; MQTT settings changed: one reconnect" }
        return s
    }

    /// The summary with the names: `+turnstile-2 -old-door ~front-door`.
    public var details: String {
        (added.map { "+\($0)" } + removed.map { "-\($0)" } + changed.map { "~\($0)" }).joined(separator: " ")
    }
}
