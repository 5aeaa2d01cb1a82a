import GatewayConfig
import Modbus

/// Home Assistant MQTT discovery payloads (device-based discovery, Home Assistant 2024.11 and
/// later), built from the configuration alone: pure, so `gateway check` lists the same entities
/// the running gateway announces.
///
/// Home Assistant's MQTT documentation, for the fields used here:
/// - "The discovery topic needs to follow a specific format: `<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`";
///   for a device-based payload "the `<component>` part in the discovery topic must be set to `device`".
/// - "The shared options at the root level of the JSON message must include: `device` mapping
///   (abbreviated as `dev`), `origin` mapping (abbreviated as `o`)"; "Supported shared options
///   are: the `availability` options, ... `qos`".
/// - "The component specific options are placed as mappings under the `components` key" and "A
///   `platform` (`p`) config option is required for each component ... Also required is a
///   `unique_id` for entity-based components."
/// - "To remove the components, publish an empty (retained) string payload to the discovery topic."
/// - `availability_mode`: "When `availability` is configured, this controls the conditions needed
///   to set the entity to `available`. Valid entries are `all`, `any`, and `latest`."
/// - `default_entity_id` replaces the deprecated `object_id` (the entity id Home Assistant gives
///   the entity when it first sees it).
/// Full option names are used throughout (not the abbreviations).
public struct HomeAssistantDiscovery: Sendable {
    /// One entity of a device (a point, a serial command, or the gateway's connectivity).
    public struct Entity: Sendable, Equatable {
        public var id: String
        public var platform: String
        public var name: String
        /// The entity's options as JSON members (`"key":value`), without `platform`.
        public var options: [String]
    }

    /// One device's retained config.
    public struct Device: Sendable {
        public var objectID: String
        public var topic: String
        public var name: String
        public var entities: [Entity]
        /// The retained payload, given the component ids to remove (published once with only
        /// their `platform`, Home Assistant's way of dropping one component of a device).
        public func payload(removing removed: [String: String] = [:]) -> String {
            var cmps = entities.map { e in "\(JSONValue.quoted(e.id)):{\"platform\":\(JSONValue.quoted(e.platform)),\(e.options.joined(separator: ","))}" }
            cmps += removed.sorted(by: { $0.key < $1.key }).map { "\(JSONValue.quoted($0.key)):{\"platform\":\(JSONValue.quoted($0.value))}" }
            return "{" + shared.joined(separator: ",") + ",\"components\":{" + cmps.joined(separator: ",") + "}}"
        }
        /// `device`, `origin`, `availability`, `qos` members.
        var shared: [String]
    }

    public static let originName = "mqtt-gateway"
    // No `support_url`: the project has no published home yet, and a made-up one would send
    // people nowhere.

    public let prefix: String
    public let devices: [Device]

