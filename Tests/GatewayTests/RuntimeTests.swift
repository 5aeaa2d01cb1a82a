import Foundation
@testable import Gateway
import GatewayConfig
import Logging
import Modbus
import ModbusSimulator
@testable import MQTT
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing
import TestSupport

/// The whole runtime in this process, under service-lifecycle's `testGracefulShutdown`: its real
/// MQTT client against a real Mosquitto (started here on a loopback port), its buses scripted
/// (``FakeBus``). The two flows end to end through the runtime's wiring (dispatcher, units,
/// publisher, features, stop), without a `gateway run` child process.
@Suite("Runtime, in-process", .serialized)
struct RuntimeTests {
    static let base = "gateway/rt"

    /// A running site: broker, observer, the one fake bus every `[[bus]]` gets, the runtime.
    struct Site {
        let broker: Mosquitto
        let observer: MQTTObserver
        let bus: FakeBus
        let timeline: Timeline
        let runtime: GatewayRuntime
        let directory: String
        /// The runtime's log lines (`<level> <message>`).
        let logs: Timeline
        /// The operations listener, when the site has one (`[http] listen`).
        var operations: OperationsService? = nil
        /// The site's device on the wire, when it has one: `gateway simulate`'s simulator in this
        /// process, behind a real ``ModbusBus`` (``bus`` is then unused). Its writes go to the
        /// timeline as `modbus fc=<function> <address>=<values>`.
        var simulator: ModbusSimulator? = nil

        func payloads(_ topic: String) -> [String] { observer.payloads("\(RuntimeTests.base)/\(topic)") }

        /// Waits (bounded) until `topic` (under the base) has had `payload`.
        func waitFor(_ topic: String, _ payload: String) async throws {
            try await observer.waitUntil("\(topic) = \(payload), seen: \(observer.summary)", timeout: .seconds(10)) {
                payloads(topic).contains(payload)
            }
        }

        /// Publishes a `/set` and returns its answer (the next one on `/set/result`).
        func command(_ device: String, _ point: String, _ payload: String, retain: Bool = false, properties: MQTTProperties = MQTTProperties()) async throws -> String {
            let result = "\(device)/\(point)/set/result"
            let before = payloads(result).count
            try await observer.client.publish(to: "\(RuntimeTests.base)/\(device)/\(point)/set", payload: Array(payload.utf8), qos: .atLeastOnce,
                                              retain: retain, properties: properties)
            try await observer.waitUntil("an answer on \(result)", timeout: .seconds(10)) { payloads(result).count > before }
            return payloads(result)[before]
        }

        /// Reloads the runtime to `body` (the same broker, state directory and gateway id) and
        /// returns the change; throws if it was not applied.
        func reload(_ body: String, mqtt: String = "", commandKey: [UInt8]? = nil) async throws -> ConfigurationChange {
            let next = try RuntimeTests.configuration(body, port: broker.port, directory: directory, mqtt: mqtt)
            let outcome = await runtime.reload(to: next, password: nil, commandKey: commandKey)
            guard case .applied(let change) = outcome else { throw FixtureError("reload not applied: \(outcome)") }
            return change
        }

