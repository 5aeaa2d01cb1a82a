import Foundation
import Gateway
import GatewayConfig
import MQTT
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A discovery payload checked as Home Assistant's release checks it (``HomeAssistantRules``,
/// generated from its wheel): the keys each platform takes and requires, and the value rules of
/// its MQTT platforms (device classes, units per device class, state classes, icons, limits).
enum HomeAssistantSchema {
    /// Shared options at the root of a device-based payload.
    static let root: Set<String> = ["device", "origin", "components", "availability", "availability_mode", "qos", "state_topic", "command_topic", "encoding"]

    /// Why Home Assistant would refuse or misread component `c` (empty: it would take it).
    static func problems(_ c: JSONValue) -> [String] {
        guard let platform = c["platform"]?.string, let keys = HomeAssistantRules.discoveryKeys[platform] else { return ["unknown platform"] }
        var out: [String] = []
        for key in c.keys where !keys.allowed.contains(key) { out.append("\(key) is not an option of a \(platform)") }
        for key in keys.required where c[key] == nil { out.append("\(key) missing") }
        let dc = c["device_class"]?.string
        if let dc, !(HomeAssistantRules.deviceClasses[platform]?.contains(dc) ?? false) { out.append("device class \(dc)") }
        let unit = c["unit_of_measurement"]?.string
        let units = platform == "sensor" ? HomeAssistantRules.sensorUnits : platform == "number" ? HomeAssistantRules.numberUnits : [:]
        if let dc, let allowed = units[dc], !allowed.contains(unit) { out.append("unit \(unit ?? "none") for \(dc)") }
        if let sc = c["state_class"]?.string, !HomeAssistantRules.stateClasses.contains(sc) { out.append("state class \(sc)") }
        if c["options"] != nil, platform == "sensor", dc != "enum" || c["state_class"] != nil || unit != nil { out.append("options without enum") }
        if let icon = c["icon"]?.string, !icon.contains(":") { out.append("icon \(icon)") }
        if c["qos"] != .number("1") { out.append("qos not 1 in the component") }
        if platform == "text", case .number(let max)? = c["max"], (Int(max) ?? 0) > HomeAssistantRules.maxTextLength { out.append("text max \(max)") }
        if platform == "number", case .number(let step)? = c["step"], (Double(step) ?? 0) < HomeAssistantRules.minimumNumberStep { out.append("step \(step)") }
        return out
    }
}

extension JSONValue {
    subscript(_ key: String) -> JSONValue? {
        if case .object(let members) = self { return members.first { $0.0 == key }?.1 }
        return nil
    }
    var string: String? { if case .string(let s) = self { s } else { nil } }
    var keys: [String] { if case .object(let m) = self { m.map(\.0) } else { [] } }
    var array: [JSONValue] { if case .array(let a) = self { a } else { [] } }
}

@Suite("Home Assistant discovery payloads, checked against the documented schema")
struct HomeAssistantPayloadTests {
    static let config = """
        [gateway]
        id = "site"
        [[bus]]
        name = "b"
        type = "tcp"
        host = "127.0.0.1"
        [[device]]
        name = "door"
        bus = "b"
        manufacturer = "ACME"
        model = "DC-200"
          [[device.point]]
          name = "unlock"
          register = "coil"
          address = 0
          writable = true
          pulse_ms = 3000
          [[device.point]]
          name = "contact"
          register = "discrete"
          address = 0
          map = { "0" = "closed", "1" = "open" }
          ha = { device_class = "door" }
          [[device.point]]
          name = "light"
          register = "coil"
          address = 1
          writable = true
          [[device.point]]
          name = "temp"
          register = "holding"
          address = 0
          type = "int16"
          scale = 0.1
          unit = "°C"
          [[device.point]]
          name = "setpoint"
          register = "holding"
          address = 1
          writable = true
          min = 5
          max = 30
          [[device.point]]
          name = "mode"
          register = "holding"
          address = 2
          writable = true
          map = { "0" = "normal", "1" = "free", "2" = "locked" }
          [[device.point]]
          name = "state"
          register = "input"
          address = 0
          map = { "0" = "idle", "1" = "busy" }
          [[device.point]]
          name = "passages"
          register = "input"
          address = 1
          type = "uint32"
          format = "json"
          ha = { state_class = "total_increasing", icon = "mdi:walk" }
          [[device.point]]
          name = "bolt"
          register = "coil"
          address = 2
          writable = true
          ha = { component = "lock", state_point = "contact", state_locked = "closed", state_unlocked = "open" }
        [[device]]
        name = "reader"
        driver = "serial"
        port = "/dev/null"
          [[device.point]]
          name = "scan"
          match = "^QR:(.*)$"
          [[device.command]]
          name = "beep"
          send = "BEEP {value}\\r\\n"
          pattern = "[0-9]"
          max_length = 1
          [[device.command]]
          name = "reset"
          send = "RESET\\r\\n"
        """

