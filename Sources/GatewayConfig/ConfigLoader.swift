import LineSettings
import TOMLReader

#if canImport(Glibc)
import Glibc
#endif

/// Reads and validates `gateway.toml`. Collects every problem before failing.
public enum ConfigLoader {
    /// Loads `path`; throws ``ConfigError`` listing every problem.
    /// Profiles come from `profiles` (default: ``ProfileLibrary/standard(configFile:)``).
    public static func load(path: String, profiles: ProfileLibrary? = nil) throws(ConfigError) -> GatewayConfiguration {
        guard let bytes = readFile(path) else {
            throw ConfigError(file: path, issues: [ConfigIssue(path: "", message: "cannot read the file: \(String(cString: strerror(errno)))")])
        }
        return try parse(bytes: bytes, file: path, profiles: profiles ?? .standard(configFile: path))
    }

    /// Parses TOML text (`file` names it in messages).
    public static func parse(_ text: String, file: String = "gateway.toml", profiles: ProfileLibrary? = nil) throws(ConfigError) -> GatewayConfiguration {
        try parse(bytes: Array(text.utf8), file: file, profiles: profiles)
    }

    /// Parses the bytes of a file (they must be UTF-8).
    public static func parse(bytes: [UInt8], file: String = "gateway.toml", profiles: ProfileLibrary? = nil) throws(ConfigError) -> GatewayConfiguration {
        let root: TOMLTable
        do {
            root = try TOML.parse(bytes: bytes)
        } catch {
            throw ConfigError(file: file, issues: [ConfigIssue(path: "", line: error.line,
                                                               message: "TOML syntax: \(error.message) (column \(error.column))")])
        }
        let sink = IssueSink()
        let top = Reader(root, path: "", sink: sink)
        var config = readConfiguration(top, profiles: ProfileCache(library: profiles ?? .standard(configFile: file)))
        top.finish()
        config?.retiredKeys = sink.retiredKeys
        if let config, sink.issues.isEmpty { return config }
        throw ConfigError(file: file, issues: sink.issues.isEmpty ? [ConfigIssue(path: "", message: "invalid configuration")] : sink.issues)
    }

    /// A whole file (up to 16 MiB; also /proc files, whose size is not known ahead), or nil.
    public static func readFile(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
            if bytes.count > 16 << 20 { return nil }
        }
        if ferror(f) != 0 { return nil }
        return bytes
    }

    /// Names used in topics: `[A-Za-z0-9_-]+`.
    public static func isTopicSafe(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
        }
    }

    // MARK: sections

    private static func readConfiguration(_ top: Reader, profiles: ProfileCache) -> GatewayConfiguration? {
        let gatewayReader = top.table("gateway", required: true)
        let gateway = gatewayReader.flatMap { GatewaySettings(reader: $0) }
        gatewayReader?.finish()
        let mqttReader = top.table("mqtt")
        let mqtt = mqttReader.map { MQTTSettings(reader: $0) } ?? MQTTSettings()
        mqttReader?.finish()
        let httpReader = top.table("http")
        let http = httpReader.map { HTTPSettings(reader: $0) } ?? HTTPSettings()
        httpReader?.finish()
        let haReader = top.table("homeassistant")
        var homeAssistant = HomeAssistantSettings()
        if let r = haReader {
            if let v = r.bool("enabled") { homeAssistant.enabled = v }
            if let v = r.string("prefix") {
                if v.isEmpty || !v.split(separator: "/", omittingEmptySubsequences: false).allSatisfy({ isTopicSafe(String($0)) }) {
                    r.issue("prefix", "'\(v)' must be words of [A-Za-z0-9_-] separated by '/'")
                }
                homeAssistant.prefix = v
            }
            if let v = r.string("birth_topic") {
                if v.isEmpty || !v.split(separator: "/", omittingEmptySubsequences: false).allSatisfy({ isTopicSafe(String($0)) }) {
                    r.issue("birth_topic", "'\(v)' must be words of [A-Za-z0-9_-] separated by '/'")
                }
                homeAssistant.birthTopic = v
            }
            r.finish()
        }

        var buses: [BusSettings] = []
        for (i, r) in top.tables("bus").enumerated() {
            if let b = BusSettings(reader: r, index: i) {
                if buses.contains(where: { $0.name == b.name }) { r.issue("name", "duplicate bus name '\(b.name)'") } else { buses.append(b) }
            }
            r.finish()
        }
        var devices: [DeviceSettings] = []
        var serialDevices: [SerialDeviceSettings] = []
        var names: Set<String> = []
        for (i, r) in top.tables("device").enumerated() {
            switch r.string("driver") ?? "modbus" {
            case "modbus":
                if let d = DeviceSettings(reader: r, index: i, buses: buses, profiles: profiles) {
                    if !names.insert(d.name).inserted { r.issue("name", "duplicate device name '\(d.name)'") } else { devices.append(d) }
                }
            case "serial":
                if let d = SerialDeviceSettings(reader: r) {
                    if !names.insert(d.name).inserted { r.issue("name", "duplicate device name '\(d.name)'") } else { serialDevices.append(d) }
                }
            case let other:
                r.issue("driver", "'\(other)' is not a driver (modbus or serial)")
            }
            r.finish()
        }
        if top.has("device") == false { top.issue("device", "no [[device]] defined: nothing to poll") }
        guard let gateway else { return nil }
        var c = GatewayConfiguration(gateway: gateway, mqtt: mqtt, buses: buses, devices: devices)
        c.serialDevices = serialDevices
        c.http = http
        c.homeAssistant = homeAssistant
        c.modbusServers = readModbusServers(top, buses: buses, devices: devices, gateway: gateway)
        if homeAssistant.enabled {
            checkLockStates(c, top)
            checkHomeAssistant(c, top)
        }
        checkDoorSafety(c, top)
        return c
    }

    /// A lock's `state_point` must be a point of the same device.
    private static func checkLockStates(_ c: GatewayConfiguration, _ top: Reader) {
        for d in c.devices {
            for p in d.points {
                if let sp = p.ha?.statePoint, !d.points.contains(where: { $0.name == sp }) {
                    top.issue("device[\(d.name)].point[\(p.name)].ha.state_point", "no point '\(sp)' on device '\(d.name)'")
                }
            }
        }
    }

    /// `signed = true` needs the key; a `failsafe` value needs a time (or a stop) to be written at.
    private static func checkDoorSafety(_ c: GatewayConfiguration, _ top: Reader) {
        func issue(_ path: String, _ message: String) { top.sink.issues.append(ConfigIssue(path: path, message: message)) }
        let keyed = c.gateway.commandKeyFile != nil
        for d in c.devices {
            for p in d.points {
                if p.signed == true && !keyed { issue("device[\(d.name)].point[\(p.name)].signed", "signed = true needs [gateway] command_key_file") }
                if p.failsafe != nil && d.failsafeAfterSeconds == nil && c.gateway.failsafeAfterSeconds == nil && !c.gateway.failsafeOnStop {
                    issue("device[\(d.name)].point[\(p.name)].failsafe", "needs failsafe_after_s ([gateway] or the device) or [gateway] failsafe_on_stop = true")
                }
            }
        }
        for d in c.serialDevices {
            for cmd in d.commands where cmd.signed == true && !keyed {
                issue("device[\(d.name)].command[\(cmd.name)].signed", "signed = true needs [gateway] command_key_file")
            }
        }
    }

    enum Endianness: String, CaseIterable { case big, little }

    /// Topic levels the gateway uses itself under a device.
    static let reservedNames: Set<String> = ["status", "set", "get", "raw"]

    // MARK: serial devices

}
