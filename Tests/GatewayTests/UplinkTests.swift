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

@Suite("Gateway uplink end to end (Mosquitto, gateway simulate, gateway run)", .timeLimit(.minutes(3)))
struct UplinkTests {
    static let allTypes = """
        [[device.point]]
        name = "coil"
        register = "coil"
        address = 0
        [[device.point]]
        name = "door"
        register = "discrete"
        address = 0
        map = { "0" = "closed", "1" = "open" }
        [[device.point]]
        name = "i16"
        register = "holding"
        address = 0
        type = "int16"
        [[device.point]]
        name = "u16"
        register = "holding"
        address = 1
        [[device.point]]
        name = "i32"
        register = "holding"
        address = 2
        type = "int32"
        [[device.point]]
        name = "u32le"
        register = "input"
        address = 0
        type = "uint32"
        word_order = "little"
        [[device.point]]
        name = "f32"
        register = "holding"
        address = 4
        type = "float32"
        [[device.point]]
        name = "temp"
        register = "holding"
        address = 10
        type = "int16"
        scale = 0.1
        [[device.point]]
        name = "flag"
        register = "holding"
        address = 11
        type = "bool"
        bit = 2
        [[device.point]]
        name = "label"
        register = "holding"
        address = 20
        type = "string"
        length = 2
        [[device.point]]
        name = "mode"
        register = "holding"
        address = 30
        map = { "0" = "normal", "1" = "free", "2" = "locked" }
        [[device.point]]
        name = "tempjson"
        register = "holding"
        address = 10
        type = "int16"
        scale = 0.1
        unit = "°C"
        format = "json"
        """

    static let oneCoil = """
        [[device.point]]
        name = "v"
        register = "coil"
        address = 0
        """

