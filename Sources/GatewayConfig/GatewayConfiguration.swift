import LineSettings

#if canImport(Glibc)
import Glibc
#endif

// The GatewayConfig module: `gateway.toml` as plain values (this file documents every key, its
// default and its range), read through our TOML reader by ``ConfigLoader``: each settings type
// reads its own table (`Settings+Reading.swift`) through a ``Reader`` that reports every problem
// with its key path and line, and the loader fails once with all of them. No NIO, no libmodbus.

/// `gateway.toml` as plain values. Every key, its default and its range is documented here;
/// ``ConfigLoader`` fills these from the file and validates them.
public struct GatewayConfiguration: Sendable, Equatable {
    public var gateway: GatewaySettings
    public var mqtt: MQTTSettings
    public var buses: [BusSettings]
    public var devices: [DeviceSettings]
    /// `[[device]]` with `driver = "serial"`.
    public var serialDevices: [SerialDeviceSettings] = []
    /// `[http]`: the operations listener (metrics, health, status page).
    public var http = HTTPSettings()
    /// `[homeassistant]`: MQTT discovery for Home Assistant.
    public var homeAssistant = HomeAssistantSettings()
    /// `[[modbus_server]]` (default none): Modbus TCP fronts for the gateway's buses.
    public var modbusServers: [ModbusServerSettings] = []

    /// Keys an earlier release read and this one accepts and ignores, each with its line and
    /// what to do (part of ``warnings``).
    public var retiredKeys: [String] = []

    /// `<base>`: `gateway.base_topic`, else `gateway/<id>`.
    public var baseTopic: String { gateway.baseTopic ?? "gateway/\(gateway.id)" }

    /// Things that work but deserve a word (`gateway check` prints them, `gateway run` logs them
    /// at start): a password file readable by other users; an HTTP listener open to the network
    /// without authentication; a command key file that `gateway run` would refuse; a Modbus front
    /// open to the network with writable ranges.
    public var warnings: [String] {
        var out = retiredKeys
        for (key, file) in [("mqtt.password_file", mqtt.passwordFile), ("http.password_file", http.passwordFile)] {
            var st = stat()
            if let file, stat(file, &st) == 0, st.st_mode & 0o004 != 0 {
                out.append("\(key): '\(file)' is readable by every user (chmod 600 or 640)")
            }
        }
        if let file = gateway.commandKeyFile {
            var st = stat()
            if stat(file, &st) != 0 {
                out.append("gateway.command_key_file: '\(file)' cannot be found (\(String(cString: strerror(errno)))): gateway run will refuse to start")
            } else if st.st_mode & 0o007 != 0 {
                out.append("gateway.command_key_file: '\(file)' is accessible to other users: gateway run will refuse to start (chmod 600 or 640)")
            }
        }
        if let address = http.address, !address.isLoopback, http.username == nil {
            out.append("http.listen: '\(http.listen)' is reachable from the network and has no username/password_file: anyone there can read the status page and metrics")
        }
        // Modbus TCP has no authentication: a front open to the network lends the lines to anyone
        // who reaches it, and its writable ranges with them.
        for (i, front) in modbusServers.enumerated() where !front.listen.isLoopback && !front.writable.isEmpty {
            out.append("modbus_server[\(i)]: listens on \(front.listen.host):\(front.listen.port), reachable from the network, with \(front.writable.count) writable range(s): anyone there can write them (Modbus TCP has no authentication; restrict it with a firewall, or listen on 127.0.0.1)")
        }
        return out
    }
}

/// `[http]`: one HTTP/1.1 listener for operators: `/metrics` (Prometheus), `/healthz`, the
/// status page `/` and its JSON `/api/status`. Read-only.
public struct HTTPSettings: Sendable, Equatable {
    /// `listen` (default `127.0.0.1:9108`; `""` turns the listener off): `host:port`, an IPv6
    /// host in brackets (`[::1]:9108`).
    public var listen = "127.0.0.1:9108"
    /// `listen` parsed; nil when the listener is off.
    public var address: ListenAddress? = ListenAddress(host: "127.0.0.1", port: 9108)
    /// `username` and `password_file` (together): HTTP basic authentication on every path.
    public var username: String?
    public var passwordFile: String?
    public init() {}
}