    public init(configuration c: GatewayConfiguration, topics: TopicLayout, version: String) {
        prefix = c.homeAssistant.prefix
        let gw = c.gateway.id
        let origin = "\"origin\":{\"name\":\(JSONValue.quoted(Self.originName)),\"sw_version\":\(JSONValue.quoted(version))}"
        let gatewayDeviceID = Self.gatewayDeviceID(gw)
        var out: [Device] = []
        // The gateway itself: a connectivity sensor on its birth/will topic.
        let statusID = Self.id(gw, "gateway", "status")
        let gatewayEntity = Entity(id: statusID, platform: "binary_sensor", name: "Status", options: [
            "\"unique_id\":\(JSONValue.quoted(statusID))",
            "\"default_entity_id\":\(JSONValue.quoted("binary_sensor.\(Self.entityID(gw))_gateway_status"))", Self.qos,
            "\"name\":\"Status\"", "\"device_class\":\"connectivity\"", "\"entity_category\":\"diagnostic\"",
            "\"state_topic\":\(JSONValue.quoted(topics.status))", "\"payload_on\":\"online\"", "\"payload_off\":\"offline\"",
        ])
        out.append(Device(objectID: gatewayDeviceID, topic: "\(prefix)/device/\(gatewayDeviceID)/config", name: "Gateway \(gw)", entities: [gatewayEntity],
                          shared: ["\"device\":{\"identifiers\":[\(JSONValue.quoted(gatewayDeviceID))],\"name\":\(JSONValue.quoted("Gateway \(gw)")),\"sw_version\":\(JSONValue.quoted(version))}",
                                   origin, Self.qos]))
        let availability = { (device: String) in
            "\"availability\":[{\"topic\":\(JSONValue.quoted(topics.status))},{\"topic\":\(JSONValue.quoted(topics.status(device)))}],\"availability_mode\":\"all\""
        }
        let deviceMember = { (name: String, manufacturer: String?, model: String?) -> String in
            var d = "\"device\":{\"identifiers\":[\(JSONValue.quoted(Self.id(gw, name)))],\"name\":\(JSONValue.quoted(name))"
            if let manufacturer { d += ",\"manufacturer\":\(JSONValue.quoted(manufacturer))" }
            if let model { d += ",\"model\":\(JSONValue.quoted(model))" }
            return d + ",\"via_device\":\(JSONValue.quoted(gatewayDeviceID))}"
        }
        for d in c.devices {
            // Home Assistant cannot sign: a point that needs signed commands is shown read-only.
            let signing = c.gateway.commandKeyFile != nil
            var entities = d.points.map { p -> Entity in
                var shown = p
                if signing && (p.signed ?? true) && p.writable { shown.writable = false }
                return Self.entity(for: shown, platform: HomeAssistantPoint.platform(of: p, signing: signing), device: d, gateway: c.gateway, topics: topics)
            }
            // Counters and latches also announce their events (an `event` entity each).
            for p in d.points where p.counter || p.latch {
                let id = Self.id(gw, d.name, p.name, "event")
                var o = Self.common(id: id, platform: "event", name: "\(p.name) event", icon: nil)
                o.append("\"state_topic\":\(JSONValue.quoted(topics.event(device: d.name, point: p.name)))")
                o.append("\"event_types\":[\(PointEvent.types(of: p).map(JSONValue.quoted).joined(separator: ","))]")
                entities.append(Entity(id: id, platform: "event", name: "\(p.name) event", options: o))
            }
            out.append(Device(objectID: Self.id(gw, d.name), topic: "\(prefix)/device/\(Self.id(gw, d.name))/config", name: d.name, entities: entities,
                              shared: [deviceMember(d.name, d.manufacturer, d.model), origin, availability(d.name), Self.qos]))
        }
        for d in c.serialDevices {
            var entities = d.points.map { p -> Entity in
                let id = Self.id(gw, d.name, p.name)
                var o = Self.common(id: id, platform: "sensor", name: p.name, icon: nil)
                o.append("\"state_topic\":\(JSONValue.quoted(topics.value(device: d.name, point: p.name)))")
                if (p.format ?? c.gateway.format) == .json { o.append("\"value_template\":\"{{ value_json.value }}\"") }
                return Entity(id: id, platform: "sensor", name: p.name, options: o)
            }
            // Signed serial commands are left out (Home Assistant cannot sign).
            entities += d.commands.filter { c.gateway.commandKeyFile == nil || $0.signed == false }.map { cmd -> Entity in
                let id = Self.id(gw, d.name, cmd.name)
                if !cmd.takesValue {
                    // Home Assistant's default press payload (`PRESS`): any payload sends the
                    // fixed command, and an empty one would be refused.
                    var o = Self.common(id: id, platform: "button", name: cmd.name, icon: nil)
                    o.append("\"command_topic\":\(JSONValue.quoted(topics.set(device: d.name, point: cmd.name)))")
                    return Entity(id: id, platform: "button", name: cmd.name, options: o)
                }
                // What the gateway takes: 1...max_length bytes (Home Assistant's text holds at most
                // 255) matching the whole pattern (the gateway matches the whole value).
                var o = Self.common(id: id, platform: "text", name: cmd.name, icon: nil)
                o.append("\"command_topic\":\(JSONValue.quoted(topics.set(device: d.name, point: cmd.name)))")
                o.append("\"min\":1")
                o.append("\"max\":\(min(cmd.maxLength, HomeAssistantRules.maxTextLength))")
                if let pattern = cmd.pattern { o.append("\"pattern\":\(JSONValue.quoted("^(?:\(pattern))$"))") }
                return Entity(id: id, platform: "text", name: cmd.name, options: o)
            }
            out.append(Device(objectID: Self.id(gw, d.name), topic: "\(prefix)/device/\(Self.id(gw, d.name))/config", name: d.name, entities: entities,
                              shared: [deviceMember(d.name, d.manufacturer, d.model), origin, availability(d.name), Self.qos]))
        }
        devices = out
    }