        func shutdown() async {
            simulator?.stop()
            await observer.client.disconnect()
            await broker.shutdown()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static func configuration(_ body: String, port: Int, directory: String, gateway: String = "", mqtt: String = "", http: String = "listen = \"\"",
                              id: String = "rt", devicePort: Int = 502, pollMs: Int = 50) throws -> GatewayConfiguration {
        try ConfigLoader.parse("""
            [gateway]
            id = "\(id)"
            state_dir = "\(directory)"
            require_synced_clock = false
            \(gateway)
            [mqtt]
            url = "mqtt://127.0.0.1:\(port)"
            keepalive = 5
            \(mqtt)
            [http]
            \(http)
            [[bus]]
            name = "plc"
            type = "tcp"
            host = "127.0.0.1"
            port = \(devicePort)
            [[device]]
            name = "d"
            bus = "plc"
            poll_ms = \(pollMs)
            offline_after = 2
            \(body)
            """)
    }

    /// `http`: the `[http]` table; with a `listen` address the site runs the operations listener
    /// (metrics, status, health) beside the runtime, as `gateway run` does. `httpPassword`: its
    /// basic-auth password.
    /// `simulated`: the device is a Modbus TCP simulator in this process, reached through a real
    /// ``ModbusBus`` (the wire), instead of a ``FakeBus``.
    static func site(_ body: String, gateway: String = "", mqtt: String = "", http: String = "listen = \"\"", httpPassword: [UInt8]? = nil,
                     commandKey: [UInt8]? = nil, simulated: Bool = false,
                     preparing: (@Sendable (Mosquitto) async throws -> Void)? = nil) async throws -> Site {
        let broker = try await Mosquitto.start()
        try await preparing?(broker)
        let observer = try await MQTTObserver(port: broker.port, filters: ["\(base)/#", "gateway/replies/#"], reconnect: true)
        let directory = try TestEnvironment.makeTemporaryDirectory("runtime")
        let timeline = Timeline()
        let bus = FakeBus(timeline: timeline, clock: TestClock())
        let logs = Timeline()
        let logger = Logger(label: "runtime") { _ in RecordingLogHandler(logs) }
        let simulator = simulated ? try ModbusSimulator(endpoint: .tcp(host: "127.0.0.1", port: 0), units: [1: SimulatedUnit()], onWrite: { w in
            timeline.append("modbus fc=\(w.function) \(w.address)=\(w.values)")
        }) : nil
        let config = try configuration(body, port: broker.port, directory: directory, gateway: gateway, mqtt: mqtt, http: http,
                                       devicePort: simulator?.boundPort ?? 502)
        let telemetry = config.http.address.map { _ in GatewayTelemetry(configuration: config, version: "test") }
        let fake: UnitFactory.MakeBus = { _, _ in bus }
        let runtime = GatewayRuntime(configuration: config, password: nil, commandKey: commandKey, telemetry: telemetry, watchLoops: telemetry != nil,
                                     version: "test", logger: logger, makeBus: simulated ? nil : fake)
        var site = Site(broker: broker, observer: observer, bus: bus, timeline: timeline, runtime: runtime, directory: directory, logs: logs)
        site.simulator = simulator
        if let telemetry, let address = config.http.address {
            site.operations = OperationsService(runtime: runtime, telemetry: telemetry, address: address, username: config.http.username,
                                                password: httpPassword, logger: logger)
        }
        return site
    }

    /// Another runtime on the site's broker and bus, with `body` and gateway `id` (its own state
    /// directory unless `directory` is given): the same gateway restarted, or a neighbour.
    static func another(_ site: Site, _ body: String, id: String = "rt", directory: String? = nil) throws -> Site {
        let directory = try directory ?? TestEnvironment.makeTemporaryDirectory("runtime")
        let logs = Timeline()
        let bus = site.bus
        let runtime = GatewayRuntime(configuration: try configuration(body, port: site.broker.port, directory: directory, id: id),
                                     password: nil, commandKey: nil, telemetry: nil, watchLoops: false, version: "test",
                                     logger: Logger(label: "runtime") { _ in RecordingLogHandler(logs) }, makeBus: { _, _ in bus })
        return Site(broker: site.broker, observer: site.observer, bus: site.bus, timeline: site.timeline, runtime: runtime, directory: directory, logs: logs)
    }

    /// Runs the runtime while `body` does its part, then shuts it down gracefully and waits for
    /// `run()` to return (bounded).
    static func running(_ site: Site, _ body: @Sendable (Site) async throws -> Void) async throws {
        try await testGracefulShutdown { trigger in
            // Inherit the graceful-shutdown context of this task (a task-local).
            let run = Task { try await site.runtime.run() }
            let operations = site.operations.map { service in Task { try await service.run() } }
            var failure: (any Error)?
            do { try await body(site) } catch { failure = error }
            trigger.triggerGracefulShutdown()
            try await withTimeout(.seconds(15), "run() to return after the graceful shutdown") {
                try await run.value
                try await operations?.value
            }
            if let failure { throw failure }
        }
    }

    static let points = """
        [[device.point]]
        name = "temp"
        register = "holding"
        address = 0
        scale = 0.1
        [[device.point]]
        name = "unlock"
        register = "coil"
        address = 3
        writable = true
        pulse_ms = 60000
        """

    @Test("value flow: a polled value and the device's status reach the broker; a graceful stop publishes offline for the device, then the gateway")
    func valueFlow() async throws {
        let site = try await Self.site(Self.points)
        site.bus.setHolding(0, 215)
        try await Self.running(site) { site in
            try await site.waitFor("status", "online")
            try await site.waitFor("d/status", "online")
            try await site.waitFor("d/temp", "21.5")
            site.bus.setHolding(0, 220)
            try await site.waitFor("d/temp", "22")
        }
        try await site.waitFor("d/status", "offline")
        try await site.waitFor("status", "offline")
        #expect(site.payloads("d/temp") == ["21.5", "22"], "each value once")
        let order = site.observer.seen.withLock { $0.map { "\($0.topic)=\($0.payloadString)" } }
        let device = order.firstIndex(of: "\(Self.base)/d/status=offline"), gateway = order.firstIndex(of: "\(Self.base)/status=offline")
        #expect(device != nil && gateway != nil && device! < gateway!, "\(order)")
        await site.shutdown()
    }

    @Test("command flow: a /set through the broker is written once, read back, its value published, then answered; an unknown device is refused by the dispatcher")
    func commandFlow() async throws {
        let site = try await Self.site(Self.points)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            let answer = try await site.command("d", "unlock", "true")
            #expect(answer == #"{"ok":true,"value":true}"#)
            #expect(site.timeline.entries.filter { !$0.hasPrefix("poll") }.prefix(2) == ["write 3=true @0", "read 3"])
            try await site.waitFor("d/unlock", "true")
            // The read-back is published once: five more polls publish nothing new.
            let polls = site.timeline.count("poll")
            try await site.timeline.await(polls + 5, of: "poll")
            #expect(site.payloads("d/unlock") == ["false", "true"], "the read-back value once, not again by the polls")
            #expect(try await site.command("nope", "x", "1") == #"{"ok":false,"error":"unknown device 'nope'"}"#)
            #expect(try await site.command("d", "temp", "1") == #"{"ok":false,"error":"point 'temp' is not writable"}"#)
        }
        #expect(site.bus.coil(3) == false, "the stop ended the pulse")
        await site.shutdown()
    }

