/// What Home Assistant would refuse, refused by `gateway check` first (``HomeAssistantRules``,
/// generated from a Home Assistant release): the platform each point becomes, its `ha` overrides
/// against that platform, names that would make ids collide, and serial command patterns that
/// Python's `re` (Home Assistant's) cannot compile.
extension HomeAssistantPoint {
    /// The platform a point becomes: `component`, else from its table, type, `writable`,
    /// `pulse_ms` and `map`. `signing`: signed commands are on, and Home Assistant cannot sign,
    /// so a point that needs a signature is shown read-only.
    public static func platform(of p: PointSettings, signing: Bool) -> String {
        let readOnly = signing && (p.signed ?? true) && p.writable
        if let c = p.ha?.component, !(readOnly && commandComponents.contains(c)) { return c }
        if p.writable && !readOnly {
            if p.pulseMs != nil { return "button" }
            if !p.map.isEmpty { return "select" }
            if p.type == .bool { return "switch" }
            if p.type == .string { return "sensor" }
            return "number"
        }
        if p.type == .bool { return "binary_sensor" }   // a map names its two states
        return "sensor"
    }

    /// Components that send commands.
    public static let commandComponents: Set<String> = ["switch", "button", "number", "select", "lock"]

    /// The unit Home Assistant sees for a point shown as `platform` (nil: none is published).
    public static func publishedUnit(of p: PointSettings, platform: String) -> String? {
        switch platform {
        case "number": p.unit
        case "sensor" where p.map.isEmpty && p.type != .string && p.type != .bool: p.unit
        default: nil
        }
    }
}

extension ConfigLoader {
    /// The checks of ``HomeAssistantPoint`` (with discovery on).
    static func checkHomeAssistant(_ c: GatewayConfiguration, _ top: Reader) {
        func issue(_ path: String, _ message: String) { top.sink.issues.append(ConfigIssue(path: path, message: message)) }
        let release = "Home Assistant \(HomeAssistantRules.version)"
        func names(_ s: some Sequence<String?>) -> String { s.map { $0 ?? "none" }.sorted().joined(separator: ", ") }
        // Ids join names with `_` (a name's own `_` doubled): a name may not begin or end with one.
        func checkName(_ name: String, _ path: String) {
            if name.hasPrefix("_") || name.hasSuffix("_") { issue(path, "'\(name)' must not begin or end with '_' (Home Assistant ids join names with '_')") }
        }
        checkName(c.gateway.id, "gateway.id")
        for name in c.devices.map(\.name) + c.serialDevices.map(\.name) {
            checkName(name, "device[\(name)].name")
            if name == "gateway" { issue("device[\(name)].name", "'gateway' is the name of the gateway's own device in Home Assistant: choose another") }
        }
        let signing = c.gateway.commandKeyFile != nil
        for d in c.devices {
            for p in d.points {
                let path = "device[\(d.name)].point[\(p.name)]"
                checkName(p.name, "\(path).name")
                guard let ha = p.ha else { continue }
                let platform = HomeAssistantPoint.platform(of: p, signing: signing)
                let mapped = platform == "sensor" && !p.map.isEmpty
                if let dc = ha.deviceClass {
                    if let allowed = HomeAssistantRules.deviceClasses[platform] {
                        if mapped && dc != "enum" {
                            issue("\(path).ha.device_class", "a point with a map is an enum sensor (its names are its options): device_class must be enum or left out")
                        } else if !allowed.contains(dc) {
                            issue("\(path).ha.device_class", "'\(dc)' is not a device class of a \(platform) (\(release)): one of \(names(allowed))")
                        }
                    } else {
                        issue("\(path).ha.device_class", "a \(platform) takes no device_class (\(release))")
                    }
                }
                if let sc = ha.stateClass {
                    if platform != "sensor" {
                        issue("\(path).ha.state_class", "only a sensor has a state class; this point is a \(platform)")
                    } else if mapped {
                        issue("\(path).ha.state_class", "a point with a map is an enum sensor, which takes no state class")
                    } else if !HomeAssistantRules.stateClasses.contains(sc) {
                        issue("\(path).ha.state_class", "'\(sc)' is not a state class (\(release)): one of \(names(HomeAssistantRules.stateClasses))")
                    } else if let units = HomeAssistantRules.stateClassUnits[sc] {
                        let unit = HomeAssistantPoint.publishedUnit(of: p, platform: platform)
                        if !units.contains(unit.map { HomeAssistantRules.ambiguousUnits[$0] ?? $0 }) {
                            issue("\(path).unit", "state class \(sc) needs the unit \(names(units)), not \(unit ?? "none")")
                        }
                    }
                }
                if let icon = ha.icon, !icon.contains(":") {
                    issue("\(path).ha.icon", "'\(icon)' is not an icon: write it as prefix:name, e.g. mdi:door")
                }
                // The unit must fit the device class.
                let table = platform == "sensor" ? HomeAssistantRules.sensorUnits : platform == "number" ? HomeAssistantRules.numberUnits : [:]
                if let dc = ha.deviceClass, !mapped, let units = table[dc] {
                    let unit = HomeAssistantPoint.publishedUnit(of: p, platform: platform)
                    if !units.contains(unit.map { HomeAssistantRules.ambiguousUnits[$0] ?? $0 }) {
                        issue("\(path).unit", "\(unit.map { "'\($0)'" } ?? "no unit") does not fit a \(dc) \(platform) (\(release)): \(names(units))")
                    }
                }
            }
        }
        for d in c.serialDevices {
            for p in d.points { checkName(p.name, "device[\(d.name)].point[\(p.name)].name") }
            for cmd in d.commands {
                checkName(cmd.name, "device[\(d.name)].command[\(cmd.name)].name")
                if let pattern = cmd.pattern, let why = pythonIncompatibility(pattern) {
                    issue("device[\(d.name)].command[\(cmd.name)].pattern", "Home Assistant checks text with Python's re, which \(why)")
                }
            }
        }
    }

    /// Why Python's `re` would not compile `pattern` the way the gateway's regex does (nil: it
    /// would): the constructs of the gateway's syntax that Python lacks or reads otherwise.
    static func pythonIncompatibility(_ pattern: String) -> String? {
        var i = pattern.startIndex
        while i < pattern.endIndex {
            let c = pattern[i]
            let rest = pattern[pattern.index(after: i)...]
            if c == "\\", let next = rest.first {
                if "pPhHRXQEKGN".contains(next) { return "has no \\\(next)" }
                i = pattern.index(i, offsetBy: 2)
                continue
            }
            if c == "(", rest.hasPrefix("?<"), let after = rest.dropFirst(2).first, after != "=" && after != "!" {
                return "names groups (?P<name>...), not (?<name>...)"
            }
            i = pattern.index(after: i)
        }
        return nil
    }
}