    /// QoS 1, at the root and in every component: the root's reaches the components only from
    /// Home Assistant 2026.6 (earlier ones would send commands at QoS 0).
    static let qos = "\"qos\":1"

    /// An id of names: joined with `_`, a name's own `_` doubled (names do not begin or end with
    /// one), so that no two lists of names give the same id: `door_1` + `temp` is `door__1_temp`,
    /// `door` + `1_temp` is `door_1__temp`. Names without `_` keep the ids of earlier releases.
    public static func id(_ names: String...) -> String {
        names.map { String($0.split(separator: "_", omittingEmptySubsequences: false).joined(separator: "__")) }.joined(separator: "_")
    }

    /// The gateway's own device in Home Assistant (the `via_device` of all its devices).
    public static func gatewayDeviceID(_ gatewayID: String) -> String { id(gatewayID, "gateway") }

    /// Home Assistant entity ids are lower case letters, digits and `_`.
    static func entityID(_ s: String) -> String {
        String(s.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }

    static func common(id: String, platform: String, name: String, icon: String?) -> [String] {
        var o = ["\"unique_id\":\(JSONValue.quoted(id))", "\"default_entity_id\":\(JSONValue.quoted("\(platform).\(entityID(id))"))", "\"name\":\(JSONValue.quoted(name))", qos]
        if let icon { o.append("\"icon\":\(JSONValue.quoted(icon))") }
        return o
    }

    static func entity(for p: PointSettings, platform: String, device d: DeviceSettings, gateway: GatewaySettings, topics: TopicLayout) -> Entity {
        let ha = p.ha ?? HomeAssistantPoint()
        let id = Self.id(gateway.id, d.name, p.name)
        var o = common(id: id, platform: platform, name: p.name, icon: ha.icon)
        let state = topics.value(device: d.name, point: p.name)
        let command = topics.set(device: d.name, point: p.name)
        let json = (p.format ?? gateway.format) == .json
        // Values as the gateway publishes them: plain `true`/`false`, numbers, map names; JSON
        // `{"value":...}` (a bool is rendered in lower case to match the plain words).
        var template = p.type == .bool && p.map.isEmpty ? "{{ value_json.value | lower }}" : "{{ value_json.value }}"
        if !p.map.isEmpty {
            // A raw value the map does not name is published as the number: Home Assistant
            // shows it as unknown (`None`) instead of refusing the state.
            let names = p.map.values.sorted().map { name in
                "'" + name.flatMap { $0 == "'" || $0 == "\\" ? ["\\", $0] : [$0] } + "'"   // a Jinja string literal
            }.joined(separator: ",")
            template = "{% set v = \(json ? "value_json.value | string" : "value") %}{{ v if v in [\(names)] else 'None' }}"
        }
        func stateMembers() {
            o.append("\"state_topic\":\(JSONValue.quoted(state))")
            if json || !p.map.isEmpty { o.append("\"value_template\":\(JSONValue.quoted(template))") }
        }
        // The words for on and off: the map's names for 1 and 0 when it has them.
        let on = p.map[1] ?? "true", off = p.map[0] ?? "false"
        if let dc = ha.deviceClass { o.append("\"device_class\":\(JSONValue.quoted(dc))") }
        switch platform {
        case "binary_sensor":
            stateMembers()
            o += ["\"payload_on\":\(JSONValue.quoted(on))", "\"payload_off\":\(JSONValue.quoted(off))"]
        case "switch":
            stateMembers()
            o += ["\"command_topic\":\(JSONValue.quoted(command))", "\"payload_on\":\(JSONValue.quoted(on))", "\"payload_off\":\(JSONValue.quoted(off))",
                  "\"state_on\":\(JSONValue.quoted(on))", "\"state_off\":\(JSONValue.quoted(off))"]
        case "button":
            // Pressing it sends the "on" command; a pulse point switches itself off after pulse_ms.
            o += ["\"command_topic\":\(JSONValue.quoted(command))", "\"payload_press\":\(JSONValue.quoted(p.type == .bool ? on : "1"))"]
        case "lock":
            let sp = ha.statePoint.flatMap { n in d.points.first { $0.name == n } } ?? p
            o += ["\"command_topic\":\(JSONValue.quoted(command))", "\"payload_unlock\":\(JSONValue.quoted(on))", "\"payload_lock\":\(JSONValue.quoted(off))",
                  "\"state_topic\":\(JSONValue.quoted(topics.value(device: d.name, point: sp.name)))",
                  "\"state_locked\":\(JSONValue.quoted(ha.stateLocked ?? "false"))", "\"state_unlocked\":\(JSONValue.quoted(ha.stateUnlocked ?? "true"))"]
            if (sp.format ?? gateway.format) == .json {
                o.append("\"value_template\":\(JSONValue.quoted(sp.type == .bool && sp.map.isEmpty ? "{{ value_json.value | lower }}" : "{{ value_json.value }}"))")
            }
            if ha.statePoint == nil && p.pulseMs != nil { o.append("\"optimistic\":false") }
        case "number":
            stateMembers()
            o.append("\"command_topic\":\(JSONValue.quoted(command))")
            let integer = p.type.isInteger && p.scale == p.scale.rounded()
            o.append("\"min\":\(Scaling.format(p.min ?? p.type.naturalMinimum(scale: p.scale, offset: p.offset)))")
            o.append("\"max\":\(Scaling.format(p.max ?? p.type.naturalMaximum(scale: p.scale, offset: p.offset)))")
            // Home Assistant's smallest step is 0.001.
            o.append("\"step\":\(Scaling.format(integer ? max(1, abs(p.scale)) : abs(p.scale) < 1 ? max(HomeAssistantRules.minimumNumberStep, abs(p.scale)) : 0.001))")
            o.append("\"mode\":\"box\"")
            if let unit = p.unit { o.append("\"unit_of_measurement\":\(JSONValue.quoted(unit))") }
        case "select":
            stateMembers()
            o.append("\"command_topic\":\(JSONValue.quoted(command))")
            o.append("\"options\":[\(p.map.sorted { $0.key < $1.key }.map { JSONValue.quoted($0.value) }.joined(separator: ","))]")
        default:   // sensor
            stateMembers()
            if !p.map.isEmpty {
                if ha.deviceClass == nil { o.append("\"device_class\":\"enum\"") }
                o.append("\"options\":[\(p.map.sorted { $0.key < $1.key }.map { JSONValue.quoted($0.value) }.joined(separator: ","))]")
            } else if p.type != .string && p.type != .bool {
                o.append("\"state_class\":\(JSONValue.quoted(ha.stateClass ?? "measurement"))")
                if let unit = p.unit { o.append("\"unit_of_measurement\":\(JSONValue.quoted(unit))") }
            }
        }
        return Entity(id: id, platform: platform, name: p.name, options: o)
    }
}

extension PointType {
    fileprivate var isInteger: Bool {
        switch self {
        case .int16, .uint16, .int32, .uint32, .int64, .uint64: true
        default: false
        }
    }

    /// The raw range of the type, in engineering units.
    fileprivate var rawRange: (Double, Double) {
        switch self {
        case .int16: (-32_768, 32_767)
        case .uint16: (0, 65_535)
        case .int32: (-2_147_483_648, 2_147_483_647)
        case .uint32: (0, 4_294_967_295)
        case .int64: (-9_007_199_254_740_991, 9_007_199_254_740_991)   // what a JSON number keeps exactly
        case .uint64: (0, 9_007_199_254_740_991)
        default: (-1e9, 1e9)
        }
    }

    fileprivate func naturalMinimum(scale: Double, offset: Double) -> Double {
        let (lo, hi) = rawRange
        return Swift.min(lo * scale + offset, hi * scale + offset)
    }

    fileprivate func naturalMaximum(scale: Double, offset: Double) -> Double {
        let (lo, hi) = rawRange
        return Swift.max(lo * scale + offset, hi * scale + offset)
    }
}
