import Foundation
import MQTT

#if canImport(Glibc)
import Glibc
#endif

/// Everything an end-to-end gateway test needs: a private Mosquitto, `gateway simulate`, the
/// `gateway run` process under test with its `gateway.toml`, and an observer on `gateway/#`.
///
/// ``shutdown()`` stops them in order. A test that fails before reaching it still cleans up: when
/// the rig goes away, its gateway and simulator are killed (even if a test still holds them), its
/// observer closed and its directory removed; its broker stops with its own last reference.
public final class Rig: Sendable {
    public let broker: Mosquitto
    public let sim: GatewaySimulator
    public let simPort: Int
    public let gateway: ChildProcess
    public let watcher: MQTTObserver
    public let configPath: String
    private let directory: String

    /// The observer's client (to publish commands as a user would).
    public var observer: MQTTClient { watcher.client }

    private init(broker: Mosquitto, sim: GatewaySimulator, simPort: Int, gateway: ChildProcess, watcher: MQTTObserver, directory: String) {
        self.broker = broker
        self.sim = sim
        self.simPort = simPort
        self.gateway = gateway
        self.watcher = watcher
        self.directory = directory
        self.configPath = directory + "/gateway.toml"
    }

    deinit {
        gateway.signal(SIGKILL)
        sim.process.signal(SIGKILL)
        let client = watcher.client
        Task { await client.closeAbruptly() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// `body`, when given, replaces the rig's own `[[bus]]` and `[[device]]` tables (`points`
    /// is then unused): a site with other buses, such as an RTU line.
    public static func start(points: String, simArgs: [String], pollMs: Int = 50, offlineAfter: Int = 2, extraGateway: String = "",
                             devicePort: Int? = nil, body: String? = nil, extraMQTT: String = "", httpListen: String = "", extraHTTP: String = "",
                             extraSections: String = "", environment: [String: String] = [:], gatewayArguments: [String] = [],
                             bodyWithPort: (@Sendable (Int) -> String)? = nil,
                             simRTUOverTCP: Bool = false,
                             mqttPort: (@Sendable (Int) async throws -> Int)? = nil) async throws -> Rig {
        let broker = try await Mosquitto.start()
        // The port the gateway connects to: the broker's, or a proxy's in front of it.
        let gatewayMQTTPort = try await mqttPort?(broker.port) ?? broker.port
        // Port 0: the simulator binds a free port itself (a port picked first could be taken by
        // another test before the simulator binds it).
        let sim = try await GatewaySimulator.start(simArgs, rtuOverTCP: simRTUOverTCP)
        // The gateway polls the simulator, or another device (pymodbus) at `devicePort`.
        let simPort = devicePort ?? sim.port
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-e2e")
        let config = """
            [gateway]
            id = "e2e"
            state_dir = "\(dir)"
            \(extraGateway.contains("require_synced_clock") ? "" : "require_synced_clock = false")
            \(extraGateway)
            [mqtt]
            url = "mqtt://127.0.0.1:\(gatewayMQTTPort)"
            keepalive = 5
            \(extraMQTT)
            [http]
            listen = "\(httpListen)"
            \(extraHTTP)
            \(extraSections)
            \(body ?? bodyWithPort?(simPort) ?? """
            [[bus]]
            name = "plc"
            type = "tcp"
            host = "127.0.0.1"
            port = \(simPort)
            timeout_ms = 300
            [[device]]
            name = "dev"
            bus = "plc"
            unit = 1
            poll_ms = \(pollMs)
            offline_after = \(offlineAfter)
            \(points)
            """)
            """
        try config.write(toFile: dir + "/gateway.toml", atomically: true, encoding: .utf8)
        let watcher = try await MQTTObserver(port: broker.port, filters: ["gateway/#"], reconnect: true)
        let env = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let gateway = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", dir + "/gateway.toml"] + gatewayArguments, environment: env)
        return Rig(broker: broker, sim: sim, simPort: simPort, gateway: gateway, watcher: watcher, directory: dir)
    }

    /// Waits (bounded) until a message on `topic` with `payload` has been seen (now or before).
    public func waitFor(_ topic: String, _ payload: String, timeout: Duration = .seconds(15)) async throws {
        try await watcher.waitUntil("\(topic) = \(payload)", timeout: timeout,
                                    log: { "seen: \(self.watcher.summary)\ngateway log:\n\(self.gateway.tail)" }) {
            watcher.seen.withLock { $0.contains { $0.topic == topic && $0.payloadString == payload } }
        }
    }

    /// Waits (bounded) until `condition` holds, re-checking at every arrival.
    public func waitUntil(timeout: Duration = .seconds(20), _ what: String, _ condition: () -> Bool) async throws {
        try await watcher.waitUntil(what, timeout: timeout, log: { "gateway log:\n\(self.gateway.tail)" }, condition)
    }

    public func payloads(_ topic: String) -> [String] { watcher.payloads(topic) }

    /// The rig's base topic (`[gateway] id = "e2e"`).
    public static let base = "gateway/e2e"

    /// Sends a `/set` of `point` (with the observer's MQTT 5 client) and waits for its answer on
    /// `/set/result`: the answer after those already there.
    @discardableResult
    public func command(_ point: String, _ payload: String, device: String = "dev", retain: Bool = false) async throws -> String {
        let resultTopic = "\(Self.base)/\(device)/\(point)/set/result"
        let before = payloads(resultTopic).count
        try await observer.publish(to: "\(Self.base)/\(device)/\(point)/set", payload: Array(payload.utf8), qos: .atLeastOnce, retain: retain)
        try await waitUntil("an answer on \(resultTopic)") { payloads(resultTopic).count > before }
        return payloads(resultTopic)[before]
    }

    public func shutdown() async {
        await gateway.stop()
        await watcher.client.disconnect()
        _ = await sim.stop()
        await broker.shutdown()
    }
}
