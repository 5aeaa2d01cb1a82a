import LineSettings
import TOMLReader

// Each settings type reads its own table of gateway.toml: `init(reader:)` takes the values,
// checks them, and reports every problem to the reader with its key path (``ConfigLoader``
// collects them and fails once at the end).

extension GatewaySettings {
    /// `[gateway]`.
    init?(reader r: Reader) {
        guard let id = r.string("id", required: true) else { return nil }
        if !ConfigLoader.isTopicSafe(id) { r.issue("id", "'\(id)' must match [A-Za-z0-9_-]+ (it is used in topics)") }
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
        r.retired("drop_startup_pages", "no longer does anything (the gateway no longer gives its start-up pages back; its own memory is measured instead): remove it")
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
        if let v = r.bool("require_synced_clock") { g.requireSyncedClock = v }
        if g.commandKeyFile != nil, let v = g.commandMaxAgeMs, v > GatewaySettings.maxSignedWindowMs {
            r.issue("command_max_age_ms", "\(v) is longer than signed commands can take (\(GatewaySettings.maxSignedWindowMs) ms): their ids could not all be remembered for so long")
        }
        self = g
    }
}

extension MQTTSettings {
    /// `[mqtt]`.
    init(reader r: Reader) {
        var m = MQTTSettings()
        if let urls = r.strings("url") {
            var addresses: [BrokerAddress] = []
            for u in urls {
                switch BrokerAddress.parse(u) {
                case .success(let address): addresses.append(address)
                case .failure(let why): r.issue("url", why.description)
                }
            }
            if let first = addresses.first {
                if addresses.contains(where: { $0.tls != first.tls }) {
                    r.issue("url", "the nodes of one broker are all mqtt:// or all mqtts:// (one set of TLS settings)")
                }
                if Set(addresses.map { "\($0.host):\($0.port)" }).count < addresses.count { r.issue("url", "a node is listed twice") }
                m.broker = first
                m.alternates = Array(addresses.dropFirst())
            }
            m.url = urls.joined(separator: ", ")
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
        m.passwordFile = r.readableFile("password_file", what: "a password file")
        if r.has("password") { r.issue("password", "passwords do not belong in the file: use password_file or env GATEWAY_MQTT_PASSWORD") }
        if let v = r.bool("clean_session") { m.cleanSession = v }
        if let tls = r.table("tls") {
            m.caFile = tls.readableFile("ca_file", what: "a certificate file")
            m.certFile = tls.readableFile("cert_file", what: "a certificate file")
            m.keyFile = tls.readableFile("key_file", what: "a key file")
            if (m.certFile == nil) != (m.keyFile == nil) { tls.issue("cert_file", "cert_file and key_file go together") }
            if !m.url.hasPrefix("mqtts://") { tls.issue("ca_file", "[mqtt.tls] needs url = \"mqtts://...\" (the url is \(m.url))") }
            tls.finish()
        }
        self = m
    }
}

extension HTTPSettings {
    /// `[http]`.
    init(reader r: Reader) {
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
        h.passwordFile = r.readableFile("password_file", what: "a password file")
        if r.has("password") { r.issue("password", "passwords do not belong in the file: use password_file") }
        if (h.username == nil) != (h.passwordFile == nil) { r.issue(h.username == nil ? "password_file" : "username", "username and password_file go together") }
        self = h
    }
}

extension BusSettings {
    /// A `[[bus]]` table, the `index`th.
    init?(reader r: Reader, index: Int) {
        let name = r.name(table: "bus", inTopics: false)
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
        case "rtu-tcp":
            let host = r.string("host", required: true)
            let port = r.int("port", 1...65_535, required: true)
            if let host, let port, let name { bus = BusSettings(name: name, kind: .rtuOverTCP(host: host, port: port)) }
        default:
            r.issue("type", "'\(type)' is not a bus type: use \"tcp\", \"rtu\" or \"rtu-tcp\"")
        }
        if let t = r.int("timeout_ms", 10...60_000) { bus?.timeoutMs = t }
        guard let bus else { return nil }
        self = bus
    }
}

