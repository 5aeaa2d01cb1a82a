import Foundation
import GatewayConfig
import Testing
#if canImport(Glibc)
import Glibc
#endif
import TestSupport

/// Broken configs live in Fixtures/bad-*.toml; each starts with `# expect: <text>` lines that the
/// error output must contain.
struct Fixture: CustomTestStringConvertible, Sendable {
    var path: String
    var expectations: [String]
    var testDescription: String { URL(fileURLWithPath: path).lastPathComponent }

    static let directory = TestEnvironment.packageRoot + "/Tests/GatewayConfigTests/Fixtures"

    static var all: [Fixture] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return files.filter { $0.hasPrefix("bad-") && $0.hasSuffix(".toml") }.sorted().map { name in
            let path = directory + "/" + name
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            let expects = text.split(separator: "\n").filter { $0.hasPrefix("# expect: ") }.map { String($0.dropFirst(10)) }
            return Fixture(path: path, expectations: expects)
        }
    }
}

@Suite("gateway.toml loading and validation")
struct ConfigLoaderTests {
    @Test("there are at least a dozen broken fixtures, each with an expectation")
    func fixtureCount() {
        #expect(Fixture.all.count >= 12)
        #expect(Fixture.all.allSatisfy { !$0.expectations.isEmpty })
    }

