import Foundation
import GatewayConfig
import MQTT
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `gateway scan` and device profiles against real peers: `gateway simulate` on a socat pty pair
/// and over TCP, pymodbus over TCP and with RTU framing over TCP, Mosquitto and `gateway run`.
@Suite("Commissioning end to end (gateway scan, profiles)", .serialized)
struct CommissioningEndToEndTests {
    static var shippedProfiles: String { TestEnvironment.packageRoot + "/profiles" }

    /// Runs a shell line to completion (bounded) and returns (status, stdout, stderr).
    static func shell(_ line: String, timeout: Duration = .seconds(60)) async throws -> (status: Int32, out: String, err: String) {
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-scan-out")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (status, _) = try await TestEnvironment.run("sh", ["-c", "\(line) > \(dir)/out 2> \(dir)/err"], timeout: timeout)
        let out = (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? ""
        let err = (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? ""
        return (status, out, err)
    }

    /// The same value: equal text, or numbers equal to float32 precision (a float32 register is
    /// published with the digits of its double, 230.39999389648438 for 230.4).
    static func same(_ payload: String, _ want: String) -> Bool {
        if payload == want { return true }
        guard let a = Double(payload), let b = Double(want) else { return false }
        return abs(a - b) <= max(1e-3, abs(b) * 1e-6)
    }

    @Test("A newcomer's line: scan --baud auto --toml on RTU, paste, check, run: the three recognised devices publish their profiles' values; the held line is refused with a clear message")
    func scanPasteRun() async throws {
        let gw = try TestEnvironment.gatewayBinary()
        let pty = try await PtyPair.start()
        // Three devices with profiles, one that answers only exceptions, one slow one, and
        // silence at every other id.
        let sim = try await GatewaySimulator.startRTU(path: pty.b, [
            "--unit", "1", "--unit", "4", "--unit", "6", "--unit", "9", "--unit", "12",
            "--profile", "1/eastron-sdm120", "--profile", "4/xy-md02", "--profile", "6/digital-input-8ch",
            "--exceptions", "9", "--slow", "12:60",
        ])
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-scan")
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let scan = try await Self.shell("\(gw) scan --rtu \(pty.a) --baud auto --parity auto --units 1-16 --timeout-ms 150 --toml --config \(dir)/gateway.toml")
        #expect(scan.status == 0, "scan failed: \(scan.err)")
        let snippet = scan.out
        // It said how long it could take before it started.
        #expect(scan.err.contains("16 unit id(s) at 21 line settings, 150 ms per probe: at most"))
        #expect(snippet.contains("profile = \"eastron-sdm120\""))
        #expect(snippet.contains("profile = \"xy-md02\""))
        #expect(snippet.contains("profile = \"digital-input-8ch\""))
        // The exceptions-only unit is named but left for the installer (commented out).
        #expect(snippet.contains("# unit 9 answers, but no table at address 0 does"))
        #expect(snippet.contains("\n# unit = 9"))
        // The slow unit is found and gets the tables that answered.
        #expect(snippet.contains("name = \"unit-12\""))
        #expect(snippet.contains("name = \"holding_0\""))
        for absent in [2, 3, 5, 7, 8, 10, 11, 13, 14, 15, 16] { #expect(!snippet.contains("unit = \(absent)\n")) }
        // It only read: the simulator logged requests but no write.
        #expect(!sim.lines.contains { $0.hasPrefix("{\"write\"") })

        // Paste it into a config.
        let broker = try await Mosquitto.start()
        let config = """
            [gateway]
            id = "scanned"
            state_dir = "\(dir)"
            require_synced_clock = false
            [mqtt]
            url = "mqtt://127.0.0.1:\(broker.port)"
            [http]
            listen = ""
            [homeassistant]
            enabled = false
            \(snippet)
            """
        try config.write(toFile: dir + "/gateway.toml", atomically: true, encoding: .utf8)
        let check = try await Self.shell("\(gw) check --config \(dir)/gateway.toml")
        #expect(check.status == 0, "check refused the pasted scan: \(check.err)\n\(config)")
        #expect(check.out.contains("(profile eastron-sdm120)"))

        let watcher = try await MQTTObserver(port: broker.port, filters: ["gateway/scanned/#"], reconnect: true)
        let run = try ChildProcess(gw, ["run", "--config", dir + "/gateway.toml"])
        let expected = [
            "gateway/scanned/eastron-sdm120-1/voltage": "230.4",
            "gateway/scanned/xy-md02-4/temperature": "21.7",
            "gateway/scanned/digital-input-8ch-6/input1": "true",
            "gateway/scanned/digital-input-8ch-6/input2": "false",
            "gateway/scanned/unit-12/holding_0": "0",
        ]
        try await watcher.waitUntil("the scanned devices' values", timeout: .seconds(30), log: { "seen: \(watcher.summary)\n\(run.tail)" }) {
            expected.allSatisfy { e in watcher.payloads(e.key).contains { Self.same($0, e.value) } }
        }

        // The gateway holds the line: a scan now is refused, and says why.
        let busy = try await Self.shell("\(gw) scan --rtu \(pty.a) --units 1")
        #expect(busy.status == 1)
        #expect(busy.err.contains("in use by another process"), "stderr: \(busy.err)")

        await run.stop()
        await watcher.client.disconnect()
        _ = await sim.stop()
        await pty.stop()
        await broker.shutdown()
    }

    @Test("pymodbus as the independent peer: scan over Modbus TCP and over RTU framing on TCP finds its units, reads its FC 43 identification and takes its odd exception as presence")
    func scanPymodbus() async throws {
        let gw = try TestEnvironment.gatewayBinary()
        let spec = #"{"2": {"hr": {"0": 7}}, "5": {"sparse": true, "hr": {"100": 1}}}"#
        for framer in ["socket", "rtu"] {
            let p = try ChildProcess(try TestEnvironment.venvPython(), [
                TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/pymodbus_server.py", "--tcp", "127.0.0.1:0",
                "--framer", framer, "--identity", "Acme,DOOR-8,2.1", "--spec", spec])
            let line = try await p.waitForLine(containing: "listening tcp", timeout: .seconds(30))
            let port = line.split(separator: ":").last.map(String.init) ?? ""
            let flag = framer == "rtu" ? "--rtu-tcp" : "--tcp"
            let scan = try await Self.shell("\(gw) scan \(flag) 127.0.0.1:\(port) --units 1-8 --timeout-ms 300 --json")
            #expect(scan.status == 0, "\(framer): \(scan.err)")
            let json = try JSONSerialization.jsonObject(with: Data(scan.out.utf8)) as? [String: Any]
            let units = json?["units"] as? [[String: Any]] ?? []
            #expect(units.compactMap { $0["unit"] as? Int } == [2, 5], "\(framer): \(scan.out)")
            let ident = units.first?["identification"] as? [String: Any]
            #expect(ident?["vendor"] as? String == "Acme", "\(framer)")
            #expect(ident?["product_code"] as? String == "DOOR-8", "\(framer)")
            let tables = units.first?["tables"] as? [String: Any]
            #expect((tables?["holding"] as? [String: Any])?["value"] as? Int == 7, "\(framer)")
            // Unit 5 has no register 0: pymodbus answers an exception, which still means present.
            let five = units.last?["tables"] as? [String: Any]
            #expect((five?["holding"] as? [String: Any])?["exception"] != nil, "\(framer): \(scan.out)")
            _ = await p.stop()
        }
        // And as RTU on a pty pair (several units on one line).
        let pty = try await PtyPair.start()
        let serial = try ChildProcess(try TestEnvironment.venvPython(), [
            TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/pymodbus_server.py", "--rtu", pty.b,
            "--identity", "Acme,DOOR-8,2.1", "--spec", spec])
        try await serial.waitForLine(containing: "listening rtu", timeout: .seconds(30))
        let scan = try await Self.shell("\(gw) scan --rtu \(pty.a) --units 1-8 --timeout-ms 300 --json")
        #expect(scan.status == 0, "rtu: \(scan.err)")
        let json = try JSONSerialization.jsonObject(with: Data(scan.out.utf8)) as? [String: Any]
        let units = json?["units"] as? [[String: Any]] ?? []
        #expect(units.compactMap { $0["unit"] as? Int } == [2, 5], "rtu: \(scan.out)")
        #expect((units.first?["identification"] as? [String: Any])?["vendor"] as? String == "Acme", "rtu: \(scan.out)")
        _ = await serial.stop()
        await pty.stop()
    }

    @Test("Every shipped profile, served by simulate --profile and polled by gateway run, publishes each point's example value; a relay from the relay board's profile pulses; a changed site profile is picked up by SIGHUP")
    func everyShippedProfile() async throws {
        let library = ProfileLibrary(directories: [Self.shippedProfiles])
        let shipped = library.all().map(\.name)
        #expect(shipped.count >= 5)
        // `gateway profiles` lists them; `profiles show` prints the points.
        let gw = try TestEnvironment.gatewayBinary()
        let list = try await Self.shell("GATEWAY_PROFILES=\(Self.shippedProfiles) \(gw) profiles --config /nonexistent/gateway.toml")
        #expect(list.status == 0)
        for name in shipped { #expect(list.out.contains("\(name)  "), "\(list.out)") }
        let show = try await Self.shell("GATEWAY_PROFILES=\(Self.shippedProfiles) \(gw) profiles show eastron-sdm120 --config /nonexistent/gateway.toml")
        #expect(show.out.contains("voltage: input 0, float32, V, ha voltage"), "\(show.out)")
        let unknown = try await Self.shell("\(gw) profiles show no-such-meter")
        #expect(unknown.status == 2 && unknown.err.contains("no profile 'no-such-meter'"), "\(unknown.err)")
        // A site's own profile, in a directory searched before the shipped ones.
        let site = try TestEnvironment.makeTemporaryDirectory("gw-site-profiles")
        defer { try? FileManager.default.removeItem(atPath: site) }
        let own = try String(contentsOfFile: Self.shippedProfiles + "/xy-md02.toml", encoding: .utf8)
        try own.write(toFile: site + "/site-th.toml", atomically: true, encoding: .utf8)

        var simArgs: [String] = []
        var devices = ""
        for (i, name) in shipped.enumerated() {
            simArgs += ["--unit", "\(i + 1)", "--profile", "\(i + 1)/\(name)"]
            devices += """
                [[device]]
                name = "\(name)"
                bus = "line"
                unit = \(i + 1)
                poll_ms = 100
                profile = "\(name)"

                """
            if name == "waveshare-relay-8ch" {
                devices += """
                      [[device.point]]
                      name = "relay1"
                      register = "coil"
                      address = 0
                      writable = true
                      pulse_ms = 200

                    """
            }
        }
        let siteUnit = shipped.count + 1
        simArgs += ["--unit", "\(siteUnit)", "--profile", "\(siteUnit)/xy-md02", "--set", "\(siteUnit)/holding:7=1234"]
        devices += """
            [[device]]
            name = "site-th"
            bus = "line"
            unit = \(siteUnit)
            poll_ms = 100
            profile = "site-th"

            """
        let deviceTables = devices
        let rig = try await Rig.start(points: "", simArgs: simArgs, environment: ["GATEWAY_PROFILES": "\(site):\(Self.shippedProfiles)"],
                                      bodyWithPort: { port in
            """
            [[bus]]
            name = "line"
            type = "tcp"
            host = "127.0.0.1"
            port = \(port)
            timeout_ms = 500
            \(deviceTables)
            """
        })
        // Each point's value is its profile's example, as the gateway publishes it.
        var expected: [(topic: String, value: Double, isBool: Bool)] = []
        for name in shipped {
            let p = try library.load(name)
            for point in p.points {
                let example = p.examples[point.name] ?? 0
                expected.append(("gateway/e2e/\(name)/\(point.name)", example, point.type.rawValue == "bool"))
            }
        }
        func matches(_ payload: String, _ want: Double, _ isBool: Bool) -> Bool {
            if isBool { return payload == (want != 0 ? "true" : "false") }
            guard let got = Double(payload) else { return false }
            return abs(got - want) <= max(1e-3, abs(want) * 1e-6)
        }
        try await rig.waitUntil(timeout: .seconds(30), "every shipped profile's points at their example values") {
            expected.allSatisfy { e in rig.payloads(e.topic).contains { matches($0, e.value, e.isBool) } }
        }

        // A scan over Modbus TCP names each unit's profile from its identification.
        let scan = try await Self.shell("\(gw) scan --tcp 127.0.0.1:\(rig.sim.port) --units 1-\(siteUnit + 2) --json")
        #expect(scan.status == 0, "\(scan.err)")
        let found = (try JSONSerialization.jsonObject(with: Data(scan.out.utf8)) as? [String: Any])?["units"] as? [[String: Any]] ?? []
        #expect(found.compactMap { $0["unit"] as? Int } == Array(1...siteUnit), "\(scan.out)")
        #expect(found.compactMap { $0["profile"] as? String } == shipped + ["xy-md02"], "\(scan.out)")

        // The relay board's relay1, made a pulse on the device, closes and opens again.
        try await rig.observer.publish(to: "gateway/e2e/waveshare-relay-8ch/relay1/set", payload: Array("true".utf8), qos: .atLeastOnce)
        let writes = try await rig.sim.waitForWrites(2, timeout: .seconds(10))
        let relay = writes.filter { $0.kind == "coil" && $0.address == 0 }
        #expect(relay.map(\.values) == [[1], [0]], "writes: \(writes)")

        // The site's profile gains a point; SIGHUP picks it up like any other change.
        let grown = own + """

            [[point]]
            name = "added_by_site"
            register = "holding"
            address = 7
            """
        try grown.write(toFile: site + "/site-th.toml", atomically: true, encoding: .utf8)
        rig.gateway.signal(SIGHUP)
        try await rig.waitFor("gateway/e2e/site-th/added_by_site", "1234")
        await rig.shutdown()
    }
}
