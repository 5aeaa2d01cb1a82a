import GatewayConfig
import Modbus

extension PointSettings {
    /// The Modbus table.
    public var registerKind: RegisterKind {
        switch table {
        case .coil: .coil
        case .discrete: .discrete
        case .holding: .holding
        case .input: .input
        }
    }

    /// The Modbus data type.
    public var dataType: DataType {
        switch type {
        case .bool: .bool
        case .int16: .int16
        case .uint16: .uint16
        case .int32: .int32
        case .uint32: .uint32
        case .int64: .int64
        case .uint64: .uint64
        case .float32: .float32
        case .float64: .float64
        case .string: .string(registers: length)
        }
    }

    public var registerOrder: RegisterOrder {
        RegisterOrder(word: wordOrderLittle ? .little : .big, byte: byteOrderLittle ? .little : .big)
    }

    public var scaling: Scaling { Scaling(scale: scale, offset: offset) }
}

extension BusSettings {
    /// The Modbus bus configuration.
    public var busConfiguration: BusConfiguration {
        let transport: ModbusTransport
        switch kind {
        case .tcp(let host, let port):
            transport = .tcp(host: host, port: port)
        case .rtu(let path, let baud, let parity, let dataBits, let stopBits):
            transport = .rtu(RTUSettings(path: path, baud: baud, parity: parity, dataBits: dataBits, stopBits: stopBits))
        case .rtuOverTCP(let host, let port):
            transport = .rtuOverTCP(host: host, port: port)
        }
        return BusConfiguration(name: name, transport: transport, responseTimeout: .milliseconds(timeoutMs))
    }

    public var gapPolicy: GapPolicy {
        switch kind {
        case .rtu, .rtuOverTCP: return .rtu  // a serial line, whether behind a device server or not
        case .tcp: return .tcp
        }
    }
}

/// What the gateway will do with a configuration: read plans per device and every topic.
public struct GatewayPlan: Sendable {
    public struct Device: Sendable {
        public var settings: DeviceSettings
        public var bus: BusSettings
        public var readPlan: ReadPlan
    }

    public let configuration: GatewayConfiguration
    public let devices: [Device]
    /// Every topic, named once (built once: the poll path uses it).
    public let topics: TopicLayout

    public init(_ configuration: GatewayConfiguration) {
        self.configuration = configuration
        self.topics = TopicLayout(base: configuration.baseTopic)
        devices = configuration.devices.compactMap { d in
            guard let bus = configuration.buses.first(where: { $0.name == d.bus }) else { return nil }
            let items = d.points.enumerated().map { i, p in
                ReadItem(id: i, kind: p.registerKind, address: p.address, count: p.width)
            }
            return Device(settings: d, bus: bus, readPlan: ReadPlan(items: items, gaps: bus.gapPolicy))
        }
    }

    public var base: String { topics.base }

    /// `<device>/<point>` of every pulse point (the pulse journal's keys).
    public var pulsePoints: [String] {
        devices.flatMap { d in d.settings.points.filter { $0.pulseMs != nil }.map { PulseJournal.key(device: d.settings.name, point: $0.name) } }
    }

    /// Topics the gateway publishes.
    public var publishedTopics: [String] {
        let topics = self.topics
        var t = [topics.status]
        for d in devices {
            t.append(topics.status(d.settings.name))
            for p in d.settings.points {
                t.append(topics.value(device: d.settings.name, point: p.name))
                if p.writable { t.append(topics.setResult(device: d.settings.name, point: p.name)) }
                if p.counter || p.latch { t.append(topics.event(device: d.settings.name, point: p.name)) }
            }
        }
        for d in configuration.serialDevices {
            t.append(topics.status(d.name))
            t += d.points.map { topics.value(device: d.name, point: $0.name) }
            if d.raw { t.append(topics.raw(device: d.name)) }
            t += d.commands.map { topics.setResult(device: d.name, point: $0.name) }
        }
        if devices.contains(where: { $0.settings.points.contains { $0.failsafe != nil } }) { t.append(topics.failsafe) }
        return t
    }

    /// Topics the gateway subscribes to.
    public var subscribedTopics: [String] { topics.commandFilters }

