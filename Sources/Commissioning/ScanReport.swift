import GatewayConfig
import LineSettings

/// A scan's result in the three forms `gateway scan` prints: a table for people, a `[[bus]]` and
/// `[[device]]` snippet for gateway.toml, JSON for tools. Profiles are matched here.
public struct ScanReport {
    public let target: ScanTarget
    public let result: ScanResult
    /// Per unit, the profile its identification matched (first by name when several do).
    public let profiles: [Int: DeviceProfile]

    public init(target: ScanTarget, result: ScanResult, library: ProfileLibrary) {
        self.target = target
        self.result = result
        var loaded: [DeviceProfile] = []
        for (name, _) in library.all() {
            if let p = try? library.load(name) { loaded.append(p) }
        }
        var matched: [Int: DeviceProfile] = [:]
        for u in result.units {
            let vendor = u.identification?.vendor, product = u.identification?.productCode
            if let p = loaded.first(where: { $0.matches(vendor: vendor, product: product) }) { matched[u.unit] = p }
        }
        profiles = matched
    }

    // MARK: table

    public var table: String {
        var lines: [String] = []
        let where_ = result.setting.map { " at \($0.baud) baud, parity \($0.parity.rawValue)" } ?? ""
        lines.append("\(result.units.count) unit(s) answered on \(target)\(where_) (\(result.probes) probes\(result.garbled > 0 ? ", \(result.garbled) garbled answers" : ""))")
        guard !result.units.isEmpty else { return lines.joined(separator: "\n") }
        let header = ["unit", "coil", "discrete", "holding", "input", "identification", "profile"]
        var rows: [[String]] = [header]
        for u in result.units {
            var row = [String(u.unit)]
            for t in ["coil", "discrete", "holding", "input"] {
                row.append(Self.short(u.tables.first { $0.table == t }?.answer ?? .silence))
            }
            row.append(Self.identity(u))
            row.append(profiles[u.unit]?.name ?? "-")
            rows.append(row)
        }
        let widths = header.indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
        for r in rows {
            lines.append(r.indices.map { c in c == r.count - 1 ? r[c] : r[c] + String(repeating: " ", count: widths[c] - r[c].count) }
                .joined(separator: "  "))
        }
        return lines.joined(separator: "\n")
    }

    static func short(_ a: TableAnswer) -> String {
        switch a {
        case .value(let v): "\(v)"
        case .exception(let e): "exc \(e)"
        case .silence: "-"
        }
    }

    static func identity(_ u: FoundUnit) -> String {
        var parts: [String] = []
        if let i = u.identification {
            parts += [i.vendor, i.productCode, i.revision].compactMap { $0 }
        }
        if let s = u.serverID {
            parts.append("id \(s.id)" + (s.text.map { " \"\($0)\"" } ?? ""))
        }
        return parts.isEmpty ? "-" : parts.joined(separator: " ")
    }

    // MARK: TOML

    /// A `[[bus]]` and one `[[device]]` per unit, ready to paste into gateway.toml.
    public func toml(busName: String = "line1") -> String {
        var out = ["# gateway scan of \(target): \(result.units.count) unit(s)"]
        out.append("[[bus]]")
        out.append("name = \(Self.quote(busName))")
        switch target {
        case .rtu(let path, let dataBits, let stopBits):
            out.append("type = \"rtu\"")
            out.append("port = \(Self.quote(path))")
            if let s = result.setting {
                out.append("baud = \(s.baud)")
                out.append("parity = \"\(s.parity.rawValue)\"")
            }
            if dataBits != 8 { out.append("data_bits = \(dataBits)") }
            if stopBits != 1 { out.append("stop_bits = \(stopBits)") }
        case .tcp(let host, let port):
            out.append("type = \"tcp\"")
            out.append("host = \(Self.quote(host))")
            out.append("port = \(port)")
        case .rtuOverTCP(let host, let port):
            out.append("type = \"rtu-tcp\"")
            out.append("host = \(Self.quote(host))")
            out.append("port = \(port)")
        }
        var used: Set<String> = []
        for u in result.units {
            out.append("")
            let profile = profiles[u.unit]
            var name = (profile?.name ?? "unit") + "-\(u.unit)"
            while !used.insert(name).inserted { name += "x" }
            let identity = Self.identity(u)
            if identity != "-" { out.append("# \(identity)") }
            if let profile {
                out.append("[[device]]")
                out.append("name = \(Self.quote(name))")
                out.append("bus = \(Self.quote(busName))")
                out.append("unit = \(u.unit)")
                out.append("profile = \(Self.quote(profile.name))")
                continue
            }
            let answering = u.tables.filter { $0.answer.answeredWithValue }
            if answering.isEmpty {
                out.append("# unit \(u.unit) answers, but no table at address 0 does: add its points from its register map")
                out.append("# [[device]]")
                out.append("# name = \(Self.quote(name))")
                out.append("# bus = \(Self.quote(busName))")
                out.append("# unit = \(u.unit)")
                continue
            }
            out.append("# not recognised: the tables that answered at address 0; add the rest from its register map")
            out.append("[[device]]")
            out.append("name = \(Self.quote(name))")
            out.append("bus = \(Self.quote(busName))")
            out.append("unit = \(u.unit)")
            for t in answering {
                out.append("  [[device.point]]")
                out.append("  name = \"\(t.table)_0\"")
                out.append("  register = \"\(t.table)\"")
                out.append("  address = 0")
            }
        }
        return out.joined(separator: "\n")
    }

    // MARK: JSON

    public var json: String {
        var units: [String] = []
        for u in result.units {
            var fields = ["\"unit\":\(u.unit)", "\"probe\":\(Self.json(u.probe))"]
            let tables = u.tables.map { "\"\($0.table)\":\(Self.json($0.answer))" }.joined(separator: ",")
            fields.append("\"tables\":{\(tables)}")
            if let i = u.identification {
                let parts = [("vendor", i.vendor), ("product_code", i.productCode), ("revision", i.revision)]
                    .compactMap { k, v in v.map { "\"\(k)\":\(Self.jsonString($0))" } }
                fields.append("\"identification\":{\(parts.joined(separator: ","))}")
            }
            if let s = u.serverID {
                var parts = ["\"id\":\(s.id)"]
                if let r = s.running { parts.append("\"running\":\(r)") }
                if let t = s.text { parts.append("\"text\":\(Self.jsonString(t))") }
                fields.append("\"server_id\":{\(parts.joined(separator: ","))}")
            }
            if let p = profiles[u.unit] { fields.append("\"profile\":\(Self.jsonString(p.name))") }
            units.append("{\(fields.joined(separator: ","))}")
        }
        var top = ["\"target\":\(Self.jsonString(target.description))"]
        if let s = result.setting { top.append("\"baud\":\(s.baud)"); top.append("\"parity\":\"\(s.parity.rawValue)\"") }
        top.append("\"probes\":\(result.probes)")
        top.append("\"garbled\":\(result.garbled)")
        top.append("\"units\":[\(units.joined(separator: ","))]")
        return "{\(top.joined(separator: ","))}"
    }

    static func json(_ a: TableAnswer) -> String {
        switch a {
        case .value(let v): "{\"value\":\(v)}"
        case .exception(let e): "{\"exception\":\(e)}"
        case .silence: "null"
        }
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where c.value < 0x20: out += "\\u00" + (c.value < 16 ? "0" : "") + String(c.value, radix: 16)
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }

    static func quote(_ s: String) -> String { jsonString(s) }
}