/// `[homeassistant]`: Home Assistant MQTT discovery (device-based, Home Assistant 2024.11 and later).
public struct HomeAssistantSettings: Sendable, Equatable {
    /// `enabled` (default true): false publishes nothing under the prefix.
    public var enabled = true
    /// `prefix` (default `homeassistant`, topic-safe words separated by `/`): the discovery
    /// prefix.
    public var prefix = "homeassistant"
    /// `birth_topic` (default `homeassistant/status`, whatever the prefix): where Home Assistant
    /// says `online` after a restart (its MQTT integration's birth message).
    public var birthTopic = "homeassistant/status"
    public init() {}
}

/// A point's `ha = { ... }` table: how Home Assistant shows it, over the defaults.
public struct HomeAssistantPoint: Sendable, Equatable {
    /// `component`: binary_sensor, sensor, switch, button, number, select, lock (default: from
    /// the point's table, type, `writable`, `pulse_ms` and `map`).
    public var component: String?
    /// `device_class` (e.g. `door`, `temperature`), `state_class` (`measurement`,
    /// `total_increasing`), `icon` (`mdi:...`): passed to Home Assistant as they are.
    public var deviceClass: String?
    public var stateClass: String?
    public var icon: String?
    /// For `component = "lock"`: the point whose value tells the state (default: this point),
    /// and that point's values meaning locked and unlocked (default `false` and `true`).
    public var statePoint: String?
    public var stateLocked: String?
    public var stateUnlocked: String?
    public init() {}

    /// The components `component` may name.
    public static let components: Set<String> = ["binary_sensor", "sensor", "switch", "button", "number", "select", "lock"]
}

/// `host:port` to listen on.
public struct ListenAddress: Sendable, Equatable {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// 127.0.0.0/8, ::1 or localhost: reachable from this machine only.
    public var isLoopback: Bool { host == "localhost" || host == "::1" || host.hasPrefix("127.") }