    @Test("values of every type are published right, plus birth and device status")
    func everyType() async throws {
        let rig = try await Rig.start(points: Self.allTypes, simArgs: [
            "--set", "coil:0=1", "--set", "discrete:0=1", "--set", "holding:0=-5", "--set", "holding:1=65000",
            "--set", "holding:2=65535", "--set", "holding:3=65534",            // int32 -2
            "--set", "input:0=2", "--set", "input:1=1",                       // uint32 little words: 0x00010002
            "--set", "holding:4=17254", "--set", "holding:5=32768",           // float32 230.5
            "--set", "holding:10=215", "--set", "holding:11=4",
            "--set", "holding:20=20290", "--set", "holding:21=19712",         // "OB" "M\0"
            "--set", "holding:30=2",
        ])
        let b = "gateway/e2e"
        try await rig.waitFor("\(b)/status", "online")
        try await rig.waitFor("\(b)/dev/status", "online")
        for (point, value) in [("coil", "true"), ("door", "open"), ("i16", "-5"), ("u16", "65000"), ("i32", "-2"),
                               ("u32le", "65538"), ("f32", "230.5"), ("temp", "21.5"), ("flag", "true"), ("label", "OBM"),
                               ("mode", "locked")] {
            try await rig.waitFor("\(b)/dev/\(point)", value)
        }
        try await rig.waitUntil("the JSON payload") {
            rig.payloads("\(b)/dev/tempjson").contains { $0.hasPrefix(#"{"value":21.5,"unit":"°C","ts":"#) && $0.hasSuffix("}") }
        }
        await rig.shutdown()
    }

    @Test("one poller per bus: two devices on one bus keep their own poll periods; a device on a second bus is polled too")
    func devicesShareABus() async throws {
        let second = try await GatewaySimulator.start(["--set", "holding:0=5", "--log-requests"])
        let point = """
            [[device.point]]
            name = "v"
            register = "holding"
            address = 0
            """
        let more = """
            \(point)
            [[device]]
            name = "slow"
            bus = "plc"
            unit = 2
            poll_ms = 250
            \(point)
            [[bus]]
            name = "plc2"
            type = "tcp"
            host = "127.0.0.1"
            port = \(second.port)
            timeout_ms = 300
            [[device]]
            name = "other"
            bus = "plc2"
            unit = 1
            poll_ms = 50
            \(point)
            """
        let rig = try await Rig.start(points: more, simArgs: ["--unit", "1", "--unit", "2", "--log-requests",
                                                              "--set", "holding:0=7", "--set", "2/holding:0=9"], pollMs: 50)
        let b = "gateway/e2e"
        try await rig.waitFor("\(b)/dev/v", "7")
        try await rig.waitFor("\(b)/slow/v", "9")
        try await rig.waitFor("\(b)/other/v", "5")
        try await rig.waitFor("\(b)/slow/status", "online")
        // 40 polls of the 50 ms device; the 250 ms device on the same bus gets about a fifth as many.
        let fast = Mutex(0)
        _ = try await rig.sim.process.waitForLine(timeout: .seconds(20)) { line in
            line.hasPrefix("{\"request\":{\"unit\":1,") && fast.withLock { $0 += 1; return $0 >= 40 }
        }
        let requests = rig.sim.process.lines.filter { $0.hasPrefix("{\"request\":") }
        let unit1 = requests.filter { $0.hasPrefix("{\"request\":{\"unit\":1,") }.count
        let unit2 = requests.filter { $0.hasPrefix("{\"request\":{\"unit\":2,") }.count
        #expect(unit2 >= 2, "the slow device was polled \(unit2) times")
        #expect(unit2 * 2 < unit1, "unit 1 (50 ms): \(unit1) polls, unit 2 (250 ms): \(unit2)")
        #expect(second.process.lines.filter { $0.hasPrefix("{\"request\":") }.count >= 2)
        await rig.shutdown()
        _ = await second.stop()
    }

    @Test("polling pymodbus (an independent Modbus implementation) publishes its values")
    func pymodbusDevice() async throws {
        let server = try await PymodbusServer.startTCP(spec: #"{"1": {"hr": {"100": 17254, "101": 32768, "0": 65535}, "di": {"0": 1}}}"#)
        let points = """
            [[device.point]]
            name = "f"
            register = "holding"
            address = 100
            type = "float32"
            [[device.point]]
            name = "neg"
            register = "holding"
            address = 0
            type = "int16"
            [[device.point]]
            name = "door"
            register = "discrete"
            address = 0
            map = { "0" = "closed", "1" = "open" }
            """
        let rig = try await Rig.start(points: points, simArgs: [], devicePort: server.port)
        try await rig.waitFor("gateway/e2e/dev/f", "230.5")
        try await rig.waitFor("gateway/e2e/dev/neg", "-1")
        try await rig.waitFor("gateway/e2e/dev/door", "open")
        try await rig.waitFor("gateway/e2e/dev/status", "online")
        _ = await server.stop()
        try await rig.waitFor("gateway/e2e/dev/status", "offline")
        await rig.shutdown()
    }

    @Test("SIGTERM: every status offline, then exit 0")
    func sigterm() async throws {
        let rig = try await Rig.start(points: Self.oneCoil, simArgs: [])
        try await rig.waitFor("gateway/e2e/dev/status", "online")
        rig.gateway.signal(SIGTERM)
        #expect(try await rig.gateway.waitForExit() == 0)
        try await rig.waitFor("gateway/e2e/dev/status", "offline")
        try await rig.waitFor("gateway/e2e/status", "offline")
        await rig.shutdown()
    }

    @Test("SIGTERM while the broker stopped reading, with a telemetry backlog: the retained status ends up offline")
    func stopWithBacklog() async throws {
        // Ten registers counting every 10 ms, polled every 20 ms: ~500 values a second.
        let counters = (0..<10).flatMap { ["--counter", "holding:\($0)@10"] }
        let points = (0..<10).map { "[[device.point]]\nname = \"c\($0)\"\nregister = \"holding\"\naddress = \($0)" }.joined(separator: "\n")
        let rig = try await Rig.start(points: points, simArgs: counters + ["--log-requests"], pollMs: 20)
        try await rig.waitFor("gateway/e2e/dev/status", "online")
        try await rig.waitFor("gateway/e2e/status", "online")
        let broker = try #require(rig.broker.process)
        broker.signal(SIGSTOP)   // the broker stops reading: acknowledgements stop, the in-flight window fills
        // 100 more polls (about 1,000 values) after the stop: far more than the in-flight window.
        let isRequest: @Sendable (String) -> Bool = { $0.hasPrefix("{\"request\":") }
        let target = rig.sim.process.lines.filter(isRequest).count + 100
        let polls = Mutex(0)
        _ = try await rig.sim.process.waitForLine(timeout: .seconds(30)) { line in
            isRequest(line) && polls.withLock { $0 += 1; return $0 >= target }
        }
        rig.gateway.signal(SIGTERM)
        let status = try await rig.gateway.waitForExit(timeout: .seconds(20))
        broker.signal(SIGCONT)
        #expect(status == 0)
        #expect(rig.gateway.lines.contains { $0.contains("closed the connection without DISCONNECT") }, "\(rig.gateway.tail)")
        // A new subscriber gets the retained status: the will, offline (not the birth's online).
        var oc = MQTTConfiguration(host: "127.0.0.1", port: rig.broker.port, clientIdentifier: "late-reader")
        oc.reconnect = nil
        let reader = MQTTClient(configuration: oc)
        try await reader.connect()
        try await reader.subscribe([MQTTSubscription("gateway/e2e/status", qos: .atLeastOnce)])
        // The broker sends the retained message at once; bounded all the same.
        let retained = try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask { for await m in reader.messages where m.retain { return m.payloadString }; return nil }
            group.addTask { try await Task.sleep(for: .seconds(10)); return nil }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        #expect(retained == "offline")
        await reader.disconnect()
        await rig.shutdown()
    }

    @Test("a second gateway with the same state_dir is refused (exit 2, names the other's pid); the first keeps running")
    func secondInstance() async throws {
        let rig = try await Rig.start(points: Self.oneCoil, simArgs: [])
        try await rig.waitFor("gateway/e2e/dev/status", "online")
        let second = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", rig.configPath])
        #expect(try await second.waitForExit() == 2)
        #expect(second.lines.contains { $0.contains("another gateway (pid \(rig.gateway.pid)) is running with state_dir") }, "\(second.lines)")
        #expect(rig.gateway.exitStatus == nil)
        await rig.shutdown()
    }

    @Test("SIGKILL: another client sees the will 'offline'")
    func sigkill() async throws {
        let rig = try await Rig.start(points: Self.oneCoil, simArgs: [])
        try await rig.waitFor("gateway/e2e/status", "online")
        rig.gateway.signal(SIGKILL)
        _ = try await rig.gateway.waitForExit()
        try await rig.waitFor("gateway/e2e/status", "offline")
        await rig.shutdown()
    }

}
