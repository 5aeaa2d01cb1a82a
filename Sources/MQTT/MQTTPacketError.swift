/// A malformed or forbidden packet from the peer. The connection is closed when one arrives.
public enum MQTTPacketError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A variable-byte integer longer than 4 bytes or not minimally encoded.
    case malformedVariableByteInteger
    /// The packet is larger than the negotiated maximum packet size.
    case packetTooLarge(size: Int, maximum: Int)
    /// Packet type 0, or AUTH on 3.1.1.
    case invalidPacketType(UInt8)
    /// Fixed-header flag bits that the spec reserves.
    case invalidFlags(packet: String, flags: UInt8)
    /// The packet ended before a field was complete.
    case truncated(String)
    /// Bytes left over after the last field.
    case trailingBytes(packet: String)
    /// A string that is not valid UTF-8, or holds U+0000.
    case invalidUTF8(String)
    /// QoS 3, or a QoS where the spec forbids it.
    case invalidQoS(UInt8)
    /// Packet identifier 0 where one is required.
    case packetIdentifierZero(packet: String)
    /// A PUBLISH topic with `+` or `#`, or an empty topic without an alias.
    case invalidTopicName(String)
    /// A SUBSCRIBE / UNSUBSCRIBE filter that breaks the wildcard rules.
    case invalidTopicFilter(String)
    /// Topic alias 0, above the maximum, or unknown.
    case invalidTopicAlias(UInt16)
    /// A property appears twice where only one is allowed.
    case duplicateProperty(UInt8)
    /// A property that is not allowed in this packet.
    case propertyNotAllowed(property: UInt8, packet: String)
    /// A property identifier that does not exist.
    case unknownProperty(UInt8)
    /// A property whose value is out of range (e.g. receive maximum 0).
    case invalidPropertyValue(property: UInt8, detail: String)
    /// A reason code that is not allowed in this packet.
    case invalidReasonCode(code: UInt8, packet: String)
    /// Any other rule of the spec.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .malformedVariableByteInteger: "malformed variable byte integer"
        case .packetTooLarge(let s, let m): "packet of \(s) bytes exceeds the maximum packet size \(m)"
        case .invalidPacketType(let t): "invalid packet type \(t)"
        case .invalidFlags(let p, let f): "\(p): reserved fixed-header flags 0x\(String(f, radix: 16))"
        case .truncated(let w): "truncated packet: \(w)"
        case .trailingBytes(let p): "\(p): unexpected bytes after the last field"
        case .invalidUTF8(let w): "invalid UTF-8 string in \(w)"
        case .invalidQoS(let q): "invalid QoS \(q)"
        case .packetIdentifierZero(let p): "\(p): packet identifier 0"
        case .invalidTopicName(let t): "invalid topic name '\(t)'"
        case .invalidTopicFilter(let t): "invalid topic filter '\(t)'"
        case .invalidTopicAlias(let a): "invalid topic alias \(a)"
        case .duplicateProperty(let p): "property 0x\(String(p, radix: 16)) appears twice"
        case .propertyNotAllowed(let p, let k): "property 0x\(String(p, radix: 16)) is not allowed in \(k)"
        case .unknownProperty(let p): "unknown property 0x\(String(p, radix: 16))"
        case .invalidPropertyValue(let p, let d): "property 0x\(String(p, radix: 16)): \(d)"
        case .invalidReasonCode(let c, let p): "reason code 0x\(String(c, radix: 16)) is not allowed in \(p)"
        case .protocolViolation(let s): "protocol violation: \(s)"
        }
    }
}
