import ArgumentParser
import Gateway
import GatewayConfig

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate gateway.toml without connecting anything, and print the plan.",
        discussion: "Exit 0 and the plan (buses, devices, Modbus requests per poll, topics) when valid; exit 2 and every problem, each with its key path, when not.")

    @Option(help: "Configuration file.") var config = "gateway.toml"

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
    }
}
