import ArgumentParser
import Gateway
import GatewayConfig
import Logging
import NIOCore
import Operations
import ServiceLifecycle

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway (the default command): poll devices, publish values and online state.")

    @Option(help: "Configuration file.") var config = "gateway.toml"
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel: Logger.Level = .info
    @Option(help: "Directory for the pulse journal (overrides [gateway] state_dir).") var stateDir: String?

    func run() async throws {
        // One event loop carries the gateway's sockets (one MQTT connection, serial lines; Modbus
        // has threads of its own). NIO's default, one per core, costs a thread and about 200 KiB
        // of task storage per extra loop (measured with heaptrack): 4 loops on a Pi 4.
        NIOSingletons.groupLoopCountSuggestion = 1
        HangupSignal.ignoreAtStart()
        var loaded: GatewayConfiguration
        do {
            loaded = try ConfigLoader.load(path: config)
        } catch {
            emitError(error.description)
            throw ExitCode(2)
        }
        if let stateDir { loaded.gateway.stateDirectory = stateDir }
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "gateway")
        for warning in loaded.warnings { logger.warning("\(config): \(warning)") }
        // One gateway per state directory (held until the process ends).
        let lock: InstanceLock?
        do {
            switch try InstanceLock.acquire(directory: loaded.gateway.stateDirectory) {
            case .held(let held): lock = held
            case .unavailable(let why): lock = nil; logger.warning("no instance lock: \(why)")
            }
        } catch {
            emitError("\(config): \(error)")
            throw ExitCode(2)
        }
        let password: [UInt8]?, listenerPassword: [UInt8]?, key: [UInt8]?
        do {
            password = try mqttPassword(for: loaded.mqtt)
            listenerPassword = try httpPassword(for: loaded.http)
            key = try loaded.gateway.commandKeyFile.map { file throws(PasswordFileError) in try commandKey(file: file) }
        } catch {
            emitError("\(config): \(error)")
            throw ExitCode(2)
        }
        logger.info("gateway \(GatewayCommand.version)", metadata: ["config": "\(config)"])
        // Metrics and live status only when the operations listener is on.
        let telemetry = loaded.http.address.map { _ in GatewayTelemetry(configuration: loaded, version: GatewayCommand.version) }
        let notifier = SystemdNotifier()
        // Loops report their progress only for someone who asks: /healthz or systemd's watchdog.
        let runtime = GatewayRuntime(configuration: loaded, password: password, commandKey: key, telemetry: telemetry,
                                     watchLoops: telemetry != nil || notifier?.watchdogInterval != nil,
                                     version: GatewayCommand.version, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: runtime),
            .init(service: ConfigurationReloader(runtime: runtime, logger: logger) {
                var reloaded = try ConfigLoader.load(path: config)
                if let stateDir { reloaded.gateway.stateDirectory = stateDir }
                let key = try reloaded.gateway.commandKeyFile.map { file throws(PasswordFileError) in try commandKey(file: file) }
                return (reloaded, try mqttPassword(for: reloaded.mqtt), key)
            }, successTerminationBehavior: .ignore),
        ]
        if let telemetry, let address = loaded.http.address {
            services.append(.init(service: OperationsService(runtime: runtime, telemetry: telemetry, address: address, username: loaded.http.username,
                                                             password: listenerPassword, logger: logger),
                                  successTerminationBehavior: .ignore))
        }
        for front in loaded.modbusServers {
            services.append(.init(service: ModbusFrontService(runtime: runtime, settings: front, logger: logger), successTerminationBehavior: .ignore))
        }
        if let notifier {
            services.append(.init(service: SystemdService(runtime: runtime, notifier: notifier, logger: logger), successTerminationBehavior: .ignore))
        }
        services.append(.init(service: StartupHeapTrim(logger: logger), successTerminationBehavior: .ignore))
        let group = ServiceGroup(configuration: .init(services: services,
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        withExtendedLifetime(lock) {}
    }
}

/// `--log-level bogus` is an error naming the levels, not a silent `info`.
extension Logger.Level: @retroactive ExpressibleByArgument {}
