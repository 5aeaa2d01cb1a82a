import NIOCore

/// Protocol level: 3.1.1 (4) or 5.0 (5). Passed to the codec; one codec serves both.
public enum MQTTVersion: UInt8, Sendable, CustomStringConvertible {
    case v3_1_1 = 4
    case v5 = 5
    public var description: String { self == .v5 ? "5.0" : "3.1.1" }
}

/// Quality of service.
public enum MQTTQoS: UInt8, Sendable, Comparable, CustomStringConvertible {
    case atMostOnce = 0, atLeastOnce = 1, exactlyOnce = 2
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "QoS \(rawValue)" }
}

/// The last will, published by the broker when the connection drops without DISCONNECT.
public struct MQTTWill: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    public var retain: Bool
    /// 5.0 will properties (delay, expiry, content type, ...).
    public var properties: MQTTProperties

    public init(topic: String, payload: [UInt8], qos: MQTTQoS = .atLeastOnce, retain: Bool = true, properties: MQTTProperties = .init()) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }
}

public struct ConnectPacket: Sendable, Hashable {
    public var clientIdentifier: String
    /// 3.1.1 clean session / 5.0 clean start.
    public var cleanStart: Bool
    /// Seconds; 0 disables keepalive.
    public var keepAlive: UInt16
    public var username: String?
    public var password: [UInt8]?
    public var will: MQTTWill?
    public var properties: MQTTProperties

    public init(clientIdentifier: String, cleanStart: Bool = true, keepAlive: UInt16 = 30, username: String? = nil,
                password: [UInt8]? = nil, will: MQTTWill? = nil, properties: MQTTProperties = .init()) {
        self.clientIdentifier = clientIdentifier
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.username = username
        self.password = password
        self.will = will
        self.properties = properties
    }
}

public struct ConnAckPacket: Sendable, Hashable {
    public var sessionPresent: Bool
    /// 5.0 reason code; 3.1.1 return codes are mapped (see ``MQTTReasonCode``).
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties
    public init(sessionPresent: Bool = false, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = .init()) {
        self.sessionPresent = sessionPresent
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

public struct PublishPacket: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    public var retain: Bool
    public var dup: Bool
    /// Present exactly when qos > 0.
    public var packetIdentifier: UInt16?
    public var properties: MQTTProperties

    public init(topic: String, payload: [UInt8], qos: MQTTQoS = .atMostOnce, retain: Bool = false, dup: Bool = false,
                packetIdentifier: UInt16? = nil, properties: MQTTProperties = .init()) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packetIdentifier = packetIdentifier
        self.properties = properties
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP.
public struct AckPacket: Sendable, Hashable {
    public var packetIdentifier: UInt16
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties
    public init(packetIdentifier: UInt16, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

/// What to do with retained messages when subscribing (5.0).
public enum MQTTRetainHandling: UInt8, Sendable, Hashable {
    case sendOnSubscribe = 0, sendIfNewSubscription = 1, doNotSend = 2
}

/// One topic filter of a SUBSCRIBE with its options.
public struct MQTTSubscription: Sendable, Hashable {
    public var filter: String
    public var qos: MQTTQoS
    public var noLocal: Bool
    public var retainAsPublished: Bool
    public var retainHandling: MQTTRetainHandling

    public init(_ filter: String, qos: MQTTQoS = .atLeastOnce, noLocal: Bool = false, retainAsPublished: Bool = false,
                retainHandling: MQTTRetainHandling = .sendOnSubscribe) {
        self.filter = filter
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.retainHandling = retainHandling
    }
}

public struct SubscribePacket: Sendable, Hashable {
    public var packetIdentifier: UInt16
    public var subscriptions: [MQTTSubscription]
    public var properties: MQTTProperties
    public init(packetIdentifier: UInt16, subscriptions: [MQTTSubscription], properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.subscriptions = subscriptions
        self.properties = properties
    }
}

/// SUBACK and UNSUBACK: one reason code per filter (UNSUBACK on 3.1.1 has none).
public struct SubAckPacket: Sendable, Hashable {
    public var packetIdentifier: UInt16
    public var reasonCodes: [MQTTReasonCode]
    public var properties: MQTTProperties
    public init(packetIdentifier: UInt16, reasonCodes: [MQTTReasonCode], properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.reasonCodes = reasonCodes
        self.properties = properties
    }
}

public struct UnsubscribePacket: Sendable, Hashable {
    public var packetIdentifier: UInt16
    public var filters: [String]
    public var properties: MQTTProperties
    public init(packetIdentifier: UInt16, filters: [String], properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.filters = filters
        self.properties = properties
    }
}

/// DISCONNECT and AUTH.
public struct ReasonPacket: Sendable, Hashable {
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties
    public init(reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = .init()) {
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

/// Every MQTT control packet.
public enum MQTTPacket: Sendable, Hashable {
    case connect(ConnectPacket)
    case connack(ConnAckPacket)
    case publish(PublishPacket)
    case puback(AckPacket)
    case pubrec(AckPacket)
    case pubrel(AckPacket)
    case pubcomp(AckPacket)
    case subscribe(SubscribePacket)
    case suback(SubAckPacket)
    case unsubscribe(UnsubscribePacket)
    case unsuback(SubAckPacket)
    case pingreq
    case pingresp
    case disconnect(ReasonPacket)
    case auth(ReasonPacket)

    public var name: String {
        switch self {
        case .connect: "CONNECT"
        case .connack: "CONNACK"
        case .publish: "PUBLISH"
        case .puback: "PUBACK"
        case .pubrec: "PUBREC"
        case .pubrel: "PUBREL"
        case .pubcomp: "PUBCOMP"
        case .subscribe: "SUBSCRIBE"
        case .suback: "SUBACK"
        case .unsubscribe: "UNSUBSCRIBE"
        case .unsuback: "UNSUBACK"
        case .pingreq: "PINGREQ"
        case .pingresp: "PINGRESP"
        case .disconnect: "DISCONNECT"
        case .auth: "AUTH"
        }
    }
}

/// The head of an incoming PUBLISH that was too large to keep (see
/// ``MQTTPacketCodec/decodePublishHead(from:)``): its body is read past and dropped.
public struct PublishHead: Sendable, Equatable {
    public var topic: String
    public var qos: MQTTQoS
    public var retain: Bool
    public var packetIdentifier: UInt16?
    /// The whole packet, in bytes.
    public var size: Int
}
