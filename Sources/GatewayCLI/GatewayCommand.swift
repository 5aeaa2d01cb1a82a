import ArgumentParser
import Gateway

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

    /// The process's entry point. malloc's arena limit is set first, here on the main thread
    /// before anything else runs: a thread that allocates before it gets an arena of its own, and
    /// `run` used to set it from the cooperative pool, after the pool's threads had allocated (a
    /// loaded machine then ended with three arenas: `HeapTests`, 4 of 12 runs beside two busy CPUs).
    static func main() async {
        Heap.limitArenas()
        await main(nil)
    }

    /// The release, and the git revision when built from a checkout (`BuildInfo` plugin).
    static let release = "0.2.0"
    static var version: String { gitRevision.isEmpty ? release : "\(release) (git \(gitRevision))" }
}