    @Test("a graceful stop during a pulse writes the off before it leaves, and the journal is empty after")
    func stopMidPulse() async throws {
        let site = try await Self.site(Self.points)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(try await site.command("d", "unlock", "true") == #"{"ok":true,"value":true}"#)
            #expect(site.bus.coil(3) == true)
            #expect(site.runtime.services.journal.current.count == 1)
        }
        #expect(site.bus.coil(3) == false, "the pulse of 60 s was switched off by the stop")
        #expect(site.runtime.services.journal.current.isEmpty)
        let writes = site.timeline.entries.filter { $0.hasPrefix("write") }
        #expect(writes == ["write 3=true @0", "write 3=false @0"])
        try await site.waitFor("d/status", "offline")
        await site.shutdown()
    }

    @Test("a device that stops answering goes offline after offline_after polls; a command to it is refused without a write; it comes back online")
    func deviceAway() async throws {
        let site = try await Self.site(Self.points)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            site.bus.setReachable(false)
            try await site.waitFor("d/status", "offline")
            #expect(try await site.command("d", "unlock", "true") == #"{"ok":false,"error":"device 'd' is offline"}"#)
            #expect(site.timeline.count(startingWith: "write") == 0)
            site.bus.setReachable(true)
            try await site.observer.waitUntil("online again", timeout: .seconds(10)) { site.payloads("d/status").last == "online" }
            // Back online: the refused command is not replayed.
            let polls = site.timeline.count("poll")
            try await site.timeline.await(polls + 3, of: "poll")
            #expect(site.timeline.count("write") == 0)
        }
        #expect(site.payloads("d/status").prefix(3) == ["online", "offline", "online"])
        await site.shutdown()
    }

    @Test("reload mid-pulse: the pulse point a reload removes is switched off before the reload returns; an added device starts; the removed point is refused")
    func reloadMidPulse() async throws {
        let site = try await Self.site(Self.points)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(try await site.command("d", "unlock", "true") == #"{"ok":true,"value":true}"#)
            // The same device without its pulse point, and a second device on the bus.
            let change = try await site.reload("""
                [[device.point]]
                name = "temp"
                register = "holding"
                address = 0
                scale = 0.1
                [[device]]
                name = "e"
                bus = "plc"
                unit = 2
                poll_ms = 50
                [[device.point]]
                name = "level"
                register = "holding"
                address = 1
                """)
            #expect(change.added == ["e"] && change.changed == ["d"])
            #expect(site.bus.coil(3) == false, "the removed pulse point was switched off by the reload")
            #expect(site.runtime.services.journal.current.isEmpty)
            try await site.waitFor("e/status", "online")
            #expect(try await site.command("d", "unlock", "true") == #"{"ok":false,"error":"unknown point 'unlock' on device 'd'"}"#)
        }
        await site.shutdown()
    }

