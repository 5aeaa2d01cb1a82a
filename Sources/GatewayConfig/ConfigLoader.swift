import LineSettings
import TOMLReader

#if canImport(Glibc)
import Glibc
#endif

/// Reads and validates `gateway.toml`. Collects every problem before failing.
public enum ConfigLoader {
    /// Loads `path`; throws ``ConfigError`` listing every problem.
    public static func load(path: String) throws(ConfigError) -> GatewayConfiguration {
        guard let bytes = readFile(path) else {
            throw ConfigError(file: path, issues: [ConfigIssue(path: "", message: "cannot read the file: \(String(cString: strerror(errno)))")])
        }
        return try parse(bytes: bytes, file: path)
    }

    /// Parses TOML text (`file` names it in messages).
    public static func parse(_ text: String, file: String = "gateway.toml") throws(ConfigError) -> GatewayConfiguration {
        try parse(bytes: Array(text.utf8), file: file)
    }

    /// Parses the bytes of a file (they must be UTF-8).
    public static func parse(bytes: [UInt8], file: String = "gateway.toml") throws(ConfigError) -> GatewayConfiguration {
        let root: TOMLTable
        do {
            root = try TOML.parse(bytes: bytes)
        } catch {
            throw ConfigError(file: file, issues: [ConfigIssue(path: "", line: error.line,
                                                               message: "TOML syntax: \(error.message) (column \(error.column))")])
        }
        let sink = IssueSink()
        let top = Reader(root, path: "", sink: sink)
        let config = readConfiguration(top)
        top.finish()
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

    private static func readConfiguration(_ top: Reader) -> GatewayConfiguration? {
        let gatewayReader = top.table("gateway", required: true)
        let gateway = gatewayReader.flatMap(readGateway)
        gatewayReader?.finish()
        let mqttReader = top.table("mqtt")
        let mqtt = mqttReader.map(readMQTT) ?? MQTTSettings()
        mqttReader?.finish()
        let httpReader = top.table("http")
        let http = httpReader.map(readHTTP) ?? HTTPSettings()
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
            r.finish()
        }

        var buses: [BusSettings] = []
        for (i, r) in top.tables("bus").enumerated() {
            if let b = readBus(r, index: i) {
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
                if let d = readDevice(r, index: i, buses: buses) {
                    if !names.insert(d.name).inserted { r.issue("name", "duplicate device name '\(d.name)'") } else { devices.append(d) }
                }
            case "serial":
                if let d = readSerialDevice(r) {
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
        if homeAssistant.enabled { checkLockStates(c, top) }
        checkDoorSafety(c, top)
        return c
    }

    private static func readGateway(_ r: Reader) -> GatewaySettings? {
        guard let id = r.string("id", required: true) else { return nil }
        if !isTopicSafe(id) { r.issue("id", "'\(id)' must match [A-Za-z0-9_-]+ (it is used in topics)") }
        var g = GatewaySettings(id: id)
        if let b = r.string("base_topic") {
            if b.isEmpty || b.contains("+") || b.contains("#") || b.hasPrefix("/") || b.hasSuffix("/") {
                r.issue("base_topic", "'\(b)' is not a usable base topic (no wildcards, no leading or trailing '/')")
            }
            g.baseTopic = b
        }
        if let f = r.enumeration("format", ValueFormat.self) { g.format = f }
        if let v = r.bool("retain") { g.retain = v }
        if let v = r.int("refresh_s", 0...31_536_000) { g.refreshSeconds = v }
        if let v = r.int("command_max_age_ms", 1...86_400_000) { g.commandMaxAgeMs = v }
        if let v = r.string("state_dir") {
            if !v.hasPrefix("/") { r.issue("state_dir", "'\(v)' must be an absolute path") }
            g.stateDirectory = v
        }
        if let v = r.bool("drop_startup_pages") { g.dropStartupPages = v }
        if let v = r.string("command_key_file") {
            if !v.hasPrefix("/") { r.issue("command_key_file", "'\(v)' must be an absolute path") }
            g.commandKeyFile = v
        }
        if let v = r.int("failsafe_after_s", 1...86_400) { g.failsafeAfterSeconds = v }
        if let v = r.bool("failsafe_on_stop") { g.failsafeOnStop = v }
        if let v = r.double("outbox_max_mb") {
            if !(v == 0 || (0.01...4096).contains(v)) { r.issue("outbox_max_mb", "\(v) is outside 0.01...4096 (0 turns the outbox off)") }
            g.outboxMaxMB = v
        }
        if let v = r.int("outbox_sync_ms", 10...60_000) { g.outboxSyncMs = v }
        return g
    }

    private static func readMQTT(_ r: Reader) -> MQTTSettings {
        var m = MQTTSettings()
        if let u = r.string("url") {
            switch BrokerAddress.parse(u) {
            case .success(let address): m.broker = address
            case .failure(let why): r.issue("url", why.description)
            }
            m.url = u
        }
        if let v = r.string("client_id") {
            if v.isEmpty || v.utf8.count > 65_535 { r.issue("client_id", "must be a non-empty string") }
            m.clientID = v
        }
        if let v = r.int("protocol", 3...5) {
            if v == 4 { r.issue("protocol", "use 3 for MQTT 3.1.1 or 5 for MQTT 5.0") }
            m.protocolVersion = v == 4 ? 3 : v
        }
        if let v = r.int("keepalive", 0...65_535) {
            // 0 turns keepalive off: a broker that vanished without a FIN would go unnoticed.
            if v == 0 { r.issue("keepalive", "0 turns keepalive off and leaves a dead broker unnoticed: use 1...65535 seconds") }
            m.keepAlive = v
        }
        m.username = r.string("username")
        if let p = r.string("password_file") {
            var st = stat()
            if access(p, R_OK) != 0 {
                r.issue("password_file", "cannot read '\(p)'")
            } else if stat(p, &st) == 0, st.st_mode & S_IFMT == S_IFDIR {
                r.issue("password_file", "'\(p)' is a directory, not a password file")
            }
            m.passwordFile = p
        }
        if r.has("password") { r.issue("password", "passwords do not belong in the file: use password_file or env GATEWAY_MQTT_PASSWORD") }
        if let v = r.bool("clean_session") { m.cleanSession = v }
        if let tls = r.table("tls") {
            m.caFile = tls.string("ca_file")
            m.certFile = tls.string("cert_file")
            m.keyFile = tls.string("key_file")
            for (key, file) in [("ca_file", m.caFile), ("cert_file", m.certFile), ("key_file", m.keyFile)] {
                if let file, access(file, R_OK) != 0 { tls.issue(key, "cannot read '\(file)'") }
            }
            if (m.certFile == nil) != (m.keyFile == nil) { tls.issue("cert_file", "cert_file and key_file go together") }
            if !m.url.hasPrefix("mqtts://") { tls.issue("ca_file", "[mqtt.tls] needs url = \"mqtts://...\" (the url is \(m.url))") }
            tls.finish()
        }
        return m
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

    private static func readHTTP(_ r: Reader) -> HTTPSettings {
        var h = HTTPSettings()
        if let v = r.string("listen") {
            h.listen = v
            if v.isEmpty {
                h.address = nil
            } else {
                switch ListenAddress.parse(v) {
                case .success(let address): h.address = address
                case .failure(let why): r.issue("listen", why.description)
                }
            }
        }
        h.username = r.string("username")
        if let p = r.string("password_file") {
            if access(p, R_OK) != 0 { r.issue("password_file", "cannot read '\(p)'") }
            h.passwordFile = p
        }
        if r.has("password") { r.issue("password", "passwords do not belong in the file: use password_file") }
        if (h.username == nil) != (h.passwordFile == nil) { r.issue(h.username == nil ? "password_file" : "username", "username and password_file go together") }
        return h
    }

    private static func readBus(_ r: Reader, index: Int) -> BusSettings? {
        let name = r.string("name", required: true)
        if let name {
            r.rename("bus[\(name)]")
            if !isTopicSafe(name) { r.issue("name", "'\(name)' must match [A-Za-z0-9_-]+") }
        }
        guard let type = r.string("type", required: true) else { return nil }
        var bus: BusSettings?
        switch type {
        case "tcp":
            let host = r.string("host", required: true)
            let port = r.int("port", 1...65_535) ?? 502
            if let host, let name { bus = BusSettings(name: name, kind: .tcp(host: host, port: port)) }
        case "rtu":
            let path = r.string("port", required: true)
            let baud = r.baud() ?? 19_200
            let parity = r.parity() ?? .none
            let dataBits = r.int("data_bits", 5...8) ?? 8
            let stopBits = r.int("stop_bits", 1...2) ?? 1
            if let path, let name { bus = BusSettings(name: name, kind: .rtu(path: path, baud: baud, parity: parity, dataBits: dataBits, stopBits: stopBits)) }
        default:
            r.issue("type", "'\(type)' is not a bus type: use \"tcp\" or \"rtu\"")
        }
        if let t = r.int("timeout_ms", 10...60_000) { bus?.timeoutMs = t }
        return bus
    }

    private static func readDevice(_ r: Reader, index: Int, buses: [BusSettings]) -> DeviceSettings? {
        let name = r.string("name", required: true)
        if let name {
            r.rename("device[\(name)]")
            if !isTopicSafe(name) { r.issue("name", "'\(name)' must match [A-Za-z0-9_-]+ (it is used in topics)") }
        }
        let busName = r.string("bus", required: true)
        let bus = busName.flatMap { b in buses.first { $0.name == b } }
        if let busName, bus == nil { r.issue("bus", "no [[bus]] named '\(busName)'") }
        var d = DeviceSettings(name: name ?? "", bus: busName ?? "")
        if let u = r.int("unit", 0...255) {
            if case .rtu = bus?.kind, !(1...247).contains(u) { r.issue("unit", "must be 1...247 on an RTU line (0 is broadcast)") }
            d.unit = u
        }
        if let v = r.int("poll_ms", 10...86_400_000) { d.pollMs = v }
        if let v = r.int("offline_after", 1...1_000_000) { d.offlineAfter = v }
        if let v = r.int("offline_poll_ms", 10...86_400_000) { d.offlinePollMs = v }
        if let v = r.bool("write_multiple") { d.writeMultiple = v }
        d.manufacturer = r.string("manufacturer")
        d.model = r.string("model")
        if let v = r.int("failsafe_after_s", 1...86_400) { d.failsafeAfterSeconds = v }
        for (i, p) in r.tables("point").enumerated() {
            if let point = readPoint(p, index: i) {
                if d.points.contains(where: { $0.name == point.name }) { p.issue("name", "duplicate point name '\(point.name)'") } else { d.points.append(point) }
            }
            p.finish()
        }
        if d.points.isEmpty && r.has("point") == false { r.issue("point", "the device has no [[device.point]]") }
        return name == nil || busName == nil ? nil : d
    }

    private static func readPoint(_ r: Reader, index: Int) -> PointSettings? {
        let name = r.string("name", required: true)
        if let name {
            r.rename("\(r.parentPath).point[\(name)]")
            if !isTopicSafe(name) { r.issue("name", "'\(name)' must match [A-Za-z0-9_-]+ (it is used in topics)") }
            if reservedNames.contains(name) { r.issue("name", "'\(name)' is reserved in topics") }
        }
        let table = r.enumeration("register", RegisterTable.self, required: true)
        let address = r.int("address", 0...65_535, required: true)
        let typeName = r.has("type") ? r.enumeration("type", PointType.self) : nil
        guard let name, let table, let address else { return nil }
        let type = typeName ?? (table.isBit ? .bool : .uint16)
        if table.isBit && type != .bool { r.issue("type", "a \(table.rawValue) holds one bit: type must be bool, not \(type.rawValue)") }
        var p = PointSettings(name: name, table: table, address: address, type: type)
        if let len = r.int("length", 1...123) {
            if type != .string { r.issue("length", "only for type = \"string\"") }
            p.length = len
        }
        if let bit = r.int("bit", 0...15) {
            if table.isBit || type != .bool { r.issue("bit", "only for type = \"bool\" on a holding or input register") }
            p.bit = bit
        }
        if address + p.width > 65_536 { r.issue("address", "\(address) + \(p.width) registers passes 65535") }
        if let w = r.enumeration("word_order", Endianness.self) { p.wordOrderLittle = w == .little }
        if let b = r.enumeration("byte_order", Endianness.self) { p.byteOrderLittle = b == .little }
        if let s = r.double("scale") {
            if s == 0 || !s.isFinite { r.issue("scale", "must be a non-zero number") }
            p.scale = s
        }
        if let o = r.double("offset") { p.offset = o }
        if (p.scale != 1 || p.offset != 0) && (type == .bool || type == .string) { r.issue("scale", "scale/offset do not apply to \(type.rawValue)") }
        p.unit = r.string("unit")
        if let d = r.double("deadband") {
            if d < 0 { r.issue("deadband", "must be >= 0") }
            p.deadband = d
        }
        if let m = r.table("map") {
            for key in m.keys {
                guard let raw = Int64(key) else { m.issue(key, "map keys are raw integer values, e.g. \"0\" = \"closed\""); continue }
                guard let v = m.string(key, required: true) else { continue }
                if v.isEmpty { m.issue(key, "names must not be empty") }
                if p.map.values.contains(v) { m.issue(key, "'\(v)' is used twice") }
                p.map[raw] = v
            }
            if type == .string || type == .float32 || type == .float64 { r.issue("map", "map needs an integer or bool type") }
            m.finish()
        }
        if let w = r.bool("writable") {
            if w && !table.isWritable { r.issue("writable", "a \(table.rawValue) cannot be written (only coil and holding)") }
            p.writable = w
            if w && p.bit != nil { r.issue("writable", "one bit of a register cannot be written safely (it needs a read-modify-write that could undo the device's own changes)") }
        }
        p.min = r.double("min")
        p.max = r.double("max")
        if let lo = p.min, let hi = p.max, lo > hi { r.issue("min", "min \(lo) is above max \(hi)") }
        if let pulse = r.int("pulse_ms", 10...3_600_000) {
            if !p.writable { r.issue("pulse_ms", "only for writable points") }
            if type == .string { r.issue("pulse_ms", "a string cannot be pulsed") }
            p.pulseMs = pulse
        }
        p.format = r.enumeration("format", ValueFormat.self)
        p.retain = r.bool("retain")
        p.signed = r.bool("signed")
        if p.signed == true && !p.writable { r.issue("signed", "only for writable points") }
        if let v = r.scalar("failsafe") {
            if !p.writable { r.issue("failsafe", "only for writable points") }
            if p.pulseMs != nil { r.issue("failsafe", "not for a pulse point (its safe state is its off)") }
            p.failsafe = v
        }
        if let v = r.bool("counter") {
            if v && !(type == .uint16 || type == .uint32) { r.issue("counter", "a counter is a uint16 or uint32 point") }
            if v && (p.scale != 1 || p.offset != 0 || !p.map.isEmpty) { r.issue("counter", "a counter counts raw: no scale, offset or map") }
            p.counter = v
        }
        if let v = r.bool("latch") {
            if v && type != .bool { r.issue("latch", "a latch is a bool point") }
            p.latch = v
        }
        if let v = r.bool("latch_clear") {
            if !p.latch { r.issue("latch_clear", "only with latch = true") }
            p.latchClear = v
        }
        if p.latch && p.latchClear && (!table.isWritable || p.bit != nil) {
            r.issue("latch", "the gateway clears a latch by writing false: that needs a coil or a whole holding register (or latch_clear = false)")
        }
        if p.counter && p.latch { r.issue("latch", "a point is a counter or a latch, not both") }
        if let h = r.table("ha") {
            var ha = HomeAssistantPoint()
            if let c = h.string("component") {
                if !HomeAssistantPoint.components.contains(c) {
                    h.issue("component", "'\(c)' is not one of \(HomeAssistantPoint.components.sorted().joined(separator: ", "))")
                }
                let needsWrite = ["switch", "button", "number", "select", "lock"].contains(c)
                if needsWrite && !p.writable { h.issue("component", "a \(c) sends commands: the point must be writable") }
                if c == "select" && p.map.isEmpty { h.issue("component", "a select needs the point's map (its options)") }
                ha.component = c
            }
            ha.deviceClass = h.string("device_class")
            ha.stateClass = h.string("state_class")
            ha.icon = h.string("icon")
            ha.statePoint = h.string("state_point")
            ha.stateLocked = h.string("state_locked")
            ha.stateUnlocked = h.string("state_unlocked")
            if ha.component != "lock" && (ha.statePoint != nil || ha.stateLocked != nil || ha.stateUnlocked != nil) {
                h.issue("state_point", "state_point, state_locked and state_unlocked are for component = \"lock\"")
            }
            h.finish()
            p.ha = ha
        }
        return p
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

    private static func readSerialDevice(_ r: Reader) -> SerialDeviceSettings? {
        let name = r.string("name", required: true)
        if let name {
            r.rename("device[\(name)]")
            if !isTopicSafe(name) { r.issue("name", "'\(name)' must match [A-Za-z0-9_-]+ (it is used in topics)") }
        }
        let port = r.string("port", required: true)
        var d = SerialDeviceSettings(name: name ?? "", port: port ?? "")
        d.manufacturer = r.string("manufacturer")
        d.model = r.string("model")
        if let b = r.baud() { d.baud = b }
        if let p = r.parity() { d.parity = p }
        if let v = r.int("data_bits", 5...8) { d.dataBits = v }
        if let v = r.int("stop_bits", 1...2) { d.stopBits = v }
        if let v = r.bool("rtscts") { d.rtscts = v }
        if let f = r.enumeration("framing", SerialDeviceSettings.FramingKind.self) { d.framing = f }
        if let s = bytes(r, "delimiter") {
            if s.isEmpty { r.issue("delimiter", "must not be empty") }
            d.delimiter = s
        }
        if let s = bytes(r, "start") {
            if s.isEmpty { r.issue("start", "must not be empty") }
            d.start = s
        }
        if let v = r.int("length", 1...4096) { d.length = v }
        switch d.framing {
        case .delimiter where d.delimiter.isEmpty: r.issue("delimiter", "missing (required with framing = \"delimiter\")")
        case .fixed where d.length == 0: r.issue("length", "missing (required with framing = \"fixed\")")
        case .line where r.has("delimiter") || r.has("start"): r.issue("delimiter", "only with framing = \"delimiter\"")
        default: break
        }
        if d.framing != .fixed && r.has("length") { r.issue("length", "only with framing = \"fixed\"") }
        if let v = r.int("max_frame", 1...65_536) { d.maxFrame = v }
        if let v = r.bool("raw") { d.raw = v }
        if let v = r.int("idle_timeout_ms", 10...86_400_000) { d.idleTimeoutMs = v }
        if let p = bytes(r, "poll") {
            if p.isEmpty { r.issue("poll", "must not be empty") }
            d.poll = p
        }
        if let v = r.int("poll_ms", 10...86_400_000) {
            if d.poll == nil { r.issue("poll_ms", "only with poll (the request to send)") }
            d.pollMs = v
        }
        if let v = r.int("response_timeout_ms", 1...60_000) { d.responseTimeoutMs = v }
        if let v = r.int("offline_after", 1...1_000_000) { d.offlineAfter = v }
        var used: Set<String> = []
        for p in r.tables("point") {
            if let point = readSerialPoint(p) {
                if !used.insert(point.name).inserted { p.issue("name", "duplicate point name '\(point.name)'") } else { d.points.append(point) }
            }
            p.finish()
        }
        for c in r.tables("command") {
            if let command = readSerialCommand(c) {
                if !used.insert(command.name).inserted { c.issue("name", "'\(command.name)' is already a point or command of this device") } else { d.commands.append(command) }
            }
            c.finish()
        }
        if d.points.isEmpty && d.commands.isEmpty && !d.raw {
            r.issue("point", "the device has no [[device.point]], no [[device.command]] and raw = false: nothing to do")
        }
        return name == nil || port == nil ? nil : d
    }

    private static func readSerialPoint(_ r: Reader) -> SerialPointSettings? {
        let name = r.string("name", required: true)
        if let name {
            r.rename("\(r.parentPath).point[\(name)]")
            if !isTopicSafe(name) { r.issue("name", "'\(name)' must match [A-Za-z0-9_-]+ (it is used in topics)") }
            if reservedNames.contains(name) { r.issue("name", "'\(name)' is reserved in topics") }
        }
        guard let match = r.string("match", required: true), let name else { return nil }
        var p = SerialPointSettings(name: name, match: match)
        if let g = r.string("group") { p.group = g }
        do {
            let regex = try Regex(match)
            if let g = p.group, Int(g) == nil, !regex.contains(captureNamed: g) { r.issue("group", "the regex has no group named '\(g)'") }
        } catch {
            r.issue("match", "not a valid regular expression: \(error)")
        }
        p.format = r.enumeration("format", ValueFormat.self)
        p.retain = r.bool("retain")
        return p
    }

    private static func readSerialCommand(_ r: Reader) -> SerialCommandSettings? {
        let name = r.string("name", required: true)
        if let name {
            r.rename("\(r.parentPath).command[\(name)]")
            if !isTopicSafe(name) { r.issue("name", "'\(name)' must match [A-Za-z0-9_-]+ (it is used in topics)") }
            if reservedNames.contains(name) { r.issue("name", "'\(name)' is reserved in topics") }
        }
        guard let send = bytes(r, "send", required: true), let name else { return nil }
        if send.isEmpty { r.issue("send", "must not be empty") }
        var c = SerialCommandSettings(name: name, send: send)
        if let p = r.string("pattern") {
            if (try? Regex(p)) == nil { r.issue("pattern", "not a valid regular expression") }
            c.pattern = p
        }
        if let v = r.int("max_length", 1...1024) { c.maxLength = v }
        c.signed = r.bool("signed")
        return c
    }

    /// A string of bytes with escapes (see ``ByteEscapes.decode(_:)``).
    private static func bytes(_ r: Reader, _ k: String, required: Bool = false) -> [UInt8]? {
        guard let s = r.string(k, required: required) else { return nil }
        switch ByteEscapes.decode(s) {
        case .success(let b): return b
        case .failure(let e): r.issue(k, "\(e)"); return nil
        }
    }
}

/// Collects issues from every reader.
final class IssueSink {
    var issues: [ConfigIssue] = []
}

/// Reads one TOML table, remembering which keys were used so that the rest can be reported.
final class Reader {
    let table: TOMLTable
    private(set) var path: String
    let parentPath: String
    let sink: IssueSink
    private var used: Set<String> = []

    init(_ table: TOMLTable, path: String, sink: IssueSink, parentPath: String = "") {
        self.table = table
        self.path = path
        self.sink = sink
        self.parentPath = parentPath
    }

    var keys: [String] { table.keys }

    func rename(_ p: String) { path = p }

    func key(_ k: String) -> String { path.isEmpty ? k : "\(path).\(k)" }

    /// An issue about key `k`, with the line it was written on (or the table's line).
    func issue(_ k: String, _ message: String) {
        let line = table.line(of: k) ?? (table.line > 0 ? table.line : nil)
        sink.issues.append(ConfigIssue(path: key(k), line: line, message: message))
    }

    func has(_ k: String) -> Bool { table.keys.contains(k) }

    private func value(_ k: String, required: Bool) -> TOMLValue? {
        used.insert(k)
        guard let v = table[k] else {
            if required { issue(k, "missing (required)") }
            return nil
        }
        return v
    }

    func string(_ k: String, required: Bool = false) -> String? {
        guard let v = value(k, required: required) else { return nil }
        guard let s = v.string else { issue(k, "must be a string, not \(v.typeNameWithArticle)"); return nil }
        return s
    }

    func int(_ k: String, _ range: ClosedRange<Int>? = nil, required: Bool = false) -> Int? {
        guard let v = value(k, required: required) else { return nil }
        guard let i64 = v.integer, let i = Int(exactly: i64) else { issue(k, "must be an integer, not \(v.typeNameWithArticle)"); return nil }
        if let range, !range.contains(i) { issue(k, "\(i) is outside \(range.lowerBound)...\(range.upperBound)"); return nil }
        return i
    }

    /// `baud`: one of ``BaudRate/supported`` (a Modbus bus or a serial device alike).
    func baud() -> Int? {
        guard let b = int("baud") else { return nil }
        guard BaudRate.isSupported(b) else { issue("baud", "\(b) is not a supported baud rate (\(BaudRate.supportedList))"); return nil }
        return b
    }

    /// `parity`: N, E or O, in either case.
    func parity() -> Parity? {
        guard let s = string("parity") else { return nil }
        guard let p = Parity(letter: s) else { issue("parity", "'\(s)' is not N, E or O"); return nil }
        return p
    }

    func double(_ k: String, required: Bool = false) -> Double? {
        guard let v = value(k, required: required) else { return nil }
        if let d = v.float { return d }
        if let i = v.integer { return Double(i) }
        issue(k, "must be a number, not \(v.typeNameWithArticle)")
        return nil
    }

    /// A bool, a number or a string (a value a command could carry).
    func scalar(_ k: String) -> ConfigScalar? {
        guard let v = value(k, required: false) else { return nil }
        if let b = v.boolean { return .bool(b) }
        if let i = v.integer { return .number(String(i)) }
        if let d = v.float, d.isFinite { return .number("\(d)") }
        if let s = v.string { return .text(s) }
        issue(k, "must be true/false, a number or a string, not \(v.typeNameWithArticle)")
        return nil
    }

    func bool(_ k: String, required: Bool = false) -> Bool? {
        guard let v = value(k, required: required) else { return nil }
        guard let b = v.boolean else { issue(k, "must be true or false, not \(v.typeNameWithArticle)"); return nil }
        return b
    }

    func enumeration<E: RawRepresentable & CaseIterable>(_ k: String, _ type: E.Type, required: Bool = false) -> E? where E.RawValue == String {
        guard let s = string(k, required: required) else { return nil }
        guard let e = E(rawValue: s) else {
            issue(k, "'\(s)' is not one of \(E.allCases.map { $0.rawValue }.joined(separator: ", "))")
            return nil
        }
        return e
    }

    func table(_ k: String, required: Bool = false) -> Reader? {
        guard let v = value(k, required: required) else { return nil }
        guard let t = v.table else { issue(k, "must be a table, not \(v.typeNameWithArticle)"); return nil }
        return Reader(t, path: key(k), sink: sink, parentPath: path)
    }

    /// `[[k]]`: an array of tables, each read with the path `k[index]` until renamed.
    func tables(_ k: String) -> [Reader] {
        guard let v = value(k, required: false) else { return [] }
        guard let a = v.array else { issue(k, "must be an array of tables ([[\(k)]])"); return [] }
        var out: [Reader] = []
        for (i, e) in a.enumerated() {
            guard let t = e.table else { issue("\(k)[\(i)]", "must be a table"); continue }
            out.append(Reader(t, path: key("\(k)[\(i)]"), sink: sink, parentPath: path))
        }
        return out
    }

    /// Reports keys that were never read.
    func finish() {
        for k in table.keys.sorted() where !used.contains(k) {
            issue(k, "unknown key")
        }
    }
}