    static func discovery() throws -> HomeAssistantDiscovery {
        let c = try ConfigLoader.parse(config)
        return HomeAssistantDiscovery(configuration: c, topics: TopicLayout(base: c.baseTopic), version: "9.9.9")
    }

    @Test("one retained config per device; every component in its documented schema, with the platform the point calls for")
    func everyComponent() throws {
        let d = try Self.discovery()
        #expect(d.devices.map(\.topic) == ["homeassistant/device/site_gateway/config", "homeassistant/device/site_door/config",
                                           "homeassistant/device/site_reader/config"])
        var platforms: [String: String] = [:]
        for device in d.devices {
            let root = try JSONValue.parse(Array(device.payload().utf8))
            for key in root.keys { #expect(HomeAssistantSchema.root.contains(key), "\(device.topic): root key \(key)") }
            #expect(root["origin"]?["name"]?.string == "mqtt-gateway" && root["origin"]?["sw_version"]?.string == "9.9.9")
            #expect(root["origin"]?["support_url"] == nil, "no made-up home")
            #expect(root["qos"] == .number("1"))
            guard case .object(let components)? = root["components"] else { Issue.record("no components"); continue }
            for (id, c) in components {
                let platform = try #require(c["platform"]?.string)
                platforms[id] = platform
                #expect(HomeAssistantSchema.problems(c).isEmpty, "\(id) (\(platform)): \(HomeAssistantSchema.problems(c))")
                #expect(c["unique_id"]?.string == id)
                #expect(c["default_entity_id"]?.string == "\(platform).\(id.replacingOccurrences(of: "-", with: "_"))")
            }
        }
        #expect(platforms == [
            "site_gateway_status": "binary_sensor",
            "site_door_unlock": "button", "site_door_contact": "binary_sensor", "site_door_light": "switch", "site_door_temp": "sensor",
            "site_door_setpoint": "number", "site_door_mode": "select", "site_door_state": "sensor", "site_door_passages": "sensor",
            "site_door_bolt": "lock", "site_reader_scan": "sensor", "site_reader_beep": "text", "site_reader_reset": "button",
        ])
    }

    @Test("with signed commands, points Home Assistant cannot command are shown read-only (signed = false keeps the switch); counters and latches add event entities")
    func signedAndEvents() throws {
        var text = Self.config.replacingOccurrences(of: "[gateway]\n", with: "[gateway]\ncommand_key_file = \"/etc/gateway/command.key\"\n")
        #expect(text != Self.config)
        text = text.replacingOccurrences(of: "name = \"light\"", with: "name = \"light\"\nsigned = false")
        text = text.replacingOccurrences(of: "format = \"json\"", with: "counter = true")
        #expect(text.contains("signed = false") && text.contains("counter = true"))
        let c = try ConfigLoader.parse(text)
        let d = HomeAssistantDiscovery(configuration: c, topics: TopicLayout(base: c.baseTopic), version: "1")
        let door = try #require(d.devices.first { $0.name == "door" })
        let platforms = Dictionary(uniqueKeysWithValues: door.entities.map { ($0.id, $0.platform) })
        #expect(platforms["site_door_light"] == "switch")
        #expect(platforms["site_door_unlock"] != "button" && platforms["site_door_unlock"] != "switch")
        #expect(platforms["site_door_bolt"] != "lock")
        #expect(platforms["site_door_mode"] == "sensor")
        #expect(platforms["site_door_passages_event"] == "event")
        let event = try #require(door.entities.first { $0.id == "site_door_passages_event" })
        #expect(event.options.contains(#""event_types":["count","reset"]"#))
        #expect(event.options.contains(#""state_topic":"gateway/site/door/passages/event""#))
        let reader = try #require(d.devices.first { $0.name == "reader" })
        #expect(!reader.entities.contains { $0.platform == "button" || $0.platform == "text" })
        for device in d.devices {
            let root = try JSONValue.parse(Array(device.payload().utf8))
            guard case .object(let components)? = root["components"] else { Issue.record("no components"); continue }
            for (id, c) in components { #expect(HomeAssistantSchema.problems(c).isEmpty, "\(id): \(HomeAssistantSchema.problems(c))") }
        }
    }

    @Test("device, availability (gateway AND device), and the values each component reads and sends")
    func fieldByField() throws {
        let d = try Self.discovery()
        let gateway = try JSONValue.parse(Array(d.devices[0].payload().utf8))
        #expect(gateway["device"]?["identifiers"]?.array == [.string("site_gateway")])
        #expect(gateway["availability"] == nil, "the gateway's own connectivity sensor must show offline, not unavailable")
        let status = try #require(gateway["components"]?["site_gateway_status"])
        #expect(status["device_class"]?.string == "connectivity" && status["state_topic"]?.string == "gateway/site/status")
        #expect(status["payload_on"]?.string == "online" && status["payload_off"]?.string == "offline")

        let door = try JSONValue.parse(Array(d.devices[1].payload().utf8))
        #expect(door["device"]?["identifiers"]?.array == [.string("site_door")])
        #expect(door["device"]?["name"]?.string == "door" && door["device"]?["manufacturer"]?.string == "ACME" && door["device"]?["model"]?.string == "DC-200")
        #expect(door["device"]?["via_device"]?.string == "site_gateway")
        #expect(door["availability"]?.array.map { $0["topic"]?.string } == ["gateway/site/status", "gateway/site/door/status"])
        #expect(door["availability_mode"]?.string == "all")
        let c = { (id: String) in door["components"]?["site_door_\(id)"] }
        #expect(c("unlock")?["command_topic"]?.string == "gateway/site/door/unlock/set" && c("unlock")?["payload_press"]?.string == "true")
        #expect(c("contact")?["device_class"]?.string == "door")
        #expect(c("contact")?["payload_on"]?.string == "open" && c("contact")?["payload_off"]?.string == "closed")
        #expect(c("light")?["state_topic"]?.string == "gateway/site/door/light" && c("light")?["state_on"]?.string == "true")
        #expect(c("temp")?["unit_of_measurement"]?.string == "°C" && c("temp")?["state_class"]?.string == "measurement")
        #expect(c("setpoint")?["min"] == .number("5") && c("setpoint")?["max"] == .number("30") && c("setpoint")?["step"] == .number("1"))
        #expect(c("mode")?["options"]?.array == [.string("normal"), .string("free"), .string("locked")])
        #expect(c("state")?["device_class"]?.string == "enum" && c("state")?["options"]?.array == [.string("idle"), .string("busy")])
        // A raw value the map does not name (published as the number) becomes None: unknown in HA.
        #expect(c("state")?["value_template"]?.string == "{% set v = value %}{{ v if v in ['busy','idle'] else 'None' }}")
        #expect(c("passages")?["state_class"]?.string == "total_increasing" && c("passages")?["icon"]?.string == "mdi:walk")
        #expect(c("passages")?["value_template"]?.string == "{{ value_json.value }}")
        #expect(c("temp")?["value_template"] == nil, "plain values need no template")
        #expect(c("bolt")?["state_topic"]?.string == "gateway/site/door/contact" && c("bolt")?["state_locked"]?.string == "closed")
        #expect(c("bolt")?["payload_unlock"]?.string == "true" && c("bolt")?["payload_lock"]?.string == "false")

        let reader = try JSONValue.parse(Array(d.devices[2].payload().utf8))
        #expect(reader["components"]?["site_reader_beep"]?["pattern"]?.string == "^(?:[0-9])$", "anchored as the gateway matches")
        #expect(reader["components"]?["site_reader_beep"]?["min"] == .number("1"))
        #expect(reader["components"]?["site_reader_reset"]?["payload_press"] == nil, "Home Assistant sends PRESS, which the command takes")
        #expect(reader["components"]?["site_reader_beep"]?["max"] == .number("1"))
        #expect(reader["components"]?["site_reader_beep"]?["command_topic"]?.string == "gateway/site/reader/beep/set")
    }

    @Test("every ha override Home Assistant would refuse is refused by gateway check with its key path and the allowed values; names that would make ids collide too")
    func refusedOverrides() throws {
        let base = "[gateway]\nid = \"x\"\n[[bus]]\nname = \"b\"\ntype = \"tcp\"\nhost = \"h\"\n[[device]]\nname = \"d\"\nbus = \"b\"\n"
        func refusal(_ point: String, device: String = "") -> String {
            do {
                _ = try ConfigLoader.parse(base + device + "[[device.point]]\nname = \"p\"\n" + point + "\n")
                return "accepted"
            } catch { return "\(error)" }
        }
        let cases: [(String, String)] = [
            ("register = \"coil\"\naddress = 0\nwritable = true\nha = { device_class = \"door\" }", "device[d].point[p].ha.device_class: 'door' is not a device class of a switch (Home Assistant 2026.11.0): one of outlet, switch"),
            ("register = \"coil\"\naddress = 0\nwritable = true\npulse_ms = 500\nha = { device_class = \"doorbell\" }", "one of identify, restart, update"),
            ("register = \"holding\"\naddress = 0\nmap = { \"0\" = \"a\", \"1\" = \"b\" }\nha = { device_class = \"door\" }", "device[d].point[p].ha.device_class: a point with a map is an enum sensor"),
            ("register = \"holding\"\naddress = 0\nunit = \"C\"\nha = { device_class = \"temperature\" }", "device[d].point[p].unit: 'C' does not fit a temperature sensor (Home Assistant 2026.11.0): K, °C, °F"),
            ("register = \"holding\"\naddress = 0\nha = { state_class = \"sum\" }", "device[d].point[p].ha.state_class: 'sum' is not a state class (Home Assistant 2026.11.0): one of measurement, measurement_angle, total, total_increasing"),
            ("register = \"holding\"\naddress = 0\nwritable = true\nha = { state_class = \"measurement\" }", "device[d].point[p].ha.state_class: only a sensor has a state class; this point is a number"),
            ("register = \"holding\"\naddress = 0\nha = { icon = \"door\" }", "device[d].point[p].ha.icon: 'door' is not an icon"),
            ("register = \"holding\"\naddress = 0\nha = { component = \"select\", device_class = \"door\" }", "a select"),
        ]
        for (point, expected) in cases { #expect(refusal(point).contains(expected), "\(point)\n-> \(refusal(point))") }
        // Fine as they are: a valid class with a fitting unit, a mapped sensor left to enum.
        #expect(refusal("register = \"holding\"\naddress = 0\nunit = \"°C\"\nha = { device_class = \"temperature\", state_class = \"measurement\" }") == "accepted")
        #expect(refusal("register = \"discrete\"\naddress = 0\nha = { device_class = \"door\" }") == "accepted")
        // Names: the gateway's own device, and a leading or trailing '_'.
        let gatewayNamed = base.replacingOccurrences(of: "name = \"d\"", with: "name = \"gateway\"") + "[[device.point]]\nname = \"p\"\nregister = \"coil\"\naddress = 0\n"
        #expect(throws: (any Error).self) { try ConfigLoader.parse(gatewayNamed) }
        do { _ = try ConfigLoader.parse(gatewayNamed) } catch { #expect("\(error)".contains("device[gateway].name: 'gateway' is the name of the gateway's own device")) }
        #expect(refusal("register = \"coil\"\naddress = 0").contains("accepted"))
        do { _ = try ConfigLoader.parse(base + "[[device.point]]\nname = \"p_\"\nregister = \"coil\"\naddress = 0\n") } catch {
            #expect("\(error)".contains("device[d].point[p_].name: 'p_' must not begin or end with '_'"))
        }
        // A serial command pattern Python's re cannot compile.
        let serial = "[gateway]\nid = \"x\"\n[[device]]\nname = \"r\"\ndriver = \"serial\"\nport = \"/dev/null\"\n[[device.point]]\nname = \"s\"\nmatch = \"^(.*)$\"\n[[device.command]]\nname = \"c\"\nsend = \"{value}\"\npattern = '(?<n>[0-9]+)'\n"
        do { _ = try ConfigLoader.parse(serial); Issue.record("accepted") } catch { #expect("\(error)".contains("device[r].command[c].pattern: Home Assistant checks text with Python's re, which names groups (?P<name>...)"), "\(error)") }
        // With discovery off, none of it applies.
        #expect((try? ConfigLoader.parse(serial + "[homeassistant]\nenabled = false\n")) != nil)
    }

    @Test("ids are unambiguous: names joined with '_', a name's own '_' doubled; names without '_' keep their ids")
    func ids() {
        #expect(HomeAssistantDiscovery.id("site", "door", "temp") == "site_door_temp")
        #expect(HomeAssistantDiscovery.id("gw", "door_1", "temp") != HomeAssistantDiscovery.id("gw", "door", "1_temp"))
        #expect(HomeAssistantDiscovery.id("gw", "d", "x_event") != HomeAssistantDiscovery.id("gw", "d", "x", "event"))
        #expect(HomeAssistantDiscovery.gatewayDeviceID("lobby") != HomeAssistantDiscovery.id("lobby", "east_gateway"))
        #expect(HomeAssistantDiscovery.id("lobby_east", "door") == "lobby__east_door")
    }

    @Test("a removed component is announced once with only its platform; an earlier payload of someone else is not ours")
    func removal() throws {
        let d = try Self.discovery()
        let payload = try JSONValue.parse(Array(d.devices[1].payload(removing: ["site_door_gone": "sensor"]).utf8))
        #expect(payload["components"]?["site_door_gone"]?.keys == ["platform"])
        #expect(payload["components"]?["site_door_gone"]?["platform"]?.string == "sensor")
    }

    @Test("config errors: an unknown component, a command component on a read-only point, a lock's unknown state point")
    func configErrors() {
        let base = "[gateway]\nid = \"x\"\n[[bus]]\nname = \"b\"\ntype = \"tcp\"\nhost = \"h\"\n[[device]]\nname = \"d\"\nbus = \"b\"\n[[device.point]]\nname = \"p\"\nregister = \"coil\"\naddress = 0\n"
        for (extra, message) in [("ha = { component = \"light\" }", "is not one of"), ("ha = { component = \"switch\" }", "must be writable"),
                                 ("writable = true\nha = { component = \"lock\", state_point = \"nope\" }", "no point 'nope'"),
                                 ("ha = { state_point = \"p\" }", "are for component = \"lock\""), ("ha = { colour = 1 }", "unknown key")] {
            do {
                _ = try ConfigLoader.parse(base + extra + "\n")
                Issue.record("taken: \(extra)")
            } catch {
                #expect("\(error)".contains(message), "\(extra): \(error)")
            }
        }
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(base + "[homeassistant]\nprefix = \"home/+/x\"\n") }
    }
}

@Suite("Home Assistant discovery end to end (Mosquitto, gateway simulate, gateway run)", .timeLimit(.minutes(3)))
struct HomeAssistantTests {
    static let points = """
        [[device.point]]
        name = "unlock"
        register = "coil"
        address = 0
        writable = true
        pulse_ms = 300
        [[device.point]]
        name = "temp"
        register = "holding"
        address = 0
        """

    @Test("configs published retained; the button pulses the coil and is answered; HA's birth brings configs and values back")
    func publishPressRestart() async throws {
        let rig = try await Rig.start(points: Self.points, simArgs: ["--set", "holding:0=42"])
        try await rig.waitFor("gateway/e2e/dev/temp", "42")
        let ha = try await MQTTObserver(port: rig.broker.port, filters: ["homeassistant/#"], name: "ha")
        let topic = "homeassistant/device/e2e_dev/config"
        try await ha.waitUntil("the device config") { ha.count(topic) >= 1 && ha.count("homeassistant/device/e2e_gateway/config") >= 1 }
        // Retained: a subscriber that comes later (Home Assistant after a restart) gets it at once.
        let late = try await MQTTObserver(port: rig.broker.port, filters: [topic], name: "ha")
        try await late.waitUntil("the retained config") { late.count(topic) == 1 }
        #expect(late.seen.withLock { $0.first?.retain } == true)
        await late.client.disconnect()
        let config = try JSONValue.parse(try #require(ha.last(topic)))
        let button = try #require(config["components"]?["e2e_dev_unlock"])
        #expect(button["platform"]?.string == "button")
        // Press it as Home Assistant does: its payload_press on its command_topic, not retained.
        let commandTopic = try #require(button["command_topic"]?.string)
        let press = try #require(button["payload_press"]?.string)
        try await rig.observer.publish(to: commandTopic, payload: Array(press.utf8), qos: .atLeastOnce)
        let writes = try await rig.sim.waitForWrites(2)   // on, then off after pulse_ms
        #expect(writes.map(\.values) == [[1], [0]])
        try await rig.waitUntil("the press answered") { rig.payloads("gateway/e2e/dev/unlock/set/result").first?.hasPrefix("{\"ok\":true") == true }

        // Home Assistant restarts: its birth brings every config back, then the (unchanged) values.
        let configsBefore = ha.count(topic)
        let valuesBefore = rig.payloads("gateway/e2e/dev/temp").count
        try await ha.client.publish(to: "homeassistant/status", payload: Array("online".utf8), qos: .atLeastOnce)
        try await ha.waitUntil("the configs again", timeout: .seconds(15)) { ha.count(topic) > configsBefore }
        try await rig.waitUntil("the unchanged value again") { rig.payloads("gateway/e2e/dev/temp").count > valuesBefore }
        #expect(rig.payloads("gateway/e2e/dev/temp").last == "42")
        // A second birth right after: not answered (at most one republish per 30 s after the
        // first birth of a connect); the gateway says so.
        let answered = ha.count(topic)
        try await ha.client.publish(to: "homeassistant/status", payload: Array("online".utf8), qos: .atLeastOnce)
        _ = try await rig.gateway.waitForLine(containing: "not republishing", timeout: .seconds(10))
        #expect(ha.count(topic) == answered)
        // After a reconnect, the first birth is answered however soon it comes.
        try await rig.broker.restart()
        let connects = Mutex(0)
        _ = try await rig.gateway.waitForLine(timeout: .seconds(20)) { line in
            line.contains("birth and statuses published") && connects.withLock { $0 += 1; return $0 >= 2 }
        }
        let haAgain = try await MQTTObserver(port: rig.broker.port, filters: ["homeassistant/#"], name: "ha")
        try await haAgain.client.publish(to: "homeassistant/status", payload: Array("online".utf8), qos: .atLeastOnce)
        let answers = Mutex(0)
        _ = try await rig.gateway.waitForLine(timeout: .seconds(10)) { line in
            line.contains("Home Assistant is online: publishing discovery again") && answers.withLock { $0 += 1; return $0 >= 2 }
        }
        await haAgain.client.disconnect()

        // Availability as the config lists it: the device's own status goes offline when it
        // stops answering, the gateway's (its will) when the gateway is killed.
        let availability = config["availability"]?.array.compactMap { $0["topic"]?.string } ?? []
        #expect(availability == ["gateway/e2e/status", "gateway/e2e/dev/status"])
        _ = await rig.sim.stop()
        try await rig.waitFor(availability[1], "offline")
        rig.gateway.signal(SIGKILL)
        try await rig.waitFor(availability[0], "offline")
        await ha.client.disconnect()
        await rig.shutdown()
    }

    @Test("every command entity pressed exactly as Home Assistant would publish it (button, switch, lock, number, select, text, serial button): the device acts and answers ok")
    func pressEverything() async throws {
        let pty = try await PtyPair.start()
        let points = """
            [[device.point]]
            name = "unlock"
            register = "coil"
            address = 0
            writable = true
            pulse_ms = 200
            [[device.point]]
            name = "light"
            register = "coil"
            address = 1
            writable = true
            [[device.point]]
            name = "bolt"
            register = "coil"
            address = 2
            writable = true
            ha = { component = "lock" }
            [[device.point]]
            name = "setpoint"
            register = "holding"
            address = 1
            writable = true
            min = 5
            max = 30
            [[device.point]]
            name = "mode"
            register = "holding"
            address = 2
            writable = true
            map = { "0" = "normal", "1" = "free", "2" = "locked" }
            [[device]]
            name = "reader"
            driver = "serial"
            port = "\(pty.a)"
            framing = "line"
              [[device.point]]
              name = "scan"
              match = '^QR:(.+)$'
              [[device.command]]
              name = "beep"
              send = "BEEP {value}\\n"
              pattern = "[0-9]"
              max_length = 1
              [[device.command]]
              name = "reset"
              send = "RESET\\n"
            """
        let rig = try await Rig.start(points: points, simArgs: [])
        let far = try FarEnd(pty.b)
        let ha = try await MQTTObserver(port: rig.broker.port, filters: ["homeassistant/#"], name: "ha")
        try await ha.waitUntil("both device configs") { ha.count("homeassistant/device/e2e_dev/config") >= 1 && ha.count("homeassistant/device/e2e_reader/config") >= 1 }
        try await rig.waitFor("gateway/e2e/reader/status", "online")
        var pressed = 0
        for topic in ["homeassistant/device/e2e_dev/config", "homeassistant/device/e2e_reader/config"] {
            let config = try JSONValue.parse(try #require(ha.last(topic)))
            guard case .object(let components)? = config["components"] else { Issue.record("no components"); continue }
            for (id, c) in components.sorted(by: { $0.0 < $1.0 }) {
                guard let command = c["command_topic"]?.string, let platform = c["platform"]?.string else { continue }
                // What Home Assistant publishes for each action of this platform (its defaults where the config says nothing).
                let payloads: [String] = switch platform {
                case "button": [c["payload_press"]?.string ?? "PRESS"]
                case "switch": [c["payload_on"]?.string ?? "ON", c["payload_off"]?.string ?? "OFF"]
                case "lock": [c["payload_unlock"]?.string ?? "UNLOCK", c["payload_lock"]?.string ?? "LOCK"]
                case "number": ["7"]
                case "select": [c["options"]?.array.last?.string ?? "?"]
                case "text": ["5"]
                default: []
                }
                #expect(!payloads.isEmpty, "\(id): \(platform) not pressed")
                for payload in payloads {
                    let before = rig.payloads(command + "/result").count
                    try await rig.observer.publish(to: command, payload: Array(payload.utf8), qos: c["qos"] == .number("1") ? .atLeastOnce : .atMostOnce)
                    try await rig.waitUntil("\(id) answered for \(payload)") { rig.payloads(command + "/result").count > before }
                    let answer = rig.payloads(command + "/result").last ?? ""
                    #expect(answer.hasPrefix("{\"ok\":true"), "\(id) (\(platform)) refused \(payload): \(answer)")
                    pressed += 1
                }
            }
        }
        #expect(pressed == 9, "button, switch x2, lock x2, number, select, text, serial button")
        // The serial device got both commands as written.
        let written = String(decoding: await far.receive("BEEP 5\nRESET\n".utf8.count), as: UTF8.self)
        #expect(Set(written.split(separator: "\n").map(String.init)) == ["BEEP 5", "RESET"], "\(written)")
        await ha.client.disconnect()
        await rig.shutdown()
        await pty.stop()
    }

}