    /// The address of `text` (`host:port`, `[v6]:port`), or why it is not one.
    public static func parse(_ text: String) -> Result<ListenAddress, BrokerAddressError> {
        var host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(BrokerAddressError("'\(text)' must look like [v6-address]:port"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return .failure(BrokerAddressError("'\(text)' must look like host:port (\"\" turns the listener off)")) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { return .failure(BrokerAddressError("'\(text)' has no host (127.0.0.1 for this machine only, 0.0.0.0 for every interface)")) }
        guard let port = Int(portText), (1...65_535).contains(port) else { return .failure(BrokerAddressError("'\(text)': the port must be 1...65535")) }
        return .success(ListenAddress(host: String(host), port: port))
    }
}

public enum ValueFormat: String, Sendable, Equatable, CaseIterable {
    case plain, json
}

/// A value written in `gateway.toml` that a command could carry: `failsafe = true`, `= 0`, `= "free"`.
public enum ConfigScalar: Sendable, Equatable, CustomStringConvertible {
    case bool(Bool)
    /// A number as written (an integer, or a float in Swift's shortest form).
    case number(String)
    case text(String)

    public var description: String {
        switch self {
        case .bool(let b): b ? "true" : "false"
        case .number(let s): s
        case .text(let s): s
        }
    }
}

/// `[gateway]`
public struct GatewaySettings: Sendable, Equatable {
    /// `id` (required, topic-safe): base topic `gateway/<id>`, default client id `gateway-<id>`.
    public var id: String
    /// `base_topic` (default `gateway/<id>`).
    public var baseTopic: String?
    /// `format` (default `plain`): value payloads, `plain` or `json`.
    public var format: ValueFormat = .plain
    /// `retain` (default true): value topics retained.
    public var retain = true
    /// `refresh_s` (default 300, 0 = never): republish unchanged values this often.
    public var refreshSeconds = 300
    /// `command_max_age_ms` (default off; 30000 when commands are signed): refuse JSON commands
    /// whose `ts` is older (signed commands: further from now either way).
    public var commandMaxAgeMs: Int?
    /// `command_key_file` (default none): the HMAC-SHA256 key for signed commands (its first
    /// line, at least 16 bytes; the file must not be readable by other users). With it, every
    /// command must be signed, except on points and serial commands with `signed = false`.
    public var commandKeyFile: String?
    /// `failsafe_after_s` (default none, 1...86400): after the broker has been unreachable this
    /// long, points with a `failsafe` value get it written once (a device can override it).
    public var failsafeAfterSeconds: Int?
    /// `failsafe_on_stop` (default false): also write the `failsafe` values on a graceful stop.
    public var failsafeOnStop = false
    /// `outbox_max_mb` (default 64, 0 = no outbox): the most the outbox (`<state_dir>/outbox`)
    /// holds while the broker is away; when full, the oldest messages go (superseded values first).
    public var outboxMaxMB = 64.0
    /// `outbox_sync_ms` (default 1000, 10...60000): messages waiting for the broker are written to
    /// the outbox this often; a crash or power cut loses at most this interval.
    public var outboxSyncMs = 1000
    /// `require_synced_clock` (default true): refuse signed commands, and JSON commands judged
    /// by `command_max_age_ms`, until the system clock is synchronised (NTP). A site without
    /// any time source sets it to false and accepts that a restarted gateway judges `ts` by
    /// whatever clock it booted with.
    public var requireSyncedClock = true
    /// The longest `command_max_age_ms` with `command_key_file`: the window in which the ids of
    /// signed commands are remembered (10,000 of them: 33 commands a second for 5 minutes).
    public static let maxSignedWindowMs = 300_000
    /// `state_dir` (default `/var/lib/gateway`): where the pulse journal (`pulses`) is kept, so
    /// that a pulse cut short by a crash is switched off at the next start. Not created by the
    /// gateway; when it is missing or not writable the gateway says so once and runs without.
    public var stateDirectory = "/var/lib/gateway"
}

/// Where the broker is: `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883, TLS); an
/// IPv6 host goes in brackets. Parsed once, by the config loader, so that `gateway check` and
/// `gateway run` take and refuse exactly the same URLs.
public struct BrokerAddress: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var tls: Bool

    public init(host: String, port: Int, tls: Bool) {
        self.host = host
        self.port = port
        self.tls = tls
    }

    /// The address of `url`, or why it is not one.
    public static func parse(_ url: String) -> Result<BrokerAddress, BrokerAddressError> {
        let tls: Bool
        var rest: Substring
        if url.hasPrefix("mqtt://") { tls = false; rest = url.dropFirst(7) }
        else if url.hasPrefix("mqtts://") { tls = true; rest = url.dropFirst(8) }
        else { return .failure(BrokerAddressError("'\(url)' must look like mqtt://host[:port] or mqtts://host[:port]")) }
        if let slash = rest.firstIndex(of: "/") {
            guard rest[slash...].allSatisfy({ $0 == "/" }) else { return .failure(BrokerAddressError("'\(url)': a broker URL has no path")) }
            rest = rest[..<slash]
        }
        var host = rest, port = tls ? 8883 : 1883
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return .failure(BrokerAddressError("'\(url)': missing ']' after the IPv6 address")) }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { return .failure(BrokerAddressError("'\(url)': unexpected '\(after)'")) }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        }
        if let portText {
            guard let p = Int(portText), (1...65_535).contains(p) else { return .failure(BrokerAddressError("'\(url)': the port must be 1...65535")) }
            port = p
        }
        guard !host.isEmpty else { return .failure(BrokerAddressError("'\(url)' has no host")) }
        return .success(BrokerAddress(host: String(host), port: port, tls: tls))
    }
}

