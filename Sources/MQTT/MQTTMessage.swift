/// What the client hands to its user: received messages (connection events: ``MQTTEvent``).

/// A message received on a subscription.
public struct MQTTMessage: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    public var retain: Bool
    /// 5.0 properties as received (message expiry, response topic, correlation data, user properties...).
    public var properties: MQTTProperties

    public var payloadString: String { String(decoding: payload, as: UTF8.self) }
}
