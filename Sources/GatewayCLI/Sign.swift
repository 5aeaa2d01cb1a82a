import ArgumentParser
import Gateway

/// `gateway sign`: a signed command for a gateway with `[gateway] command_key_file`, so an
/// integrator can try a door with `mosquitto_pub` (see README "Signed commands").
struct Sign: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a signed command payload (fresh ts and id) for a gateway with [gateway] command_key_file.",
        discussion: """
            Example: mosquitto_pub -t gateway/site/front-door/unlock/set -q 1 \\
                       -m "$(gateway sign --key-file /etc/gateway/command.key --topic gateway/site/front-door/unlock/set --value true)"
            The payload is valid for command_max_age_ms (30 s by default) and only once.
            """)

    @Option(help: "The key file (its first line is the key).") var keyFile: String
    @Option(help: "The /set topic the command will be published to.") var topic: String
    @Option(help: "The value: true, false, a number, or text.") var value: String
    @Option(help: "The command id (default: 16 random hex digits).") var id: String?

    func run() throws {
        let key: [UInt8]
        do {
            key = try commandKey(file: keyFile, key: "--key-file")
        } catch {
            emitError("\(error)")
            throw ExitCode(2)
        }
        let id = self.id ?? CommandSigner.newID()
        let signer = CommandSigner(key: key)
        emit(signer.payload(topic: topic, value: CommandSigner.value(argument: value), ts: CommandSigner.now(), id: id))
    }
}