public struct BrokerAddressError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// `[mqtt]`
public struct MQTTSettings: Sendable, Equatable {
    /// `url` (default `mqtt://127.0.0.1:1883`; `mqtts://` for TLS), as written; a list (the
    /// nodes of a broker cluster, tried in turn) is kept joined by ", ".
    public var url = "mqtt://127.0.0.1:1883"
    /// `url`, parsed (the first of a list).
    public var broker = BrokerAddress(host: "127.0.0.1", port: 1883, tls: false)
    /// The other nodes of a `url` list, in order (all with the first one's scheme).
    public var alternates: [BrokerAddress] = []
    /// `client_id` (default `gateway-<id>`).
    public var clientID: String?
    /// `protocol` (default 5): 5, or 3 for 3.1.1. 5 falls back to 3.1.1 when refused.
    public var protocolVersion = 5
    /// `keepalive` (default 30 s, 1...65535; 0, which turns it off, is refused).
    public var keepAlive = 30
    /// `username` (default none).
    public var username: String?
    /// `password_file` (default none); else env `GATEWAY_MQTT_PASSWORD`. Never in the file itself.
    public var passwordFile: String?
    /// `clean_session` (default true): the broker queues no commands while the gateway is away.
    public var cleanSession = true
    /// `[mqtt.tls]` `ca_file`, `cert_file`, `key_file` (default: system CAs, no client certificate).
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?
}

/// `[[bus]]`
public struct BusSettings: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// `type = "tcp"`: `host` (required), `port` (default 502).
        case tcp(host: String, port: Int)
        /// `type = "rtu"`: `port` (serial path, required), `baud` (19200), `parity` (N|E|O), `data_bits` (8), `stop_bits` (1).
        case rtu(path: String, baud: Int, parity: Parity, dataBits: Int, stopBits: Int)
        /// `type = "rtu-tcp"`: RTU frames over TCP to a serial device server (`host`, `port`).
        case rtuOverTCP(host: String, port: Int)
    }
    /// `name` (required, topic-safe, unique).
    public var name: String
    public var kind: Kind
    /// `timeout_ms` (default 1000, 10...60000): response timeout per transaction.
    public var timeoutMs = 1000
}

/// `[[device]]`
public struct DeviceSettings: Sendable, Equatable {
    /// `name` (required, topic-safe, unique).
    public var name: String
    /// `bus` (required): a `[[bus]]` name.
    public var bus: String
    /// `unit` (default 1): Modbus unit id, 0...255 on TCP, 1...247 on RTU.
    public var unit = 1
    /// `poll_ms` (default 1000, 10...86400000).
    public var pollMs = 1000
    /// `offline_after` (default 3, >= 1): consecutive failed polls before `offline`.
    public var offlineAfter = 3
    /// `offline_poll_ms` (default 30000, 10...86400000): an offline device is probed after its
    /// `poll_ms`, then after twice that, doubling up to this cap; back to `poll_ms` once it answers.
    public var offlinePollMs = 30_000
    /// `write_multiple` (default false): write with FC 15/16 even for one coil or register
    /// (devices without FC 5/6).
    public var writeMultiple = false
    /// `manufacturer`, `model` (default none): shown on the device's page in Home Assistant.
    public var manufacturer: String?
    public var model: String?
    /// `failsafe_after_s` (default: the gateway's): see ``GatewaySettings/failsafeAfterSeconds``.
    public var failsafeAfterSeconds: Int?
    /// `profile` (default none): the profile the points came from (see ``ProfileLibrary``);
    /// `points` holds them expanded.
    public var profile: String?
    public var points: [PointSettings] = []
}

public enum RegisterTable: String, Sendable, Equatable, CaseIterable {
    case coil, discrete, holding, input
    public var isBit: Bool { self == .coil || self == .discrete }
    public var isWritable: Bool { self == .coil || self == .holding }
}

public enum PointType: String, Sendable, Equatable, CaseIterable {
    case bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, string

    /// Registers taken on a register table.
    public func registerCount(length: Int) -> Int {
        switch self {
        case .bool, .int16, .uint16: 1
        case .int32, .uint32, .float32: 2
        case .int64, .uint64, .float64: 4
        case .string: length
        }
    }
}

/// An optional setting that few values carry, stored out of line: 8 bytes in its owner while
/// absent (a pointer) instead of the value's whole size. For the settings every point of every
/// device holds while the gateway runs (README "Footprint": the points were the largest part of a
/// device's own memory). Changing it makes a new box: a copy of the owner never sees the change.
@propertyWrapper
public struct OutOfLine<Wrapped: Sendable & Equatable>: Sendable, Equatable {
    private final class Box: Sendable {
        let value: Wrapped
        init(_ value: Wrapped) { self.value = value }
    }
    private var box: Box?

