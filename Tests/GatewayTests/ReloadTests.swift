import Foundation
import Gateway
import GatewayConfig
import MQTT
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The reload diff: pure, no peers.
@Suite("Reload: what a changed configuration changes")
struct ConfigurationChangeTests {
    static func config(_ body: String, id: String = "site", gateway: String = "", mqtt: String = "") throws -> GatewayConfiguration {
        try ConfigLoader.parse("""
            [gateway]
            id = "\(id)"
            \(gateway)
            [mqtt]
            url = "mqtt://127.0.0.1:1883"
            \(mqtt)
            [[bus]]
            name = "a"
            type = "tcp"
            host = "127.0.0.1"
            port = 502
            [[bus]]
            name = "b"
            type = "tcp"
            host = "127.0.0.1"
            port = 503
            \(body)
            """)
    }

    static func device(_ name: String, bus: String = "a", unit: Int = 1, address: Int = 0, poll: Int = 1000) -> String {
        """
        [[device]]
        name = "\(name)"
        bus = "\(bus)"
        unit = \(unit)
        poll_ms = \(poll)
        [[device.point]]
        name = "v"
        register = "holding"
        address = \(address)

        """
    }

    @Test("added, removed, changed and unchanged devices; the summary line")
    func devices() throws {
        let old = try Self.config(Self.device("keep") + Self.device("change", unit: 2) + Self.device("gone", unit: 3))
        let new = try Self.config(Self.device("keep") + Self.device("change", unit: 2, address: 5) + Self.device("added", unit: 4))
        let c = ConfigurationChange(from: old, to: new)
        #expect(c.refusals.isEmpty)
        #expect(c.added == ["added"])
        #expect(c.removed == ["gone"])
        #expect(c.changed == ["change"])
        #expect(c.unchanged == ["keep"])
        #expect(!c.mqttChanged)
        #expect(c.summary == "+1 device, -1, ~1 changed, 1 unchanged")
        #expect(c.details == "+added -gone ~change")
    }

    @Test("the same file: nothing to do")
    func same() throws {
        let c = try Self.config(Self.device("keep"))
        let change = ConfigurationChange(from: c, to: c)
        #expect(change.isEmpty)
        #expect(change.unchanged == ["keep"])
    }

    @Test("a changed bus restarts its devices only; a device moved to another bus is changed")
    func buses() throws {
        let old = try Self.config(Self.device("one") + Self.device("two", bus: "b") + Self.device("three", bus: "b", unit: 2))
        var new = old
        new.buses[0].timeoutMs = 500
        var c = ConfigurationChange(from: old, to: new)
        #expect(c.changedBuses == ["a"])
        #expect(c.changed == ["one"])
        #expect(c.unchanged == ["three", "two"])
        new = old
        new.devices[2].bus = "a"
        c = ConfigurationChange(from: old, to: new)
        #expect(c.changed == ["three"])
        #expect(c.changedBuses.isEmpty)
    }

    @Test("[gateway] settings every device uses change every device; [mqtt] changes reconnect only")
    func shared() throws {
        let old = try Self.config(Self.device("one") + Self.device("two", bus: "b"))
        let retainOff = try Self.config(Self.device("one") + Self.device("two", bus: "b"), gateway: "retain = false")
        #expect(ConfigurationChange(from: old, to: retainOff).changed == ["one", "two"])
        let keepalive = try Self.config(Self.device("one") + Self.device("two", bus: "b"), mqtt: "keepalive = 10")
        let c = ConfigurationChange(from: old, to: keepalive)
        #expect(c.mqttChanged && c.changed.isEmpty && c.unchanged == ["one", "two"])
        #expect(c.summary.hasSuffix("MQTT settings changed: one reconnect"))
    }

    @Test("what cannot change on a live session is refused with the reason")
    func refusals() throws {
        let old = try Self.config(Self.device("one"))
        let base = try Self.config(Self.device("one"), gateway: "base_topic = \"site/elsewhere\"")
        #expect(ConfigurationChange(from: old, to: base).refusals.contains { $0.contains("restart to change the base topic") })
        let id = try Self.config(Self.device("one"), id: "other")
        let refusals = ConfigurationChange(from: old, to: id).refusals
        #expect(refusals.contains { $0.contains("[gateway] id changed") })
        var http = old
        http.http.listen = ""
        http.http.address = nil
        #expect(ConfigurationChange(from: old, to: http).refusals == ["[http] changed: restart to change the operations listener"])
    }
}