    @Test("failsafe_on_stop: a graceful stop writes every fail-safe value once polling has stopped, and reports it")
    func failsafeOnStop() async throws {
        let site = try await Self.site(Self.points + """

            [[device.point]]
            name = "barrier"
            register = "coil"
            address = 1
            writable = true
            failsafe = true
            """, gateway: "failsafe_on_stop = true")
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(site.bus.coil(1) == nil, "nothing written while running")
        }
        #expect(site.bus.coil(1) == true)
        #expect(site.timeline.entries.filter { $0.hasPrefix("write") } == ["write 1=true @0"])
        try await site.observer.waitUntil("the fail-safe report", timeout: .seconds(10)) { !site.payloads("failsafe").isEmpty }
        #expect(site.payloads("failsafe").last?.contains(#""point":"barrier","value":"true""#) == true, "\(site.payloads("failsafe"))")
        // (The offline statuses go ahead of what is queued, the report among it: no order between them.)
        try await site.waitFor("status", "offline")
        await site.shutdown()
    }

    // MARK: the broker side of commands and values (the runtime's real client, a real Mosquitto)

    static var panel: String { CommandTests.points() }

    static func nowMs() -> Int64 { unixMilliseconds() }

    @Test("MQTT 5: the answer goes to the response topic with the correlation data; /get answers too")
    func responseTopic() async throws {
        let site = try await Self.site(Self.panel)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            var props = MQTTProperties()
            props.responseTopic = "gateway/replies/r1"
            props.correlationData = [9, 8, 7]
            try await site.observer.client.publish(to: "\(Self.base)/d/light/set", payload: Array("true".utf8), qos: .exactlyOnce, properties: props)
            try await site.observer.waitUntil("the reply", timeout: .seconds(10)) { site.observer.payloads("gateway/replies/r1") == [#"{"ok":true,"value":true}"#] }
            let reply = site.observer.seen.withLock { $0.first { $0.topic == "gateway/replies/r1" } }
            #expect(reply?.properties.correlationData == [9, 8, 7])
            #expect(reply?.retain == false)
            #expect(site.payloads("d/light/set/result").isEmpty)
            site.bus.setHolding(40, 77)
            props.responseTopic = "gateway/replies/r2"
            props.correlationData = [1]
            try await site.observer.client.publish(to: "\(Self.base)/d/count/get", payload: [], qos: .atLeastOnce, properties: props)
            try await site.observer.waitUntil("the /get reply", timeout: .seconds(10)) { site.observer.payloads("gateway/replies/r2") == [#"{"ok":true,"value":77}"#] }
            try await site.waitFor("d/count", "77")
        }
        await site.shutdown()
    }

    @Test("MQTT 5: a response topic that is a command topic, has wildcards or is under the base is not used; the answer goes to /set/result with a note")
    func refusedResponseTopics() async throws {
        let site = try await Self.site(Self.panel)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            for (n, rt) in ["\(Self.base)/d/light/set", "\(Self.base)/status", "\(Self.base)/d/light", "other/x/get"].enumerated() {
                var props = MQTTProperties()
                props.responseTopic = rt
                let answer = try await site.command("d", "light", n % 2 == 0 ? "true" : "false", properties: props)
                #expect(answer.hasPrefix(#"{"ok":true"#) && answer.contains(#""note":"response topic refused: "#), "\(rt): \(answer)")
            }
            // The value topic carries only values, and exactly one write per command.
            #expect(!site.payloads("d/light").contains { $0.contains("ok") })
            #expect(site.timeline.count("write") == 4)
        }
        await site.shutdown()
    }

    @Test("every refusal is answered with the reason and writes nothing; a retained command is refused")
    func refusals() async throws {
        let site = try await Self.site(Self.panel, gateway: "command_max_age_ms = 5000")
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            func json(_ value: String, ts: Int64 = Self.nowMs()) -> String { #"{"value": \#(value), "ts": \#(ts)}"# }
            let cases: [(String, String, String, String)] = [   // device, point, payload, expected error text
                ("nodev", "x", json("true"), "unknown device 'nodev'"),
                ("d", "nopoint", json("true"), "unknown point 'nopoint'"),
                ("d", "count", json("5"), "point 'count' is not writable"),
                ("d", "light", json(#""banana""#), "is not a bool"),
                ("d", "mode", json("7"), "is not a value of 'mode'"),
                ("d", "setpoint", json("31"), "above the maximum 30"),
                ("d", "setpoint", json("2"), "below the minimum 5"),
                ("d", "setpoint", json("21.55"), "not a multiple of the scale"),
                ("d", "big", json("-1"), "does not fit uint32"),
                ("d", "light", #"{"value": true, "by": "me"}"#, "unknown JSON key 'by'"),
                ("d", "light", "true", "command_max_age_ms is set"),
                ("d", "light", json("true", ts: Self.nowMs() - 60_000), "stale command"),
                ("d", "unlock", json("null"), "\\\"value\\\" must be a bool"),
            ]
            for (device, point, payload, expected) in cases {
                let answer = try await site.command(device, point, payload)
                #expect(answer.hasPrefix(#"{"ok":false,"error":"#) && answer.contains(expected), "\(point) \(payload): \(answer)")
            }
            // Retained: refused (a retained unlock would fire on every reconnect).
            #expect(try await site.command("d", "unlock", json("true"), retain: true).contains("retained command refused"))
            try await site.observer.client.publish(to: "\(Self.base)/d/unlock/set", payload: [], qos: .atLeastOnce, retain: true)   // clear it
            #expect(site.timeline.count("write") == 0)
            // A valid command still works and is the only write.
            #expect(try await site.command("d", "light", json("true")) == #"{"ok":true,"value":true}"#)
            #expect(site.timeline.count("write") == 1)
        }
        await site.shutdown()
    }

    @Test("publish on change only, with deadband: a move smaller than the deadband is not published")
    func deadband() async throws {
        let site = try await Self.site("""
            [[device.point]]
            name = "temp"
            register = "holding"
            address = 100
            type = "int16"
            scale = 0.1
            deadband = 0.2
            [[device.point]]
            name = "marker"
            register = "holding"
            address = 101
            """)
        site.bus.setHolding(100, 215)
        try await Self.running(site) { site in
            try await site.waitFor("d/temp", "21.5")
            site.bus.setHolding(100, 216)   // +0.1: below the deadband
            site.bus.setHolding(101, 1)     // read in the same poll as 216 (or a later one)
            try await site.waitFor("d/marker", "1")
            site.bus.setHolding(100, 218)   // +0.3 from the last published 21.5
            try await site.waitFor("d/temp", "21.8")
            #expect(site.payloads("d/temp") == ["21.5", "21.8"])
            #expect(site.payloads("d/marker") == ["0", "1"])
        }
        await site.shutdown()
    }

    @Test("broker restart: the client reconnects, publishes the birth and republishes every status")
    func brokerRestart() async throws {
        let site = try await Self.site(Self.points)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            let before = site.payloads("status").count
            try await site.broker.restart()   // persistence off: retained statuses are gone
            // (The old broker may deliver the will while it shuts down: wait for the new birth.)
            try await site.observer.waitUntil("a new birth", timeout: .seconds(20)) {
                let s = site.payloads("status")
                return s.count > before && s.last == "online"
            }
            try await site.observer.waitUntil("the device status republished", timeout: .seconds(20)) {
                let s = site.payloads("d/status")
                return s.count >= 2 && s.last == "online"
            }
        }
        await site.shutdown()
    }

    @Test("Home Assistant enabled = false: not among the features, nothing under the prefix, and HA's birth is not listened to")
    func homeAssistantDisabled() async throws {
        let site = try await Self.site(Self.points + "\n[homeassistant]\nenabled = false\n")
        #expect(!site.runtime.features.contains { $0 is HomeAssistantPublisher })
        let ha = try await MQTTObserver(port: site.broker.port, filters: ["homeassistant/#"], name: "ha")
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            try await ha.client.publish(to: "homeassistant/status", payload: Array("online".utf8), qos: .atLeastOnce)
            // The birth is seen by the recorder itself; anything else would be the gateway's.
            try await ha.waitUntil("the recorder's own birth") { ha.count("homeassistant/status") == 1 }
            // A command after the birth: had the birth reached the gateway, it would have come first.
            _ = try await site.command("d", "unlock", "true")
        }
        #expect(ha.seen.withLock { $0.filter { $0.topic != "homeassistant/status" }.isEmpty })
        await ha.client.disconnect()
        await site.shutdown()
    }

    @Test("events: a counter's increments (3 at once, a wrap 65535 -> 2, a reset), a latch seen set twice (two events, each cleared on the device)")
    func events() async throws {
        let site = try await Self.site("""
            [[device.point]]
            name = "passages"
            register = "holding"
            address = 10
            counter = true
            [[device.point]]
            name = "forced"
            register = "coil"
            address = 5
            latch = true
            """)
        site.bus.setHolding(10, 7)
        try await Self.running(site) { site in
            let event = "d/passages/event", latch = "d/forced/event"
            try await site.waitFor("d/passages", "7")
            for (n, value) in [UInt16(10), 65535, 2, 0].enumerated() {
                site.bus.setHolding(10, value)
                try await site.observer.waitUntil("counter event \(n + 1)", timeout: .seconds(10)) { site.payloads(event).count == n + 1 }
            }
            let kinds = site.payloads(event).map { p -> String in
                let count = p.range(of: #""count":"#).map { String(p[$0.upperBound...].prefix { $0.isNumber }) } ?? "?"
                return (p.contains(#""event_type":"reset""#) ? "reset " : "") + count
            }
            #expect(kinds == ["3", "65525", "3", "reset 0"])
            #expect(site.payloads(event).allSatisfy { $0.contains(#""ts":"#) && !$0.contains("-") })

            // The latch: set by the device, seen, cleared by the gateway (a write of 0), set again.
            site.bus.setCoil(5, true)
            try await site.observer.waitUntil("the first latch event", timeout: .seconds(10)) { site.payloads(latch).count == 1 }
            try await site.timeline.await(1, of: "write")
            #expect(site.bus.coil(5) == false)
            // The poll after the clear sees it clear again (false, true, false on the value topic).
            try await site.observer.waitUntil("the latch seen clear again", timeout: .seconds(10)) { site.payloads("d/forced") == ["false", "true", "false"] }
            site.bus.setCoil(5, true)
            try await site.observer.waitUntil("the second latch event", timeout: .seconds(10)) { site.payloads(latch).count == 2 }
            try await site.timeline.await(2, of: "write")
            #expect(site.timeline.entries.filter { $0.hasPrefix("write") } == ["write 5=false @0", "write 5=false @0"])
            #expect(site.payloads(latch).allSatisfy { $0.hasPrefix(#"{"event_type":"set","ts":"#) })
        }
        await site.shutdown()
    }

    @Test("a signed command refused before the pipeline (unknown device) or by it (unknown point) spends its id: after a reload adds them, its copy is refused, and nothing is written")
    func refusedSpendsID() async throws {
        let key = Array("k3y-for-the-doors-of-this-site".utf8)
        let site = try await Self.site(Self.points, commandKey: key)
        let signer = CommandSigner(key: key)
        // Signed for a device and a point this configuration does not have yet.
        let forDevice = signer.payload(topic: "\(Self.base)/door2/unlock/set", value: .bool(true), ts: unixMilliseconds(), id: "door2-unlock")
        let forPoint = signer.payload(topic: "\(Self.base)/d/unlock2/set", value: .bool(true), ts: unixMilliseconds(), id: "d-unlock2")
        let refusal = #"{"ok":false,"error":"not accepted: a valid signed command is required (value, ts, id, sig)"}"#
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(try await site.command("door2", "unlock", forDevice) == #"{"ok":false,"error":"unknown device 'door2'"}"#)
            #expect(try await site.command("d", "unlock2", forPoint).contains("unknown point"))
            // The reload adds both.
            _ = try await site.reload(Self.points + """

                [[device.point]]
                name = "unlock2"
                register = "coil"
                address = 9
                writable = true
                [[device]]
                name = "door2"
                bus = "plc"
                unit = 2
                poll_ms = 50
                [[device.point]]
                name = "unlock"
                register = "coil"
                address = 0
                writable = true
                """, commandKey: key)
            try await site.waitFor("door2/status", "online")
            #expect(try await site.command("door2", "unlock", forDevice) == refusal, "the copy for the new device")
            #expect(try await site.command("d", "unlock2", forPoint) == refusal, "the copy for the new point")
            #expect(site.timeline.count("write") == 0, "a spent command wrote")
        }
        await site.shutdown()
    }

    @Test("broker stopped during a pulse: the off is still written, a pulse length after the on")
    func brokerLostDuringPulse() async throws {
        let site = try await Self.site(Self.points.replacingOccurrences(of: "pulse_ms = 60000", with: "pulse_ms = 1500"))
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            let on = ContinuousClock.now
            #expect(try await site.command("d", "unlock", "true") == #"{"ok":true,"value":true}"#)
            await site.broker.stop()
            try await site.timeline.await(startingWith: "write 3=false")
            #expect(ContinuousClock.now - on >= .milliseconds(1500), "never early")
            #expect(site.bus.coil(3) == false)
        }
        await site.shutdown()
    }

    @Test("MQTT 3.1.1: a 2 MiB retained /set is read past and dropped with one log line; the client stays connected and commands work")
    func oversizedCommand() async throws {
        let site = try await Self.site(Self.panel, mqtt: "protocol = 3")
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            let big = [UInt8](repeating: UInt8(ascii: "1"), count: 2 << 20)
            try await site.observer.client.publish(to: "\(Self.base)/d/light/set", payload: big, qos: .atLeastOnce, retain: true)
            try await site.logs.await(containing: "dropped an incoming message of")
            // Still connected: a command works and a changed value is published.
            #expect(try await site.command("d", "mode", "free") == #"{"ok":true,"value":"free"}"#)
            site.bus.setHolding(40, 77)
            try await site.waitFor("d/count", "77")
            #expect(site.logs.count(containing: "dropped an incoming message of") == 1)
            #expect(site.logs.count(containing: "connection lost") == 0 && site.logs.count(containing: "another client") == 0, "\(site.logs.entries.suffix(10))")
            #expect(site.timeline.entries.filter { $0.hasPrefix("write") } == ["write 20=[1] @0"], "only the mode command was written")
            try await site.observer.client.publish(to: "\(Self.base)/d/light/set", payload: [], qos: .atLeastOnce, retain: true)   // clear it
        }
        await site.shutdown()
    }

    @Test("[mqtt] changed by a reload: one reconnect with the new settings, no will (no 'offline'), the birth again, commands work after it")
    func mqttChange() async throws {
        let site = try await Self.site(Self.panel)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            let before = site.payloads("status").count
            _ = try await site.reload(Self.panel, mqtt: "client_id = \"gw-reloaded\"")
            try await site.observer.waitUntil("the birth after the reconnect", timeout: .seconds(10)) { site.payloads("status").count > before }
            #expect(!site.payloads("status").contains("offline"), "the will was published")
            #expect(try await site.command("d", "light", "true") == #"{"ok":true,"value":true}"#)
            #expect(site.logs.count(containing: "MQTT connected to") == 2, "one reconnect: \(site.logs.entries.filter { $0.contains("MQTT") })")
        }
        await site.shutdown()
    }

    @Test("more retained configs under the prefix than the start-up scan reads: it stops at 5,000 and says so once, and discovery still goes out")
    func scanBounded() async throws {
        let site = try await Self.site(Self.points) { broker in
            // Before the gateway starts: 5,001 retained configs of someone else.
            let other = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "other-configs"))
            try await other.connect()
            for i in 0...5_000 {
                try await other.enqueue(to: "homeassistant/device/other\(i)/config", payload: Array("{}".utf8), qos: .atMostOnce, retain: true)
            }
            try await other.publish(to: "homeassistant/device/other-last/config", payload: Array("{}".utf8), qos: .atLeastOnce, retain: true)
            await other.disconnect()
        }
        let ha = try await MQTTObserver(port: site.broker.port, filters: ["homeassistant/device/rt_d/config"], name: "ha")
        try await Self.running(site) { site in
            try await ha.waitUntil("the device's config", timeout: .seconds(20)) { ha.count("homeassistant/device/rt_d/config") >= 1 }
        }
        #expect(site.logs.count(containing: "cut at 5000 configs") == 1, "said once")
        await ha.client.disconnect()
        await site.shutdown()
    }

    @Test("fail-safe: broker stopped; after failsafe_after_s exactly one write of the fail-safe value; broker back: <base>/failsafe says so; nothing more written")
    func failsafeBrokerStopped() async throws {
        let site = try await Self.site("""
            [[device.point]]
            name = "barrier"
            register = "holding"
            address = 5
            writable = true
            map = { "0" = "closed", "1" = "free" }
            failsafe = "free"
            [[device.point]]
            name = "count"
            register = "holding"
            address = 40
            """, gateway: "failsafe_after_s = 1")
        try await Self.running(site) { site in
            try await site.waitFor("d/barrier", "closed")
            try await site.logs.await(containing: "birth and statuses published")
            #expect(site.timeline.count("write") == 0, "written while connected")
            await site.broker.stop()
            try await site.timeline.await(1, of: "write", within: .seconds(15))
            #expect(site.timeline.entries.filter { $0.hasPrefix("write") } == ["write 5=[1] @0"])
            try await site.logs.await(containing: "FAIL-SAFE: wrote barrier = free")
            try await site.broker.restart()
            try await site.observer.waitUntil("the fail-safe report", timeout: .seconds(30)) {
                site.payloads("failsafe").contains { $0.contains(#""device":"d","point":"barrier","value":"free""#) }
            }
            // After it, a value change still comes through, and nothing more was written.
            site.bus.setHolding(40, 9)
            try await site.waitFor("d/count", "9")
            #expect(site.timeline.count("write") == 1)
            #expect(site.payloads("d/barrier").last == "free")
        }
        await site.shutdown()
    }

    @Test("a reload moves a pulse point while its device is silent: the off is written where the on went, retried until taken, never to the new address")
    func reloadMovesPulseDeviceSilent() async throws {
        let site = try await Self.site(Self.points)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(try await site.command("d", "unlock", "true") == #"{"ok":true,"value":true}"#)
            site.bus.setReachable(false)   // the device goes silent
            _ = try await site.reload(Self.points.replacingOccurrences(of: "address = 3", with: "address = 7"))
            try await site.logs.await(containing: "pulse end FAILED where it was switched on")
            // The device answers again: the off goes to coil 3, where the on went.
            site.bus.setReachable(true)
            try await withTimeout(.seconds(20), "the off where the on went") { await site.timeline.until { $0.entries.contains("write 3=false @0") } }
            try await site.logs.await(containing: "pulse ended: switched off where it was switched on")
            #expect(site.runtime.services.journal.current.isEmpty)
            #expect(!site.timeline.entries.contains { $0.hasPrefix("write 7=") }, "written at the new address unasked")
        }
        await site.shutdown()
    }

    // MARK: Home Assistant across restarts and neighbours

    static var haPoints: String { HomeAssistantTests.points }

    @Test("a device or point removed from the config: its retained config is cleared, the point marked removed, at the next start")
    func staleConfigsCleared() async throws {
        let site = try await Self.site(Self.haPoints + """

            [[device]]
            name = "old"
            bus = "plc"
            poll_ms = 50
            [[device.point]]
            name = "v"
            register = "coil"
            address = 5
            """)
        let ha = try await MQTTObserver(port: site.broker.port, filters: ["homeassistant/#"], name: "ha")
        try await Self.running(site) { _ in
            try await ha.waitUntil("both configs") {
                ha.count("homeassistant/device/rt_old/config") >= 1 && ha.count("homeassistant/device/rt_d/config") >= 1
            }
        }
        // The site removes device "old" and point "temp" of "d", and starts the gateway again.
        let again = try Self.another(site, Self.haPoints.replacingOccurrences(of: "[[device.point]]\nname = \"temp\"\nregister = \"holding\"\naddress = 0", with: ""),
                                     directory: site.directory)
        try await Self.running(again) { _ in
            try await ha.waitUntil("the old config cleared") { ha.last("homeassistant/device/rt_old/config") == [] }
            try await ha.waitUntil("d's config again") { ha.count("homeassistant/device/rt_d/config") >= 2 }
        }
        let d = try JSONValue.parse(try #require(ha.last("homeassistant/device/rt_d/config")))
        #expect(d["components"]?["rt_d_temp"]?.keys == ["platform"], "removed point announced with its platform only")
        #expect(d["components"]?["rt_d_unlock"]?["platform"]?.string == "button")
        // A new subscriber sees no retained config for the removed device.
        let late = try await MQTTObserver(port: site.broker.port, filters: ["homeassistant/device/+/config"], name: "ha")
        try await late.waitUntil("d's retained config") { late.count("homeassistant/device/rt_d/config") == 1 }
        #expect(late.count("homeassistant/device/rt_old/config") == 0)
        await late.client.disconnect()
        await ha.client.disconnect()
        await site.shutdown()
    }

    @Test("two gateways, lobby and lobby_east, on one broker: restarting lobby leaves lobby_east's configs retained")
    func neighbours() async throws {
        let lobby = try await Self.site(Self.haPoints)
        let east = try Self.another(lobby, Self.haPoints, id: "rt_east")
        let ha = try await MQTTObserver(port: lobby.broker.port, filters: ["homeassistant/device/+/config"], name: "ha")
        let lobbyTopics: Set<String> = ["homeassistant/device/rt_d/config", "homeassistant/device/rt_gateway/config"]
        try await Self.running(east) { _ in
            try await Self.running(lobby) { _ in
                try await ha.waitUntil("four configs") { Set(ha.seen.withLock { $0.map(\.topic) }).count >= 4 }
            }
            let eastTopics = Set(ha.seen.withLock { $0.map(\.topic) }).subtracting(lobbyTopics)
            #expect(eastTopics.count == 2, "\(eastTopics)")
            // lobby restarts: its start-up scan reads every retained config, east's among them.
            let again = try Self.another(lobby, Self.haPoints, directory: lobby.directory)
            try await Self.running(again) { again in
                try await again.logs.await(containing: "discovery published")
                let late = try await MQTTObserver(port: lobby.broker.port, filters: ["homeassistant/device/+/config"], name: "ha")
                try await late.waitUntil("lobby's retained config") { late.count("homeassistant/device/rt_d/config") >= 1 }
                // Retained messages of other topics may come a moment later; a cleared one never
                // comes (an empty retained payload deletes it), hence a bounded wait that may run out.
                try? await late.waitUntil("east's retained configs", timeout: .seconds(5)) { eastTopics.allSatisfy { late.count($0) >= 1 } }
                for topic in eastTopics {
                    #expect(late.last(topic).map { !$0.isEmpty } == true, "lobby cleared lobby_east's \(topic)")
                }
                #expect(again.logs.count(containing: "clearing") == 0)
                await late.client.disconnect()
            }
        }
        await ha.client.disconnect()
        await lobby.shutdown()
    }

    // MARK: values written

    @Test("plain and JSON values: bools, map names (any case), scaled numbers, 32-bit integers, each with its function; read back published")
    func values() async throws {
        let site = try await Self.site(Self.panel, simulated: true)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(try await site.command("d", "mode", "LOCKED") == #"{"ok":true,"value":"locked"}"#)
            #expect(try await site.command("d", "mode", #"{"value": 1}"#) == #"{"ok":true,"value":"free"}"#)
            #expect(try await site.command("d", "setpoint", "21.5") == #"{"ok":true,"value":21.5}"#)
            #expect(try await site.command("d", "big", #"{"value": 70000}"#) == #"{"ok":true,"value":70000}"#)
            #expect(try await site.command("d", "light", #"{"value": true}"#) == #"{"ok":true,"value":true}"#)
            #expect(site.timeline.entries.filter { $0.hasPrefix("modbus") }
                    == ["modbus fc=6 20=[2]", "modbus fc=6 20=[1]", "modbus fc=6 30=[215]", "modbus fc=16 50=[1, 4464]", "modbus fc=5 1=[1]"])
            try await site.waitFor("d/setpoint", "21.5")
            try await site.waitFor("d/mode", "free")
        }
        await site.shutdown()
    }

    @Test("write_multiple: a device without FC 5/6 gets FC 15 for a coil and 16 for one register")
    func writeMultiple() async throws {
        let site = try await Self.site("write_multiple = true\n" + Self.panel, simulated: true)
        try await Self.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(try await site.command("d", "light", "true") == #"{"ok":true,"value":true}"#)
            #expect(try await site.command("d", "mode", "locked") == #"{"ok":true,"value":"locked"}"#)
            #expect(site.timeline.entries.filter { $0.hasPrefix("modbus") } == ["modbus fc=15 1=[1]", "modbus fc=16 20=[2]"])
        }
        await site.shutdown()
    }

    @Test("serial devices: a reload removes one (offline, 'unknown device'), adds one (its frames published) and leaves the Modbus device alone")
    func reloadSerialDevices() async throws {
        let bar = try await PtyPair.start(), qr = try await PtyPair.start()
        let site = try await Self.site(Self.points + SerialDeviceTests.barrier(bar.a))
        try await Self.running(site) { site in
            try await site.waitFor("bar/status", "online")
            try await site.waitFor("d/status", "online")
            let statuses = site.payloads("d/status").count
            let change = try await site.reload(Self.points + SerialDeviceTests.reader(qr.a))
            #expect(change.added == ["qr"] && change.removed == ["bar"] && change.changed.isEmpty)
            try await site.waitFor("bar/status", "offline")
            try await site.waitFor("qr/status", "online")
            let far = try FarEnd(qr.b)
            #expect(await far.send("QR:AFTER-RELOAD\n"))
            try await site.waitFor("qr/scan", "AFTER-RELOAD")
            #expect(try await site.command("bar", "open", "1") == #"{"ok":false,"error":"unknown device 'bar'"}"#)
            #expect(site.payloads("d/status").count == statuses)
        }
        await site.shutdown()
        await bar.stop()
        await qr.stop()
    }
}