    public init(wrappedValue: Wrapped?) {
        box = wrappedValue.map(Box.init)
    }

    public var wrappedValue: Wrapped? {
        get { box?.value }
        set { box = newValue.map(Box.init) }
    }

    public static func == (a: Self, b: Self) -> Bool { a.box?.value == b.box?.value }
}

/// `[[device.point]]`
public struct PointSettings: Sendable, Equatable {
    // Stored in an order that leaves no padding between the one-byte fields (200 -> 160 bytes
    // a point; a device keeps its points for as long as the gateway runs).
    /// `name` (required, topic-safe, unique in the device).
    public var name: String
    /// `address` (required, 0...65535).
    public var address: Int
    /// `length` (strings: registers, default 1).
    public var length = 1
    /// `scale` (default 1, not 0) and `offset` (default 0): value = raw * scale + offset.
    public var scale = 1.0
    public var offset = 0.0
    /// `deadband` (default 0): publish only when the value moves at least this much.
    public var deadband = 0.0
    /// `unit` (default none): shown in JSON payloads.
    public var unit: String?
    /// `map` (default none): raw integer -> name, e.g. `{ "0" = "closed", "1" = "open" }`.
    public var map: [Int64: String] = [:]
    /// `ha` (default none): Home Assistant overrides (see ``HomeAssistantPoint``). Kept out of
    /// line: seven strings that most points leave out would be 112 bytes in every point.
    @OutOfLine public var ha: HomeAssistantPoint? = nil
    /// `failsafe` (default none; writable points): the value written once when the broker has been
    /// away `failsafe_after_s` (and on a graceful stop with `failsafe_on_stop`).
    @OutOfLine public var failsafe: ConfigScalar? = nil
    /// `bit` (registers, bool only): 0...15, one bit of the register.
    public var bit: Int?
    /// `register` (required): coil | discrete | holding | input.
    public var table: RegisterTable
    /// `type` (default `bool` on coil/discrete, `uint16` on registers).
    public var type: PointType
    /// `word_order` / `byte_order` (default big): `big` | `little`.
    public var wordOrderLittle = false
    public var byteOrderLittle = false
    /// `writable` (default false; coil and holding only).
    public var writable = false
    /// `format` / `retain` (default: the gateway's).
    public var format: ValueFormat?
    public var retain: Bool?
    /// `min` / `max` (default none): numeric write limits.
    public var min: Double?
    /// `signed` (default: true when `[gateway] command_key_file` is set): commands to this point
    /// must be signed. `signed = true` needs the key file; `signed = false` exempts the point.
    public var signed: Bool?
    /// `secret` (default false; writable points): its commands' values (a keypad PIN) are never
    /// shown on the status page or in the log.
    public var secret = false
    /// `counter` (default false; uint16 or uint32, no scale or offset): a passage counter. Each
    /// poll that sees it grow also publishes `<point>/event` with the increment (wrap-around
    /// counted, a decrease that is no wrap is a device reset).
    public var counter = false
    /// `latch` (default false; bool points): a flag the device holds until cleared ("door
    /// forced"). When a poll sees it set, `<point>/event` is published and the gateway clears it
    /// (writes false), so the next occurrence is seen too.
    public var latch = false
    /// `latch_clear` (default true with `latch`; coil or holding): false leaves clearing to others.
    public var latchClear = true
    /// `max`: see `min`.
    public var max: Double?
    /// `pulse_ms` (default none, writable only, 10...3600000): momentary: after a command that
    /// switches it on, write it back off (coil off, register 0) after this long. A command during
    /// the pulse extends it; a command to switch it off ends it at once.
    public var pulseMs: Int?

    public init(name: String, table: RegisterTable, address: Int, type: PointType) {
        self.name = name
        self.table = table
        self.address = address
        self.type = type
    }

