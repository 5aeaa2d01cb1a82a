import Foundation
import GatewayConfig
import Testing
import TestSupport

/// Device profiles: expansion into a device's points, the search order, and problems reported in
/// the profile's own file and line.
@Suite("device profiles")
struct ProfileTests {
    static let meter = """
        [profile]
        vendor = "Acme"
        model = "M-1"
        source = "Acme M-1 register map, rev. 3"
        [profile.identification]
        vendor = "Acme"
        product = "M-1"

        [[point]]
        name = "voltage"
        register = "input"
        address = 0
        type = "float32"
        example = 230.0

        [[point]]
        name = "current"
        register = "input"
        address = 2
        type = "float32"

        [[point]]
        name = "energy"
        register = "input"
        address = 10
        type = "uint32"
        """

    /// A directory of profiles, removed afterwards.
    final class Library {
        let directory: String
        init(_ files: [String: String]) throws {
            directory = try TestEnvironment.makeTemporaryDirectory("gw-profiles")
            for (name, text) in files { try text.write(toFile: "\(directory)/\(name).toml", atomically: true, encoding: .utf8) }
        }
        deinit { try? FileManager.default.removeItem(atPath: directory) }
        var library: ProfileLibrary { ProfileLibrary(directories: [directory]) }
    }

    static func config(_ device: String) -> String {
        """
        [gateway]
        id = "p"
        [[bus]]
        name = "line"
        type = "tcp"
        host = "127.0.0.1"
        [[device]]
        name = "m"
        bus = "line"
        \(device)
        """
    }

    @Test("the profile's points come first; the device's own replace them by name or follow them; points_remove drops some; vendor and model fill in")
    func expansion() throws {
        let lib = try Library(["acme-m1": Self.meter])
        let c = try ConfigLoader.parse(Self.config("""
            profile = "acme-m1"
            points_remove = ["energy"]
              [[device.point]]
              name = "current"
              register = "input"
              address = 4
              type = "float32"
              [[device.point]]
              name = "extra"
              register = "holding"
              address = 100
            """), profiles: lib.library)
        let d = try #require(c.devices.first)
        #expect(d.points.map(\.name) == ["voltage", "current", "extra"])
        #expect(d.points[1].address == 4)
        #expect(d.profile == "acme-m1")
        #expect(d.manufacturer == "Acme")
        #expect(d.model == "M-1")
    }

    @Test("a profile's problems are reported with its own file and line; the device's with gateway.toml's")
    func problemsInTheProfileFile() throws {
        let broken = Self.meter.replacingOccurrences(of: "address = 2\n", with: "address = 70000\n")
        let lib = try Library(["acme-m1": broken])
        do {
            _ = try ConfigLoader.parse(Self.config("profile = \"acme-m1\""), file: "site.toml", profiles: lib.library)
            Issue.record("a broken profile was accepted")
        } catch {
            let text = error.description
            // [[point]] current's address is on line 19 of the profile.
            #expect(text.contains("\(lib.directory)/acme-m1.toml:19: point[current].address: "), "\(text)")
            #expect(text.contains("70000 is outside"), "\(text)")
        }
    }

