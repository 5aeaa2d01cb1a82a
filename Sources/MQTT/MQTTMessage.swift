/// What the client hands to its user: received messages and connection events.

/// A message received on a subscription.
public struct MQTTMessage: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: QoS
    public var retain: Bool
    /// 5.0 properties as received (message expiry, response topic, correlation data, user properties...).
    public var properties: MQTTProperties

    public var payloadString: String { String(decoding: payload, as: UTF8.self) }
}

/// What happens to the connection, for logs and tests.
public enum MQTTEvent: Sendable, Equatable {
    case connected(sessionPresent: Bool, version: MQTTVersion)
    case disconnected(reason: String)
    case reconnecting(attempt: Int, delay: Duration)
    /// The broker closed us because another client took our client id (5.0 reason, or repeated
    /// drops right after connecting on 3.1.1). The client backs off to the maximum delay.
    case sessionTakenOver
    case messagesDropped(total: Int)
}
