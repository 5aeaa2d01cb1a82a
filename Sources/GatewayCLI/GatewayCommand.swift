import ArgumentParser

// The `gateway` executable: the edge where the process meets the world. It reads the config,
// the password and key files and the environment, builds the service group (the runtime, the
// operations listener, reload on SIGHUP, start-up page release) and maps failures to exit codes.
// `check`, `read`, `write`, `sign` and `simulate` are tools for the integrator.

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "MQTT gateway for doors, gates, turnstiles and sensors (Modbus RTU/TCP, serial).",
        version: GatewayCommand.version,
        subcommands: [Run.self, Check.self, Simulate.self, Read.self, Write.self, Sign.self, Scan.self, Profiles.self],
        defaultSubcommand: Run.self
    )

    /// The release, and the git revision when built from a checkout (`BuildInfo` plugin).
    static let release = "0.2.0"
    static var version: String { gitRevision.isEmpty ? release : "\(release) (git \(gitRevision))" }
}
