import ArgumentParser

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "MQTT gateway for doors, gates, turnstiles and sensors (Modbus RTU/TCP, serial).",
        subcommands: [Run.self, Check.self, Simulate.self, Read.self, Write.self],
        defaultSubcommand: Run.self
    )
}