    /// Registers (or bits) this point reads.
    public var width: Int { table.isBit ? 1 : type.registerCount(length: length) }
}

/// `[[device]]` with `driver = "serial"`: a raw serial line device (QR/RFID readers, ASCII or
/// STX/ETX protocols). Strings that hold bytes (`delimiter`, `start`, `poll`, `send`) accept the
/// escapes `\xHH \r \n \t \0 \\` (write `\x..` in TOML literal strings: `'\x02'`).
public struct SerialDeviceSettings: Sendable, Equatable {
    public enum FramingKind: String, Sendable, Equatable, CaseIterable {
        case line, delimiter, fixed
    }

    /// `name` (required, topic-safe, unique among all devices).
    public var name: String
    /// `port` (required): the tty path, e.g. `/dev/ttyUSB0` or `/dev/serial/by-id/...`.
    public var port: String
    /// `baud` (default 9600; 1200...921600), `parity` (N|E|O), `data_bits` (8), `stop_bits` (1),
    /// `rtscts` (default false: no flow control).
    public var baud = 9600
    public var parity = Parity.none
    public var dataBits = 8
    public var stopBits = 1
    public var rtscts = false
    /// `framing` (default `line`): `line` (LF or CRLF), `delimiter` (needs `delimiter`, optional
    /// `start`), `fixed` (needs `length`).
    public var framing: FramingKind = .line
    public var delimiter: [UInt8] = []
    public var start: [UInt8]?
    public var length = 0
    /// `max_frame` (default 1024, 1...65536): longer frames are dropped and counted.
    public var maxFrame = 1024
    /// `raw` (default false): publish frames no point matches to `<base>/<device>/raw`.
    public var raw = false
    /// `idle_timeout_ms` (default off): `offline` when no frame arrives for this long.
    public var idleTimeoutMs: Int?
    /// `poll` (default none): bytes sent every `poll_ms` for devices that must be asked; the reply
    /// is awaited for `response_timeout_ms` (default 500); `offline_after` (3) missed replies.
    public var poll: [UInt8]?
    public var pollMs = 1000
    public var responseTimeoutMs = 500
    public var offlineAfter = 3
    public var points: [SerialPointSettings] = []
    public var commands: [SerialCommandSettings] = []
    /// `manufacturer`, `model` (default none): shown on the device's page in Home Assistant.
    public var manufacturer: String?
    public var model: String?

    public init(name: String, port: String) {
        self.name = name
        self.port = port
    }
}

/// `[[device.point]]` of a serial device.
public struct SerialPointSettings: Sendable, Equatable {
    /// `name` (required, topic-safe, unique in the device).
    public var name: String
    /// `match` (required): a regular expression tried on every frame (as text).
    public var match: String
    /// `group` (default: the first capture group, or the whole match without groups): a group
    /// number or name as a string (`"2"`, `"code"`), so that named groups of one regex can feed several points.
    public var group: String?
    /// `format` / `retain` (default: the gateway's).
    public var format: ValueFormat?
    public var retain: Bool?

    public init(name: String, match: String) {
        self.name = name
        self.match = match
    }
}

/// `[[device.command]]` of a serial device: `<base>/<device>/<name>/set` sends `send` with
/// `{value}` replaced by the command's value.
public struct SerialCommandSettings: Sendable, Equatable {
    /// `name` (required, topic-safe, unique among the device's points and commands).
    public var name: String
    /// `send` (required): the bytes to send, a template with `{value}`.
    public var send: [UInt8]
    /// `pattern` (default: printable text up to `max_length`): a regex the whole value must match.
    public var pattern: String?
    /// `max_length` (default 64, 1...1024): longest value accepted.
    public var maxLength = 64
    /// `signed` (default: true when `[gateway] command_key_file` is set): see ``PointSettings/signed``.
    public var signed: Bool?
    /// `secret` (default false): see ``PointSettings/secret``.
    public var secret = false

    public init(name: String, send: [UInt8]) {
        self.name = name
        self.send = send
    }

    /// True when the template uses the value.
    public var takesValue: Bool { send.firstRange(of: Array("{value}".utf8)) != nil }
}