/// Reload against real peers: Mosquitto, `gateway simulate`, `gateway run`, SIGHUP.
@Suite("Reload end to end (Mosquitto, gateway simulate, SIGHUP)")
struct ReloadTests {
    static let b = "gateway/e2e"

    static func device(_ name: String, unit: Int, address: Int = 0, pulse: Bool = false) -> String {
        var s = """
            [[device]]
            name = "\(name)"
            bus = "plc"
            unit = \(unit)
            poll_ms = 100
            offline_after = 2
            [[device.point]]
            name = "v"
            register = "holding"
            address = \(address)

            """
        if pulse {
            s += """
                [[device.point]]
                name = "unlock"
                register = "coil"
                address = 0
                writable = true
                pulse_ms = 60000

                """
        }
        return s
    }

    static func bus(port: Int) -> String {
        """
        [[bus]]
        name = "plc"
        type = "tcp"
        host = "127.0.0.1"
        port = \(port)
        timeout_ms = 300

        """
    }

    /// The rig's file with `body` in place of its buses and devices.
    static func rewrite(_ rig: Rig, body: String, gateway: String = "", mqtt: String = "") throws {
        let dir = String(rig.configPath.dropLast("/gateway.toml".count))
        let text = """
            [gateway]
            id = "e2e"
            state_dir = "\(dir)"
            \(gateway.contains("require_synced_clock") ? "" : "require_synced_clock = false")
            \(gateway)
            [mqtt]
            url = "mqtt://127.0.0.1:\(rig.broker.port)"
            keepalive = 5
            \(mqtt)
            [http]
            listen = ""
            \(body)
            """
        try text.write(toFile: rig.configPath, atomically: true, encoding: .utf8)
    }

    @Test("SIGHUP with one device added, one changed, one removed: the unchanged one neither blinks nor republishes, the added one comes online, the removed one goes offline (its pulse ended with its off) and answers 'unknown device', the changed one polls its new register, discovery follows")
    func addChangeRemove() async throws {
        let sim = ["--unit", "1", "--unit", "2", "--unit", "3", "--unit", "4", "--log-requests",
                   "--set", "1/holding:0=11", "--set", "2/holding:0=21", "--set", "2/holding:5=25", "--set", "3/holding:0=31", "--set", "4/holding:0=41"]
        let rig = try await Rig.start(points: "", simArgs: sim, bodyWithPort: { port in
            Self.bus(port: port) + Self.device("keep", unit: 1) + Self.device("change", unit: 2) + Self.device("gone", unit: 3, pulse: true)
        })
        let port = rig.sim.port
        for (device, value) in [("keep", "11"), ("change", "21"), ("gone", "31")] {
            try await rig.waitFor("\(Self.b)/\(device)/v", value)
            try await rig.waitFor("\(Self.b)/\(device)/status", "online")
        }
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        try await rig.observer.subscribe([MQTTSubscription("homeassistant/device/+/config", qos: .atLeastOnce)])
        try await rig.waitUntil("the discovery config of 'gone'") { rig.payloads("homeassistant/device/e2e_gone/config").contains { !$0.isEmpty } }
        // A long pulse on the device the reload removes.
        #expect(try await rig.command("unlock", "true", device: "gone") == #"{"ok":true,"value":true}"#)
        #expect(rig.sim.writes.map(\.values) == [[1]])

        // (At start a status may be published twice: by the first poll and by the connect.)
        let keepStatuses = rig.payloads("\(Self.b)/keep/status").count
        try Self.rewrite(rig, body: Self.bus(port: port) + Self.device("keep", unit: 1) + Self.device("change", unit: 2, address: 5)
                         + Self.device("added", unit: 4))
        rig.gateway.signal(SIGHUP)
        _ = try await rig.gateway.waitForLine(containing: "reload: +1 device, -1, ~1 changed, 1 unchanged (+added -gone ~change)")
        // The pulse on the removed device ended with its off, long before its 60 s.
        let writes = try await rig.sim.waitForWrites(2)
        #expect(writes.map(\.unit) == [3, 3])
        #expect(writes.map(\.values) == [[1], [0]])
        try await rig.waitFor("\(Self.b)/gone/status", "offline")
        try await rig.waitFor("\(Self.b)/added/v", "41")
        try await rig.waitFor("\(Self.b)/added/status", "online")
        try await rig.waitFor("\(Self.b)/change/v", "25")
        #expect(try await rig.command("unlock", "true", device: "gone") == #"{"ok":false,"error":"unknown device 'gone'"}"#)
        #expect(rig.sim.writes.count == 2, "the refused command wrote")
        // Discovery: the removed device's config cleared, the added one's published.
        try await rig.waitUntil("discovery cleared for 'gone'") { rig.payloads("homeassistant/device/e2e_gone/config").last == "" }
        try await rig.waitUntil("discovery for 'added'") { rig.payloads("homeassistant/device/e2e_added/config").contains { !$0.isEmpty } }
        // The unchanged device kept running: a new value is its next publication, nothing
        // came before it (a restarted poller publishes every value and its status again).
        try await rig.sim.set("1/holding:0=12")
        try await rig.waitFor("\(Self.b)/keep/v", "12")
        #expect(rig.payloads("\(Self.b)/keep/v") == ["11", "12"])
        #expect(rig.payloads("\(Self.b)/keep/status").count == keepStatuses)
        #expect(!rig.payloads("\(Self.b)/keep/status").contains("offline"))
        #expect(!rig.payloads("\(Self.b)/status").contains("offline"), "the gateway blinked")
        // Its polls in the simulator: the longest interval between two is printed for the record
        // (a figure, not a test: timing on a shared machine varies).
        let times = rig.sim.process.lines.filter { $0.hasPrefix("{\"request\":{\"unit\":1,") }.compactMap { line -> Int64? in
            guard let r = line.range(of: "\"mono_us\":") else { return nil }
            return Int64(line[r.upperBound...].prefix { $0.isNumber })
        }
        #expect(times.count > 2)
        let longest = zip(times.dropFirst(), times).map { $0 - $1 }.max() ?? 0
        print("reload: unit 1 (poll_ms 100) polled \(times.count) times; longest interval \(longest / 1000) ms")
        await rig.shutdown()
    }