    /// Human-readable plan, as printed by `gateway check`.
    public func describe() -> [String] {
        var out: [String] = []
        let c = configuration
        out.append("gateway \(c.gateway.id): base topic \(base), MQTT \(c.mqtt.url) (protocol \(c.mqtt.protocolVersion == 5 ? "5.0" : "3.1.1"), keepalive \(c.mqtt.keepAlive) s, client id \(c.mqtt.clientID ?? "gateway-\(c.gateway.id)"))")
        out.append("buses:")
        for b in c.buses { out.append("  \(b.name): \(b.busConfiguration.transport), timeout \(b.timeoutMs) ms") }
        out.append("devices:")
        for d in devices {
            out.append("  \(d.settings.name): bus \(d.bus.name), unit \(d.settings.unit), every \(d.settings.pollMs) ms, offline after \(d.settings.offlineAfter) failed polls, \(d.settings.points.count) points\(d.settings.profile.map { " (profile \($0))" } ?? ""), \(d.readPlan.requests.count) requests per poll")
            for r in d.readPlan.requests {
                let names = r.items.map { d.settings.points[$0.id].name }.joined(separator: ", ")
                out.append("    \(r.description): \(names)")
            }
        }
        for d in c.serialDevices {
            var how = "\(d.port) \(d.baud) \(d.dataBits)\(d.parity)\(d.stopBits), framing \(d.framingValue), max frame \(d.maxFrame) bytes"
            if let p = d.poll { how += ", polls \(p.count) bytes every \(d.pollMs) ms" }
            if let i = d.idleTimeoutMs { how += ", offline after \(i) ms without a frame" }
            out.append("  \(d.name): serial \(how), \(d.points.count) points, \(d.commands.count) commands")
            for p in d.points { out.append("    \(p.name): frames matching \(p.match)\(p.group.map { " (group \($0))" } ?? "")") }
            for cmd in d.commands { out.append("    \(cmd.name)/set: sends \(String(decoding: cmd.send, as: UTF8.self).debugDescription)") }
        }
        let pulses = pulsePoints
        if !pulses.isEmpty {
            out.append("pulses: \(pulses.joined(separator: ", ")); journal \(c.gateway.stateDirectory)/pulses (a pulse cut short by a crash is switched off at the next start)")
        }
        if let key = c.gateway.commandKeyFile {
            let open = devices.flatMap { d in d.settings.points.filter { $0.writable && $0.signed == false }.map { "\(d.settings.name)/\($0.name)" } }
                + c.serialDevices.flatMap { d in d.commands.filter { $0.signed == false }.map { "\(d.name)/\($0.name)" } }
            out.append("signed commands: key \(key), ts within \(SignedCommands.maxAgeMs(c.gateway)) ms"
                       + (c.gateway.requireSyncedClock ? ", refused until the system clock is synchronised" : ", judged by the system clock even when it is not synchronised")
                       + "; ids kept in \(c.gateway.stateDirectory)/command-ids; unsigned accepted on: \(open.isEmpty ? "none" : open.joined(separator: ", "))")
        }
        let failsafes = devices.flatMap { d in
            d.settings.points.compactMap { p -> String? in
                guard let v = p.failsafe else { return nil }
                let after = d.settings.failsafeAfterSeconds ?? c.gateway.failsafeAfterSeconds
                return "\(d.settings.name)/\(p.name) = \(v)" + (after.map { " after \($0) s without the broker" } ?? "")
            }
        }
        if !failsafes.isEmpty {
            out.append("fail-safe: \(failsafes.joined(separator: "; "))\(c.gateway.failsafeOnStop ? "; also on a graceful stop" : "")")
        }
        let events = devices.flatMap { d in
            d.settings.points.compactMap { p -> String? in
                if p.counter { return "\(d.settings.name)/\(p.name) (counter)" }
                if p.latch { return "\(d.settings.name)/\(p.name) (latch\(p.latchClear ? ", cleared by the gateway" : ""))" }
                return nil
            }
        }
        if !events.isEmpty { out.append("events: \(events.joined(separator: ", "))") }
        if c.gateway.outboxMaxMB > 0 {
            out.append("outbox: \(c.gateway.stateDirectory)/outbox, at most \(Scaling.format(c.gateway.outboxMaxMB)) MiB, written and synced every \(c.gateway.outboxSyncMs) ms while the broker is away (nothing on disk while it keeps up)")
        } else {
            out.append("outbox: off (while the broker is away, at most 10000 messages wait in memory)")
        }
        out.append("publishes:")
        out += publishedTopics.map { "  \($0)" }
        out.append("subscribes:")
        out += subscribedTopics.map { "  \($0)" }
        return out
    }
}