    @Test("each broken config is refused with its key path", arguments: Fixture.all)
    func refused(_ f: Fixture) {
        do {
            _ = try ConfigLoader.load(path: f.path)
            Issue.record("\(f.path) was accepted")
        } catch {
            let text = error.description
            for e in f.expectations { #expect(text.contains(e), "expected '\(e)' in:\n\(text)") }
        }
    }

    @Test("the shipped gateway.toml is valid and read as written")
    func shippedConfig() throws {
        let c = try ConfigLoader.load(path: TestEnvironment.packageRoot + "/gateway.toml")
        #expect(c.baseTopic == "gateway/lobby")
        #expect(c.mqtt.protocolVersion == 5)
        #expect(c.devices.map(\.name) == ["front-door", "turnstile-1"])
        let unlock = try #require(c.devices[0].points.first { $0.name == "unlock" })
        #expect(unlock.writable && unlock.pulseMs == 3000 && unlock.table == .coil && unlock.type == .bool)
        let temp = try #require(c.devices[1].points.first { $0.name == "temperature" })
        #expect(temp.type == .int16 && temp.scale == 0.1 && temp.deadband == 0.2 && temp.unit == "°C")
        let door = try #require(c.devices[0].points.first { $0.name == "door" })
        #expect(door.map == [0: "closed", 1: "open"])
    }

    @Test("defaults are the documented ones")
    func defaults() throws {
        let c = try ConfigLoader.parse("""
            [gateway]
            id = "x"
            [[bus]]
            name = "b"
            type = "tcp"
            host = "::1"
            [[device]]
            name = "d"
            bus = "b"
              [[device.point]]
              name = "p"
              register = "input"
              address = 3
            """)
        #expect(c.gateway.format == .plain && c.gateway.retain && c.gateway.refreshSeconds == 300 && c.gateway.commandMaxAgeMs == nil)
        #expect(c.gateway.requireSyncedClock)
        #expect(c.mqtt.url == "mqtt://127.0.0.1:1883" && c.mqtt.keepAlive == 30 && c.mqtt.cleanSession)
        #expect(c.buses[0].kind == .tcp(host: "::1", port: 502) && c.buses[0].timeoutMs == 1000)
        #expect(c.devices[0].unit == 1 && c.devices[0].pollMs == 1000 && c.devices[0].offlineAfter == 3)
        #expect(c.devices[0].points[0].type == .uint16 && !c.devices[0].points[0].writable)
        #expect(c.http.listen == "127.0.0.1:9108" && c.http.address == ListenAddress(host: "127.0.0.1", port: 9108) && c.http.username == nil)
    }

    static let minimal = "[gateway]\nid = \"x\"\n[[bus]]\nname = \"b\"\ntype = \"tcp\"\nhost = \"h\"\n[[device]]\nname = \"d\"\nbus = \"b\"\n[[device.point]]\nname = \"p\"\nregister = \"coil\"\naddress = 0\n"

    @Test("drop_startup_pages is retired: accepted whatever its value, with a warning that it does nothing, and nothing else changes")
    func retiredDropStartupPages() throws {
        for value in ["false", "true", "\"yes\""] {
            let text = Self.minimal.replacingOccurrences(of: "id = \"x\"\n", with: "id = \"x\"\ndrop_startup_pages = \(value)\n")
            let c = try ConfigLoader.parse(text)
            #expect(c.warnings == ["gateway.drop_startup_pages (line 3): no longer does anything (the gateway no longer gives its start-up pages back; its own memory is measured instead): remove it"])
            var without = try ConfigLoader.parse(Self.minimal)
            without.retiredKeys = c.retiredKeys
            #expect(c == without, "the key changes nothing else")
        }
    }

    @Test("[mqtt] url takes a list of a cluster's nodes (one scheme, none twice, not empty); a single url has no alternates")
    func brokerList() throws {
        func with(_ url: String) throws -> MQTTSettings { try ConfigLoader.parse(Self.minimal + "[mqtt]\nurl = \(url)\n").mqtt }
        let list = try with("[\"mqtt://a:1884\", \"mqtt://[::1]\", \"mqtt://c\"]")
        #expect(list.broker == BrokerAddress(host: "a", port: 1884, tls: false))
        #expect(list.alternates == [BrokerAddress(host: "::1", port: 1883, tls: false), BrokerAddress(host: "c", port: 1883, tls: false)])
        #expect(list.url == "mqtt://a:1884, mqtt://[::1], mqtt://c")
        #expect(try with("\"mqtts://a\"").alternates.isEmpty)
        for (bad, why) in [("[\"mqtt://a\", \"mqtts://b\"]", "all mqtt:// or all mqtts://"), ("[\"mqtt://a\", \"mqtt://a:1883\"]", "listed twice"),
                           ("[]", "a non-empty array of strings"), ("[\"mqtt://a\", 3]", "a non-empty array of strings"),
                           ("[\"mqtt://a\", \"http://b\"]", "must look like mqtt://")] {
            #expect(throws: (any Error).self, "\(bad)") { try with(bad) }
            do { _ = try with(bad) } catch { #expect("\(error)".contains(why), "\(bad): \(error)") }
        }
    }

    @Test("an RTU bus and a serial device take the same parity letters, in either case")
    func lineSettings() throws {
        let bus = "[gateway]\nid = \"x\"\n[[bus]]\nname = \"b\"\ntype = \"rtu\"\nport = \"/dev/ttyS0\"\nbaud = 115200\nparity = \"e\"\n[[device]]\nname = \"d\"\nbus = \"b\"\n[[device.point]]\nname = \"p\"\nregister = \"coil\"\naddress = 0\n"
        #expect(try ConfigLoader.parse(bus).buses[0].kind == .rtu(path: "/dev/ttyS0", baud: 115200, parity: .even, dataBits: 8, stopBits: 1))
        let serial = "[gateway]\nid = \"x\"\n[[device]]\nname = \"qr\"\ndriver = \"serial\"\nport = \"/dev/ttyS1\"\nbaud = 115200\nparity = \"e\"\n[[device.point]]\nname = \"scan\"\nmatch = \"^(?<value>.+)$\"\n"
        let d = try ConfigLoader.parse(serial).serialDevices[0]
        #expect(d.baud == 115200 && d.parity == .even)
    }

    @Test("[http]: off with \"\", IPv6 in brackets, a LAN address without auth warned about; bad addresses and half credentials refused")
    func http() throws {
        #expect(try ConfigLoader.parse(Self.minimal + "[http]\nlisten = \"\"\n").http.address == nil)
        #expect(try ConfigLoader.parse(Self.minimal + "[http]\nlisten = \"[::1]:9200\"\n").http.address == ListenAddress(host: "::1", port: 9200))
        let lan = try ConfigLoader.parse(Self.minimal + "[http]\nlisten = \"0.0.0.0:9108\"\n")
        #expect(lan.warnings.contains { $0.hasPrefix("http.listen: '0.0.0.0:9108' is reachable from the network and has no username") }, "\(lan.warnings)")
        #expect(try ConfigLoader.parse(Self.minimal).warnings.isEmpty, "loopback needs no auth")
        for (bad, message) in [("listen = \"9108\"", "http.listen"), ("listen = \"h:0\"", "the port must be 1...65535"),
                               ("listen = \":9108\"", "has no host"), ("username = \"ops\"", "username and password_file go together"),
                               ("password = \"x\"", "http.password"), ("port = 1", "http.port: unknown key")] {
            do {
                _ = try ConfigLoader.parse(Self.minimal + "[http]\n\(bad)\n")
                Issue.record("\(bad) was taken")
            } catch {
                #expect("\(error)".contains(message), "\(bad): \(error)")
            }
        }
    }

    @Test("a missing file is a clear error")
    func missingFile() {
        #expect(throws: ConfigError.self) { try ConfigLoader.load(path: "/nonexistent/gateway.toml") }
    }
}

@Suite("Broker address")
struct BrokerAddressTests {
    @Test("mqtt:// and mqtts:// with default ports, explicit ports, IPv6 in brackets; everything else refused with its reason")
    func parse() throws {
        #expect(try BrokerAddress.parse("mqtt://broker.lan").get() == BrokerAddress(host: "broker.lan", port: 1883, tls: false))
        #expect(try BrokerAddress.parse("mqtts://broker.lan").get() == BrokerAddress(host: "broker.lan", port: 8883, tls: true))
        #expect(try BrokerAddress.parse("mqtt://127.0.0.1:1884/").get() == BrokerAddress(host: "127.0.0.1", port: 1884, tls: false))
        #expect(try BrokerAddress.parse("mqtts://[::1]:8884").get() == BrokerAddress(host: "::1", port: 8884, tls: true))
        for bad in ["mqtt://127.0.0.1:", "mqtt://", "tcp://h:1883", "ssl://h", "mqtt://h:70000", "mqtt://[::1", "mqtt://h/path", "http://h"] {
            guard case .failure = BrokerAddress.parse(bad) else { Issue.record("\(bad) was taken"); continue }
        }
    }
}

@Suite("gateway check", .timeLimit(.minutes(2)))
struct CheckCommandTests {
    @Test("exit 2 with every problem and its key for each broken config", arguments: Fixture.all)
    func broken(_ f: Fixture) async throws {
        let p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["check", "--config", f.path])
        #expect(try await p.waitForExit() == 2)
        let out = p.lines.joined(separator: "\n")
        for e in f.expectations { #expect(out.contains(e), "expected '\(e)' in:\n\(out)") }
    }

    @Test("a password file readable by every user: a warning, still valid")
    func worldReadablePassword() async throws {
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-check")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secret = dir + "/mqtt-password", config = dir + "/gateway.toml"
        try "s3cret\n".write(toFile: secret, atomically: true, encoding: .utf8)
        chmod(secret, 0o644)
        try "[gateway]\nid = \"lobby\"\n[mqtt]\nusername = \"gw\"\npassword_file = \"\(secret)\"\n[[bus]]\nname = \"b\"\ntype = \"tcp\"\nhost = \"127.0.0.1\"\n[[device]]\nname = \"d\"\nbus = \"b\"\n[[device.point]]\nname = \"p\"\nregister = \"coil\"\naddress = 0\n".write(toFile: config, atomically: true, encoding: .utf8)
        var p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["check", "--config", config])
        #expect(try await p.waitForExit() == 0)
        #expect(p.lines.contains { $0.contains("warning: mqtt.password_file: '\(secret)' is readable by every user") }, "\(p.lines)")
        chmod(secret, 0o600)
        p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["check", "--config", config])
        #expect(try await p.waitForExit() == 0)
        #expect(!p.lines.contains { $0.contains("warning:") })
    }

    @Test("gateway --version prints the release and, built from a checkout, the git revision")
    func version() async throws {
        let p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["--version"])
        #expect(try await p.waitForExit() == 0)
        let line = p.lines.first ?? ""
        #expect(line.hasPrefix("0.2.0"), "\(p.lines)")
        if FileManager.default.fileExists(atPath: TestEnvironment.packageRoot + "/.git") {
            #expect(line.contains("(git "), "\(line)")
        }
    }

    @Test("exit 0 and the plan for the shipped config")
    func shipped() async throws {
        let p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["check", "--config", TestEnvironment.packageRoot + "/gateway.toml"])
        #expect(try await p.waitForExit() == 0)
        let out = p.lines
        #expect(out.contains("    FC4 input 10..11 (2): passages"))
        #expect(out.contains("  gateway/lobby/front-door/unlock/set/result"))
        #expect(out.contains("  gateway/lobby/+/+/set"))
    }
}
