/// TLS settings for `mqtts://`.
public struct MQTTTLSOptions: Sendable, Hashable {
    /// PEM file of the CA(s) to trust; nil trusts the system's CAs.
    public var caFile: String?
    /// PEM client certificate (mutual TLS).
    public var certificateFile: String?
    /// PEM private key of the client certificate.
    public var keyFile: String?
    /// Check that the server certificate names the host (default on).
    public var verifyHostname: Bool

    public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil, verifyHostname: Bool = true) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.verifyHostname = verifyHostname
    }
}

/// Exponential backoff with jitter and a cap, for reconnects.
public struct MQTTReconnectPolicy: Sendable, Hashable {
    /// First delay (default 0.5 s).
    public var initialDelay: Duration
    /// Longest delay (default 30 s).
    public var maximumDelay: Duration
    /// Growth per failed attempt (default 2).
    public var multiplier: Double
    /// Fraction of each delay that is random (default 0.5: delay in [d/2, d]).
    public var jitter: Double

    public init(initialDelay: Duration = .milliseconds(500), maximumDelay: Duration = .seconds(30), multiplier: Double = 2, jitter: Double = 0.5) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
    }

    public static let `default` = MQTTReconnectPolicy()
}

/// One node of a broker (cluster): where ``MQTTConfiguration/alternates`` point.
public struct MQTTServer: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Everything the client needs to connect. Defaults suit a gateway: clean session, keepalive 30 s,
/// MQTT 5 with fallback to 3.1.1, reconnect forever.
public struct MQTTConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Further nodes of the same broker cluster, tried in turn after `host`/`port`: a connection
    /// lost, or an attempt failed, moves the client on to the next (the same TLS settings).
    public var alternates: [MQTTServer] = []
    /// Non-nil for TLS (`mqtts://`).
    public var tls: MQTTTLSOptions?
    public var version: MQTTVersion
    /// With `version == .v5`, retry with 3.1.1 when the broker refuses 5.0.
    public var fallbackToV3: Bool
    public var clientIdentifier: String
    /// 3.1.1 clean session / 5.0 clean start (default true).
    public var cleanStart: Bool
    /// 5.0 session expiry in seconds (0: the session ends with the connection).
    public var sessionExpiry: UInt32
    /// Keepalive in seconds (default 30; 0 disables).
    public var keepAlive: UInt16
    public var username: String?
    public var password: [UInt8]?
    public var will: MQTTWill?
    /// Time allowed for TCP + TLS + CONNACK (default 10 s).
    public var connectTimeout: Duration
    /// nil: no automatic reconnect.
    public var reconnect: MQTTReconnectPolicy?
    /// Messages kept while disconnected or waiting for an in-flight slot (default 10,000; oldest dropped).
    public var queueLimit: Int
    /// Received messages waiting for the reader of ``MQTTClient/messages`` (default 10,000); past
    /// that, newer ones are dropped, counted and logged: a flood cannot grow memory without bound.
    public var incomingLimit: Int
    /// Called with the time from a QoS 1/2 PUBLISH to its PUBACK/PUBCOMP (on the client's
    /// executor: keep it short). Nil: nothing is measured.
    public var onAcknowledged: (@Sendable (Duration) -> Void)? = nil
    /// Most unacknowledged QoS 1/2 publishes at once (further bounded by the broker's receive maximum).
    public var maximumInFlight: Int
    /// Largest packet we accept (default 1 MiB), announced to 5.0 brokers.
    public var maximumPacketSize: Int
    /// Topic aliases we accept from the broker (5.0; default 16).
    public var topicAliasMaximum: UInt16
    /// How many QoS 1/2 messages the broker may send us unacknowledged (5.0 receive maximum; default 64).
    public var receiveMaximum: UInt16
    /// User properties sent in CONNECT (5.0).
    public var connectUserProperties: [MQTTUserProperty]

    public init(host: String = "127.0.0.1", port: Int = 1883, tls: MQTTTLSOptions? = nil, version: MQTTVersion = .v5,
                clientIdentifier: String) {
        self.host = host
        self.port = port
        self.tls = tls
        self.version = version
        self.fallbackToV3 = true
        self.clientIdentifier = clientIdentifier
        self.cleanStart = true
        self.sessionExpiry = 0
        self.keepAlive = 30
        self.connectTimeout = .seconds(10)
        self.reconnect = .default
        self.queueLimit = 10_000
        self.incomingLimit = 10_000
        self.maximumInFlight = 100
        self.maximumPacketSize = 1 << 20
        self.topicAliasMaximum = 16
        self.receiveMaximum = 64
        self.connectUserProperties = []
    }

    /// Parses `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883); IPv6 as `[::1]`.
    public init(url: String, clientIdentifier: String) throws(MQTTError) {
        let tls: Bool
        var rest: Substring
        if url.hasPrefix("mqtt://") { tls = false; rest = url.dropFirst(7) }
        else if url.hasPrefix("mqtts://") { tls = true; rest = url.dropFirst(8) }
        else if url.hasPrefix("tcp://") { tls = false; rest = url.dropFirst(6) }
        else if url.hasPrefix("ssl://") { tls = true; rest = url.dropFirst(6) }
        else { throw .invalidArgument("URL '\(url)' must start with mqtt:// or mqtts://") }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        var host: Substring, port = tls ? 8883 : 1883
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw .invalidArgument("URL '\(url)': missing ']'") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { throw .invalidArgument("URL '\(url)': bad port") }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { throw .invalidArgument("URL '\(url)': bad port") }
            port = p
        } else {
            host = rest
        }
        guard !host.isEmpty else { throw .invalidArgument("URL '\(url)' has no host") }
        self.init(host: String(host), port: port, tls: tls ? MQTTTLSOptions() : nil, clientIdentifier: clientIdentifier)
    }
}