extension DeviceSettings {
    /// A Modbus `[[device]]` table, the `index`th, on one of `buses`.
    init?(reader r: Reader, index: Int, buses: [BusSettings], profiles: ProfileCache) {
        let name = r.name(table: "device")
        let busName = r.string("bus", required: true)
        let bus = busName.flatMap { b in buses.first { $0.name == b } }
        if let busName, bus == nil { r.issue("bus", "no [[bus]] named '\(busName)'") }
        var d = DeviceSettings(name: name ?? "", bus: busName ?? "")
        if let u = r.int("unit", 0...255) {
            switch bus?.kind {
            case .rtu, .rtuOverTCP: if !(1...247).contains(u) { r.issue("unit", "must be 1...247 on an RTU line (0 is broadcast)") }
            default: break
            }
            d.unit = u
        }
        if let v = r.int("poll_ms", 10...86_400_000) { d.pollMs = v }
        if let v = r.int("offline_after", 1...1_000_000) { d.offlineAfter = v }
        if let v = r.int("offline_poll_ms", 10...86_400_000) { d.offlinePollMs = v }
        if let v = r.bool("write_multiple") { d.writeMultiple = v }
        d.manufacturer = r.string("manufacturer")
        d.model = r.string("model")
        if let v = r.int("failsafe_after_s", 1...86_400) { d.failsafeAfterSeconds = v }
        // Exactly as many as written: a point's settings are a few hundred bytes, and an array
        // grown by appending keeps up to half of its room empty for as long as the gateway runs.
        let pointTables = r.tables("point")
        d.points.reserveCapacity(pointTables.count)
        for (i, p) in pointTables.enumerated() {
            if let point = PointSettings(reader: p, index: i) {
                if d.points.contains(where: { $0.name == point.name }) { p.issue("name", "duplicate point name '\(point.name)'") } else { d.points.append(point) }
            }
            p.finish()
        }
        let removed = r.strings("points_remove") ?? []
        if let profile = r.string("profile") {
            d.profile = profile
            d.expand(profile: profile, remove: removed, reader: r, profiles: profiles)
        } else {
            if r.has("points_remove") { r.issue("points_remove", "only with profile = \"...\"") }
            if d.points.isEmpty && r.has("point") == false { r.issue("point", "the device has no [[device.point]] (and no profile)") }
        }
        guard !(name == nil || busName == nil) else { return nil }
        self = d
    }
}

extension PointSettings {
    /// A Modbus device's `[[device.point]]`, the `index`th.
    init?(reader r: Reader, index: Int) {
        let name = r.name(table: r.parentPath.isEmpty ? "point" : "\(r.parentPath).point", reserved: true)
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
        if let w = r.enumeration("word_order", ConfigLoader.Endianness.self) { p.wordOrderLittle = w == .little }
        if let b = r.enumeration("byte_order", ConfigLoader.Endianness.self) { p.byteOrderLittle = b == .little }
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
        if let v = r.bool("secret") {
            if v && !p.writable { r.issue("secret", "only for writable points") }
            p.secret = v
        }
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
        self = p
    }
}

extension SerialDeviceSettings {
    /// A `[[device]]` with `driver = "serial"`.
    init?(reader r: Reader) {
        let name = r.name(table: "device")
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
        if let s = r.bytes("delimiter") {
            if s.isEmpty { r.issue("delimiter", "must not be empty") }
            d.delimiter = s
        }
        if let s = r.bytes("start") {
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
        if let p = r.bytes("poll") {
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
            if let point = SerialPointSettings(reader: p) {
                if !used.insert(point.name).inserted { p.issue("name", "duplicate point name '\(point.name)'") } else { d.points.append(point) }
            }
            p.finish()
        }
        for c in r.tables("command") {
            if let command = SerialCommandSettings(reader: c) {
                if !used.insert(command.name).inserted { c.issue("name", "'\(command.name)' is already a point or command of this device") } else { d.commands.append(command) }
            }
            c.finish()
        }
        if d.points.isEmpty && d.commands.isEmpty && !d.raw {
            r.issue("point", "the device has no [[device.point]], no [[device.command]] and raw = false: nothing to do")
        }
        guard !(name == nil || port == nil) else { return nil }
        self = d
    }
}

extension SerialPointSettings {
    /// A serial device's `[[device.point]]`.
    init?(reader r: Reader) {
        let name = r.name(table: r.parentPath.isEmpty ? "point" : "\(r.parentPath).point", reserved: true)
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
        self = p
    }
}

extension SerialCommandSettings {
    /// A serial device's `[[device.command]]`.
    init?(reader r: Reader) {
        let name = r.name(table: "\(r.parentPath).command", reserved: true)
        guard let send = r.bytes("send", required: true), let name else { return nil }
        if send.isEmpty { r.issue("send", "must not be empty") }
        var c = SerialCommandSettings(name: name, send: send)
        if let p = r.string("pattern") {
            if (try? Regex(p)) == nil { r.issue("pattern", "not a valid regular expression") }
            c.pattern = p
        }
        if let v = r.int("max_length", 1...1024) { c.maxLength = v }
        c.signed = r.bool("signed")
        if let v = r.bool("secret") { c.secret = v }
        self = c
    }
}