    @Test("an unknown profile, a points_remove naming nothing, points_remove without a profile, and a device with neither points nor profile are refused", arguments: [
        ("profile = \"nope\"", "no profile 'nope'"),
        ("profile = \"acme-m1\"\npoints_remove = [\"power\"]", "profile 'acme-m1' has no point 'power'"),
        ("points_remove = [\"x\"]\n  [[device.point]]\n  name = \"a\"\n  register = \"coil\"\n  address = 0", "only with profile"),
        ("unit = 2", "no [[device.point]] (and no profile)"),
        ("profile = \"acme-m1\"\npoints_remove = [\"voltage\", \"current\", \"energy\"]", "removes every point"),
    ])
    func refused(_ device: String, _ expected: String) throws {
        let lib = try Library(["acme-m1": Self.meter])
        do {
            _ = try ConfigLoader.parse(Self.config(device), profiles: lib.library)
            Issue.record("accepted: \(device)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(error.description.contains("gateway.toml:"), "\(error.description)")
        }
    }

    @Test("the site's directory comes before the shipped one; list shows each name once")
    func searchOrder() throws {
        let site = try Library(["acme-m1": Self.meter.replacingOccurrences(of: "model = \"M-1\"", with: "model = \"site's\"")])
        let shipped = try Library(["acme-m1": Self.meter, "other": Self.meter])
        let lib = ProfileLibrary(directories: [site.directory, shipped.directory])
        #expect(try lib.load("acme-m1").model == "site's")
        #expect(lib.all().map(\.name) == ["acme-m1", "other"])
        #expect(lib.all().first?.file == "\(site.directory)/acme-m1.toml")
        // Names are words: no path tricks.
        #expect(lib.path(of: "../acme-m1") == nil)
    }

    @Test("the standard search: profiles/ beside the config file, then GATEWAY_PROFILES or the shipped directories")
    func standardDirectories() {
        let lib = ProfileLibrary.standard(configFile: "/etc/gateway/gateway.toml")
        #expect(lib.directories.first == "/etc/gateway/profiles")
        #expect(lib.directories.count >= 2)
    }

    @Test("identification matching ignores case and padding, and a profile without identification never matches")
    func matching() throws {
        let p = try ProfileLibrary.parse(bytes: Array(Self.meter.utf8), name: "acme-m1", file: "acme-m1.toml")
        #expect(p.matches(vendor: "ACME", product: "m-1"))
        #expect(p.matches(vendor: "Acme ", product: "M-1\0\0"))
        #expect(!p.matches(vendor: "Acme", product: "M-2"))
        #expect(!p.matches(vendor: nil, product: "M-1"))
        let anonymous = try ProfileLibrary.parse(bytes: Array(Self.meter.replacingOccurrences(of: "[profile.identification]\nvendor = \"Acme\"\nproduct = \"M-1\"\n", with: "").utf8),
                                                 name: "x", file: "x.toml")
        #expect(!anonymous.matches(vendor: "Acme", product: "M-1"))
        #expect(p.examples["voltage"] == 230.0)
    }

    @Test("every shipped profile loads, and passes gateway.toml's checks on a device (Home Assistant's included)")
    func shippedProfilesPass() throws {
        let lib = ProfileLibrary(directories: [TestEnvironment.packageRoot + "/profiles"])
        let names = lib.all().map(\.name)
        #expect(names.count >= 5)
        for name in names {
            let p = try lib.load(name)
            #expect(!p.source.isEmpty, "\(name): the register map it was written from")
            #expect(p.identification.vendor != nil, "\(name)")
            _ = try ConfigLoader.parse(Self.config("profile = \"\(name)\""), profiles: lib)
        }
    }
}

/// `[[modbus_server]]`: the unit map and the writable ranges, as `gateway check` sees them.
@Suite("Modbus TCP front settings")
struct ModbusServerSettingsTests {
    static func config(_ server: String, key: Bool = false) -> String {
        """
        [gateway]
        id = "f"
        failsafe_after_s = 60
        \(key ? "command_key_file = \"\(#filePath)\"" : "")
        [[bus]]
        name = "line1"
        type = "tcp"
        host = "127.0.0.1"
        [[device]]
        name = "door"
        bus = "line1"
        unit = 3
          [[device.point]]
          name = "strike"
          register = "coil"
          address = 0
          writable = true
          pulse_ms = 3000
          [[device.point]]
          name = "light"
          register = "coil"
          address = 1
          writable = true
          failsafe = false
          [[device.point]]
          name = "mode"
          register = "holding"
          address = 10
          writable = true
          [[device.point]]
          name = "free"
          register = "holding"
          address = 20
          writable = true
          signed = false
        [[device]]
        name = "meter"
        bus = "line1"
        unit = 4
          [[device.point]]
          name = "power"
          register = "input"
          address = 0
        [[modbus_server]]
        listen = "127.0.0.1:1502"
        \(server)
        """
    }

    @Test("without units, each device under its own id; writable ranges parsed")
    func defaults() throws {
        let c = try ConfigLoader.parse(Self.config(#"writable = ["line1:3:holding:10-15", "line1:4:coil:5"]"#))
        let s = try #require(c.modbusServers.first)
        #expect(s.units == [3: ModbusServerTarget(bus: "line1", unit: 3), 4: ModbusServerTarget(bus: "line1", unit: 4)])
        #expect(!s.unitsGiven)
        #expect(s.writable.count == 2)
        #expect(s.writable[1].first == 5 && s.writable[1].last == 5)
        #expect(s.maxClients == 16 && s.idleTimeoutSeconds == 60)
    }

    @Test("refused: a unit map that points at nothing, a malformed range, and ranges over a pulse, a fail-safe or a signed point", arguments: [
        (#"units = { "7" = "line9:3" }"#, false, "points at nothing: no [[bus]] named 'line9'"),
        (#"writable = ["line9:3:holding:0-9"]"#, false, "points at nothing"),
        (#"writable = ["line1:3:input:0-9"]"#, false, "is not bus:unit:coil|holding:first-last"),
        (#"writable = ["line1:3:coil:0-7"]"#, false, "door.strike, which has a pulse"),
        (#"writable = ["line1:3:coil:1"]"#, false, "door.light, which has a fail-safe value"),
        (#"writable = ["line1:3:holding:5-12"]"#, true, "door.mode, which has signed commands"),
        (#"units = { "300" = "line1:3" }"#, false, "keys are unit ids 1...247"),
    ])
    func refused(_ server: String, _ key: Bool, _ expected: String) {
        do {
            _ = try ConfigLoader.parse(Self.config(server, key: key))
            Issue.record("accepted: \(server)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(error.description.contains("modbus_server[0]"), "\(error.description)")
        }
    }

    @Test("a front open to the network with writable ranges is warned about; read-only or on loopback it is not")
    func networkWarning() throws {
        func warnings(_ listen: String, _ writable: String) throws -> [String] {
            try ConfigLoader.parse(Self.config(writable).replacingOccurrences(of: "listen = \"127.0.0.1:1502\"", with: "listen = \"\(listen)\""))
                .warnings.filter { $0.hasPrefix("modbus_server") }
        }
        #expect(try warnings("0.0.0.0:502", #"writable = ["line1:3:holding:20"]"#).first?.contains("anyone there can write them") == true)
        #expect(try warnings("0.0.0.0:502", "").isEmpty)
        #expect(try warnings("127.0.0.1:1502", #"writable = ["line1:3:holding:20"]"#).isEmpty)
    }

    @Test("a point exempt from signing may be opened; with a key file, an unsigned range elsewhere is fine")
    func accepted() throws {
        _ = try ConfigLoader.parse(Self.config(#"writable = ["line1:3:holding:20"]"#, key: true))
        _ = try ConfigLoader.parse(Self.config(#"writable = ["line1:3:holding:30-39"]"#, key: true))
    }
}
