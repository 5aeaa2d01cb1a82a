import ArgumentParser
import Gateway
import GatewayConfig

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate gateway.toml without connecting anything, and print the plan.",
        discussion: "Exit 0 and the plan (buses, devices, Modbus requests per poll, topics) when valid; exit 2 and every problem, each with its key path, when not.")

    @Option(help: "Configuration file.") var config = "gateway.toml"
    @Option(help: "The file the gateway runs with now: also print what a reload (SIGHUP) to --config would change, or why it would be refused (exit 2).")
    var running: String?

    func run() throws {
        let loaded: GatewayConfiguration
        do {
            loaded = try ConfigLoader.load(path: config)
        } catch {
            emitError(error.description)
            emitError("\(error.issues.count) problem\(error.issues.count == 1 ? "" : "s") in \(error.file)")
            throw ExitCode(2)
        }
        emit("\(config): OK")
        for warning in loaded.warnings { emit("warning: \(warning)") }
        let plan = GatewayPlan(loaded)
        for line in plan.describe() { emit(line) }
        if let address = loaded.http.address {
            let host = address.host.contains(":") ? "[\(address.host)]" : address.host
            emit("operations listener: http://\(host):\(address.port)/ (status page; /metrics, /healthz, /api/status)\(loaded.http.username != nil ? ", basic auth" : "")")
        } else {
            emit("operations listener: off")
        }
        for front in loaded.modbusServers {
            let host = front.listen.host.contains(":") ? "[\(front.listen.host)]" : front.listen.host
            let units = front.units.keys.sorted().map { "\($0) -> \(front.units[$0]!)" }.joined(separator: ", ")
            let writable = front.writable.map { "\($0.target):\($0.table.rawValue):\($0.first)-\($0.last)" }.joined(separator: ", ")
            emit("modbus front: \(host):\(front.listen.port), units \(units.isEmpty ? "none" : units)\(front.unitsGiven ? "" : " (each device under its own id)"), \(writable.isEmpty ? "read-only" : "writable \(writable)"), at most \(front.maxClients) clients, idle close after \(front.idleTimeoutSeconds) s, at most \(Int(front.lineShare * 100)) % of each line")
        }
        if loaded.homeAssistant.enabled {
            let discovery = HomeAssistantDiscovery(configuration: loaded, topics: plan.topics, version: GatewayCommand.version)
            emit("Home Assistant discovery under \(discovery.prefix)/device/ (\(discovery.devices.count) devices):")
            for device in discovery.devices {
                emit("  \(device.name) (\(device.topic))")
                for e in device.entities { emit("    \(e.platform) \(e.name)") }
            }
        } else {
            emit("Home Assistant discovery: off")
        }
        if let running { try compare(with: running, loaded) }
    }

    /// What a reload from the file at `path` to `new` would do.
    private func compare(with path: String, _ new: GatewayConfiguration) throws {
        let old: GatewayConfiguration
        do {
            old = try ConfigLoader.load(path: path)
        } catch {
            emitError(error.description)
            throw ExitCode(2)
        }
        let change = ConfigurationChange(from: old, to: new)
        guard change.refusals.isEmpty else {
            for reason in change.refusals { emitError("reload from \(path) refused: \(reason)") }
            throw ExitCode(2)
        }
        if change.isEmpty {
            emit("reload from \(path): no change")
        } else {
            emit("reload from \(path): \(change.summary)\(change.details.isEmpty ? "" : " (\(change.details))")")
        }
        for note in change.notes { emit("reload: \(note)") }
    }
}
