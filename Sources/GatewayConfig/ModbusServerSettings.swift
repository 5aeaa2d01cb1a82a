// `[[modbus_server]]`: a Modbus TCP server in front of the gateway's buses, so that a second
// master (a SCADA, evcc, Node-RED, a laptop) shares an RS-485 line through the gateway instead of
// garbling it. Off unless configured; read-only unless ranges are opened.
//
//   [[modbus_server]]
//   listen = "0.0.0.0:502"
//   units = { "7" = "line1:3" }                 # unit id -> bus:unit (default: each device's own)
//   writable = ["line1:3:holding:10-19"]        # ranges outside clients may write
//   max_clients = 16
//   idle_timeout_s = 60
//   line_share = 0.25                           # the most of the line outside requests may take

/// Where an outside unit id leads.
public struct ModbusServerTarget: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var bus: String
    public var unit: Int
    public init(bus: String, unit: Int) { self.bus = bus; self.unit = unit }
    public var description: String { "\(bus):\(unit)" }
}

/// A range outside clients may write: `bus:unit:table:first-last`.
public struct ModbusWritableRange: Sendable, Equatable {
    public var target: ModbusServerTarget
    public var table: RegisterTable
    public var first: Int
    public var last: Int

    public init(target: ModbusServerTarget, table: RegisterTable, first: Int, last: Int) {
        self.target = target
        self.table = table
        self.first = first
        self.last = last
    }

    public func covers(_ target: ModbusServerTarget, _ table: RegisterTable, address: Int, count: Int) -> Bool {
        self.target == target && self.table == table && address >= first && address + count - 1 <= last
    }

    /// `line1:3:holding:10-19` (or `...:holding:10` for one address).
    static func parse(_ s: String) -> ModbusWritableRange? {
        let p = s.split(separator: ":", omittingEmptySubsequences: false)
        guard p.count == 4, !p[0].isEmpty, let unit = Int(p[1]), (0...255).contains(unit),
              let table = RegisterTable(rawValue: String(p[2])), table.isWritable else { return nil }
        let ends = p[3].split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map { Int($0) }
        guard let first = ends.first ?? nil, let last = ends.count == 2 ? ends[1] : first,
              (0...65_535).contains(first), (first...65_535).contains(last) else { return nil }
        return ModbusWritableRange(target: ModbusServerTarget(bus: String(p[0]), unit: unit), table: table, first: first, last: last)
    }
}

/// `[[modbus_server]]`.
public struct ModbusServerSettings: Sendable, Equatable {
    /// The settings a reload compares: the derived unit map is left out (it follows the devices,
    /// and is taken at the next start).
    public var written: ModbusServerSettings {
        var s = self
        if !unitsGiven { s.units = [:] }
        return s
    }

    /// `listen` (required): `host:port`, `[v6]:port`.
    public var listen: ListenAddress
    /// `units` (default: every Modbus device under its own unit id, where that id is unique).
    public var units: [Int: ModbusServerTarget]
    /// Whether `units` was written (false: derived from the devices at start).
    public var unitsGiven = false
    /// `writable` (default none: read-only).
    public var writable: [ModbusWritableRange] = []
    /// `max_clients` (default 16, 1...256): a connection past it is closed at once.
    public var maxClients = 16
    /// `idle_timeout_s` (default 60, 1...86400): a connection that sends nothing this long is closed.
    public var idleTimeoutSeconds = 60
    /// `line_share` (default 0.25, 0.05...1): the most of a bus's time outside requests may take;
    /// the polls keep the rest however fast outside clients ask.
    public var lineShare = 0.25

    public init(listen: ListenAddress, units: [Int: ModbusServerTarget]) {
        self.listen = listen
        self.units = units
    }
}

extension ConfigLoader {
    /// Reads every `[[modbus_server]]` once buses and devices are known.
    static func readModbusServers(_ top: Reader, buses: [BusSettings], devices: [DeviceSettings], gateway: GatewaySettings?) -> [ModbusServerSettings] {
        var out: [ModbusServerSettings] = []
        for (i, r) in top.tables("modbus_server").enumerated() {
            r.rename("modbus_server[\(i)]")
            defer { r.finish() }
            guard let text = r.string("listen", required: true) else { continue }
            guard case .success(let address) = ListenAddress.parse(text) else { r.issue("listen", "'\(text)' is not host:port"); continue }
            var units: [Int: ModbusServerTarget] = [:]
            if let m = r.table("units") {
                for key in m.keys {
                    guard let id = Int(key), (1...247).contains(id) else { m.issue(key, "keys are unit ids 1...247"); continue }
                    guard let v = m.string(key, required: true) else { continue }
                    let p = v.split(separator: ":")
                    guard p.count == 2, let unit = Int(p[1]), (0...255).contains(unit) else { m.issue(key, "'\(v)' is not bus:unit"); continue }
                    guard buses.contains(where: { $0.name == p[0] }) else { m.issue(key, "'\(v)' points at nothing: no [[bus]] named '\(p[0])'"); continue }
                    units[id] = ModbusServerTarget(bus: String(p[0]), unit: unit)
                }
                m.finish()
            } else {
                // Each device under its own unit id, where no other device has it.
                let modbus = devices.map { ($0.unit, ModbusServerTarget(bus: $0.bus, unit: $0.unit)) }
                for (id, target) in modbus where (1...247).contains(id) && modbus.filter({ $0.0 == id }).count == 1 {
                    units[id] = target
                }
            }
            var s = ModbusServerSettings(listen: address, units: units)
            s.unitsGiven = r.has("units")
            for w in r.strings("writable") ?? [] {
                guard let range = ModbusWritableRange.parse(w) else {
                    r.issue("writable", "'\(w)' is not bus:unit:coil|holding:first-last"); continue
                }
                guard buses.contains(where: { $0.name == range.target.bus }) else {
                    r.issue("writable", "'\(w)' points at nothing: no [[bus]] named '\(range.target.bus)'"); continue
                }
                // Writes through the front bypass MQTT's checks, signatures and pulses: never on a
                // point that has one of them.
                let keyed = gateway?.commandKeyFile != nil
                for d in devices where d.bus == range.target.bus && d.unit == range.target.unit {
                    for p in d.points where p.table == range.table && p.address <= range.last && p.address + p.width - 1 >= range.first {
                        let signed = p.writable && (p.signed ?? keyed)
                        if p.pulseMs != nil || p.failsafe != nil || signed {
                            let why = p.pulseMs != nil ? "a pulse" : (p.failsafe != nil ? "a fail-safe value" : "signed commands")
                            r.issue("writable", "'\(w)' covers \(d.name).\(p.name), which has \(why): writes through the Modbus front would bypass it")
                        }
                    }
                }
                s.writable.append(range)
            }
            if let v = r.int("max_clients", 1...256) { s.maxClients = v }
            if let v = r.int("idle_timeout_s", 1...86_400) { s.idleTimeoutSeconds = v }
            if let v = r.double("line_share") {
                if !(0.05...1).contains(v) { r.issue("line_share", "must be 0.05...1 (the share of the line outside requests may take)") }
                s.lineShare = min(1, max(0.05, v))
            }
            out.append(s)
        }
        return out
    }
}