    @Test("a broken file or a base-topic change: refused with the line or the reason, nothing changes, commands and polls go on")
    func refused() async throws {
        let port = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: CommandTests.points(), simArgs: ["--set", "holding:40=5"], pollMs: 100, httpListen: "127.0.0.1:\(port)")
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        _ = try await rig.gateway.waitForLine(containing: "birth and statuses published")
        // A command's answer comes after the statuses of the connect (one connection, in order).
        #expect(try await rig.command("light", "false", device: "dev") == #"{"ok":true,"value":false}"#)
        let statuses = rig.payloads("\(Self.b)/dev/status").count
        let original = try String(contentsOfFile: rig.configPath, encoding: .utf8)
        // The poll period's line gets a nonsense value.
        var lines = original.components(separatedBy: "\n")
        let pollLine = try #require(lines.firstIndex { $0.contains("poll_ms") })
        lines[pollLine] = "poll_ms = \"fast\""
        try lines.joined(separator: "\n").write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        rig.gateway.signal(SIGHUP)
        let problem = try await rig.gateway.waitForLine(containing: "reload: \(rig.configPath):\(pollLine + 1):")
        #expect(problem.contains("poll_ms"), "\(problem)")
        _ = try await rig.gateway.waitForLine(containing: "reload refused: the configuration file has problems")
        // A base topic change: refused with the reason.
        try original.replacingOccurrences(of: "id = \"e2e\"", with: "id = \"e2e\"\nbase_topic = \"elsewhere\"")
            .write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        rig.gateway.signal(SIGHUP)
        _ = try await rig.gateway.waitForLine(containing: "restart to change the base topic")
        // Still the running configuration: values, commands.
        try await rig.sim.set("holding:40=6")
        try await rig.waitFor("\(Self.b)/dev/count", "6")
        #expect(try await rig.command("light", "true", device: "dev") == #"{"ok":true,"value":true}"#)
        #expect(rig.payloads("\(Self.b)/dev/status").count == statuses)
        #expect(!rig.payloads("\(Self.b)/dev/status").contains("offline"))
        #expect(rig.gateway.exitStatus == nil)
        // /metrics says so.
        let metrics = try await OperationsTests.get("http://127.0.0.1:\(port)/metrics").body
        #expect(metrics.contains(#"gateway_config_reloads_total{result="invalid"} 1"#), "\(metrics)")
        #expect(metrics.contains(#"gateway_config_reloads_total{result="refused"} 1"#))
        #expect(metrics.contains("gateway_config_last_reload_successful 0"))
        // The original file again: applied as "no change", and the gauge is back to 1.
        try original.write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        rig.gateway.signal(SIGHUP)
        _ = try await rig.gateway.waitForLine(containing: "reload: no change")
        let after = try await OperationsTests.get("http://127.0.0.1:\(port)/metrics").body
        #expect(after.contains(#"gateway_config_reloads_total{result="unchanged"} 1"#))
        #expect(after.contains("gateway_config_last_reload_successful 1"))
        await rig.shutdown()
    }

}
