import ArgumentParser

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "MQTT gateway for doors, gates, turnstiles and sensors (Modbus RTU/TCP, serial).",
        version: GatewayCommand.version,
        subcommands: [Run.self, Check.self, Simulate.self, Read.self, Write.self, Sign.self],
        defaultSubcommand: Run.self
    )

    /// The release, and the git revision when built from a checkout (`BuildInfo` plugin).
    static let release = "0.2.0"
    static var version: String { gitRevision.isEmpty ? release : "\(release) (git \(gitRevision))" }
}
