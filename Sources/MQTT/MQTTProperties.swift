import NIOCore

/// A user property (5.0): a name/value pair; order and duplicates are kept.
public struct MQTTUserProperty: Sendable, Hashable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// The packets (and the will) that carry properties; each allows its own set (spec 2.2.2.2).
enum PropertyContext: String, Sendable {
    case connect = "CONNECT", connack = "CONNACK", publish = "PUBLISH", will = "will properties"
    case puback = "PUBACK", pubrec = "PUBREC", pubrel = "PUBREL", pubcomp = "PUBCOMP"
    case subscribe = "SUBSCRIBE", suback = "SUBACK", unsubscribe = "UNSUBSCRIBE", unsuback = "UNSUBACK"
    case disconnect = "DISCONNECT", auth = "AUTH"
}

/// MQTT 5.0 properties. Every field is optional; absent means "not sent".
///
/// Stored out of line: the value is one reference, nil when no field is set (most packets), so
/// every packet, the client's queue of waiting messages and each copy of a packet carry 8 bytes
/// instead of the ~250 the fields take inline. The box is immutable (a set makes a new one): no
/// state is shared between copies, so the type stays plainly `Sendable`.
public struct MQTTProperties: Sendable, Hashable {
    /// Every field, inline (what the box holds).
    struct Fields: Sendable, Hashable {
        var payloadFormatIndicator: UInt8?        // 0x01
        var messageExpiryInterval: UInt32?        // 0x02, seconds
        var contentType: String?                  // 0x03
        var responseTopic: String?                // 0x08
        var correlationData: [UInt8]?             // 0x09
        var subscriptionIdentifiers: [Int] = []   // 0x0B
        var sessionExpiryInterval: UInt32?        // 0x11, seconds
        var assignedClientIdentifier: String?     // 0x12
        var serverKeepAlive: UInt16?              // 0x13, seconds
        var authenticationMethod: String?         // 0x15
        var authenticationData: [UInt8]?          // 0x16
        var requestProblemInformation: UInt8?     // 0x17
        var willDelayInterval: UInt32?            // 0x18, seconds
        var requestResponseInformation: UInt8?    // 0x19
        var responseInformation: String?          // 0x1A
        var serverReference: String?              // 0x1C
        var reasonString: String?                 // 0x1F
        var receiveMaximum: UInt16?               // 0x21
        var topicAliasMaximum: UInt16?            // 0x22
        var topicAlias: UInt16?                   // 0x23
        var maximumQoS: UInt8?                    // 0x24
        var retainAvailable: UInt8?               // 0x25
        var userProperties: [MQTTUserProperty] = []   // 0x26
        var maximumPacketSize: UInt32?            // 0x27
        var wildcardSubscriptionAvailable: UInt8? // 0x28
        var subscriptionIdentifierAvailable: UInt8? // 0x29
        var sharedSubscriptionAvailable: UInt8?   // 0x2A
    }

    final class Box: Sendable {
        let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var box: Box?

    var fields: Fields {
        get { box?.fields ?? Fields() }
        set { box = newValue == Fields() ? nil : Box(newValue) }
    }

    init(fields: Fields) { self.fields = fields }

    public static func == (a: MQTTProperties, b: MQTTProperties) -> Bool { a.box === b.box || a.fields == b.fields }
    public func hash(into hasher: inout Hasher) { fields.hash(into: &hasher) }

    public var payloadFormatIndicator: UInt8? { get { box?.fields.payloadFormatIndicator } set { fields.payloadFormatIndicator = newValue } }   // 0x01
    public var messageExpiryInterval: UInt32? { get { box?.fields.messageExpiryInterval } set { fields.messageExpiryInterval = newValue } }   // 0x02, seconds
    public var contentType: String? { get { box?.fields.contentType } set { fields.contentType = newValue } }   // 0x03
    public var responseTopic: String? { get { box?.fields.responseTopic } set { fields.responseTopic = newValue } }   // 0x08
    public var correlationData: [UInt8]? { get { box?.fields.correlationData } set { fields.correlationData = newValue } }   // 0x09
    public var subscriptionIdentifiers: [Int] { get { box?.fields.subscriptionIdentifiers ?? [] } set { fields.subscriptionIdentifiers = newValue } }   // 0x0B
    public var sessionExpiryInterval: UInt32? { get { box?.fields.sessionExpiryInterval } set { fields.sessionExpiryInterval = newValue } }   // 0x11, seconds
    public var assignedClientIdentifier: String? { get { box?.fields.assignedClientIdentifier } set { fields.assignedClientIdentifier = newValue } }   // 0x12
    public var serverKeepAlive: UInt16? { get { box?.fields.serverKeepAlive } set { fields.serverKeepAlive = newValue } }   // 0x13, seconds
    public var authenticationMethod: String? { get { box?.fields.authenticationMethod } set { fields.authenticationMethod = newValue } }   // 0x15
    public var authenticationData: [UInt8]? { get { box?.fields.authenticationData } set { fields.authenticationData = newValue } }   // 0x16
    public var requestProblemInformation: UInt8? { get { box?.fields.requestProblemInformation } set { fields.requestProblemInformation = newValue } }   // 0x17
    public var willDelayInterval: UInt32? { get { box?.fields.willDelayInterval } set { fields.willDelayInterval = newValue } }   // 0x18, seconds
    public var requestResponseInformation: UInt8? { get { box?.fields.requestResponseInformation } set { fields.requestResponseInformation = newValue } }   // 0x19
    public var responseInformation: String? { get { box?.fields.responseInformation } set { fields.responseInformation = newValue } }   // 0x1A
    public var serverReference: String? { get { box?.fields.serverReference } set { fields.serverReference = newValue } }   // 0x1C
    public var reasonString: String? { get { box?.fields.reasonString } set { fields.reasonString = newValue } }   // 0x1F
    public var receiveMaximum: UInt16? { get { box?.fields.receiveMaximum } set { fields.receiveMaximum = newValue } }   // 0x21
    public var topicAliasMaximum: UInt16? { get { box?.fields.topicAliasMaximum } set { fields.topicAliasMaximum = newValue } }   // 0x22
    public var topicAlias: UInt16? { get { box?.fields.topicAlias } set { fields.topicAlias = newValue } }   // 0x23
    public var maximumQoS: UInt8? { get { box?.fields.maximumQoS } set { fields.maximumQoS = newValue } }   // 0x24
    public var retainAvailable: UInt8? { get { box?.fields.retainAvailable } set { fields.retainAvailable = newValue } }   // 0x25
    public var userProperties: [MQTTUserProperty] { get { box?.fields.userProperties ?? [] } set { fields.userProperties = newValue } }   // 0x26
    public var maximumPacketSize: UInt32? { get { box?.fields.maximumPacketSize } set { fields.maximumPacketSize = newValue } }   // 0x27
    public var wildcardSubscriptionAvailable: UInt8? { get { box?.fields.wildcardSubscriptionAvailable } set { fields.wildcardSubscriptionAvailable = newValue } }   // 0x28
    public var subscriptionIdentifierAvailable: UInt8? { get { box?.fields.subscriptionIdentifierAvailable } set { fields.subscriptionIdentifierAvailable = newValue } }   // 0x29
    public var sharedSubscriptionAvailable: UInt8? { get { box?.fields.sharedSubscriptionAvailable } set { fields.sharedSubscriptionAvailable = newValue } }   // 0x2A

    public init() {}

    public var isEmpty: Bool { box == nil }

    static let allowed: [UInt8: Set<PropertyContext>] = [
        0x01: [.publish, .will], 0x02: [.publish, .will], 0x03: [.publish, .will], 0x08: [.publish, .will],
        0x09: [.publish, .will], 0x0B: [.publish, .subscribe], 0x11: [.connect, .connack, .disconnect],
        0x12: [.connack], 0x13: [.connack], 0x15: [.connect, .connack, .auth], 0x16: [.connect, .connack, .auth],
        0x17: [.connect], 0x18: [.will], 0x19: [.connect], 0x1A: [.connack], 0x1C: [.connack, .disconnect],
        0x1F: [.connack, .puback, .pubrec, .pubrel, .pubcomp, .suback, .unsuback, .disconnect, .auth],
        0x21: [.connect, .connack], 0x22: [.connect, .connack], 0x23: [.publish], 0x24: [.connack], 0x25: [.connack],
        0x26: [.connect, .connack, .publish, .will, .puback, .pubrec, .pubrel, .pubcomp, .subscribe, .suback,
               .unsubscribe, .unsuback, .disconnect, .auth],
        0x27: [.connect, .connack], 0x28: [.connack], 0x29: [.connack], 0x2A: [.connack],
    ]

    // MARK: Encode

    /// The encoded property bytes (without the length prefix).
    func encodedBody() -> ByteBuffer {
        box?.fields.encodedBody() ?? ByteBuffer()
    }

    /// Writes length + properties.
    func write(to buffer: inout ByteBuffer) {
        var body = encodedBody()
        buffer.writeMQTTVariableInt(body.readableBytes)
        buffer.writeBuffer(&body)
    }

    /// Size on the wire including the length prefix.
    var encodedSize: Int {
        let n = encodedBody().readableBytes
        return MQTTString.varIntSize(n) + n
    }

    // MARK: Decode

    /// Reads length + properties, checking each against `context`.
    static func read(from buffer: inout ByteBuffer, context: PropertyContext) throws(MQTTPacketError) -> MQTTProperties {
        MQTTProperties(fields: try Fields.read(from: &buffer, context: context))
    }
}

extension MQTTProperties.Fields {
    func encodedBody() -> ByteBuffer {
        var b = ByteBuffer()
        func byte(_ id: UInt8, _ v: UInt8?) { if let v { b.writeInteger(id); b.writeInteger(v) } }
        func u16(_ id: UInt8, _ v: UInt16?) { if let v { b.writeInteger(id); b.writeInteger(v) } }
        func u32(_ id: UInt8, _ v: UInt32?) { if let v { b.writeInteger(id); b.writeInteger(v) } }
        func str(_ id: UInt8, _ v: String?) { if let v { b.writeInteger(id); b.writeMQTTString(v) } }
        func bin(_ id: UInt8, _ v: [UInt8]?) { if let v { b.writeInteger(id); b.writeMQTTBinary(v) } }
        byte(0x01, payloadFormatIndicator)
        u32(0x02, messageExpiryInterval)
        str(0x03, contentType)
        str(0x08, responseTopic)
        bin(0x09, correlationData)
        for id in subscriptionIdentifiers { b.writeInteger(UInt8(0x0B)); b.writeMQTTVariableInt(id) }
        u32(0x11, sessionExpiryInterval)
        str(0x12, assignedClientIdentifier)
        u16(0x13, serverKeepAlive)
        str(0x15, authenticationMethod)
        bin(0x16, authenticationData)
        byte(0x17, requestProblemInformation)
        u32(0x18, willDelayInterval)
        byte(0x19, requestResponseInformation)
        str(0x1A, responseInformation)
        str(0x1C, serverReference)
        str(0x1F, reasonString)
        u16(0x21, receiveMaximum)
        u16(0x22, topicAliasMaximum)
        u16(0x23, topicAlias)
        byte(0x24, maximumQoS)
        byte(0x25, retainAvailable)
        for p in userProperties { b.writeInteger(UInt8(0x26)); b.writeMQTTString(p.name); b.writeMQTTString(p.value) }
        u32(0x27, maximumPacketSize)
        byte(0x28, wildcardSubscriptionAvailable)
        byte(0x29, subscriptionIdentifierAvailable)
        byte(0x2A, sharedSubscriptionAvailable)
        return b
    }


    static func read(from buffer: inout ByteBuffer, context: PropertyContext) throws(MQTTPacketError) -> Self {
        let length = try buffer.readMQTTVariableInt("\(context.rawValue) property length")
        guard length > 0 else { return Self() }   // most packets carry none
        guard var slice = buffer.readSlice(length: length) else { throw .truncated("\(context.rawValue) properties") }
        var p = Self()
        var seen: Set<UInt8> = []
        while slice.readableBytes > 0 {
            let idValue = try slice.readMQTTVariableInt("property identifier")
            guard idValue <= 0x7F else { throw .unknownProperty(UInt8(truncatingIfNeeded: idValue)) }
            let id = UInt8(idValue)
            guard let contexts = MQTTProperties.allowed[id] else { throw .unknownProperty(id) }
            guard contexts.contains(context) else { throw .propertyNotAllowed(property: id, packet: context.rawValue) }
            if id != 0x26 && id != 0x0B || (id == 0x0B && context == .subscribe) {
                guard seen.insert(id).inserted else { throw .duplicateProperty(id) }
            }
            let what = "property 0x\(String(id, radix: 16))"
            func flag() throws(MQTTPacketError) -> UInt8 {
                let v = try slice.readMQTTByte(what)
                guard v <= 1 else { throw .invalidPropertyValue(property: id, detail: "must be 0 or 1, got \(v)") }
                return v
            }
            switch id {
            case 0x01: p.payloadFormatIndicator = try flag()
            case 0x02: p.messageExpiryInterval = try slice.readMQTTUInt32(what)
            case 0x03: p.contentType = try slice.readMQTTString(what)
            case 0x08:
                let t = try slice.readMQTTString(what)
                guard MQTTTopic.isValidName(t) else { throw .invalidTopicName(t) }
                p.responseTopic = t
            case 0x09: p.correlationData = try slice.readMQTTBinary(what)
            case 0x0B:
                let v = try slice.readMQTTVariableInt(what)
                guard v >= 1 else { throw .invalidPropertyValue(property: id, detail: "subscription identifier 0") }
                p.subscriptionIdentifiers.append(v)
            case 0x11: p.sessionExpiryInterval = try slice.readMQTTUInt32(what)
            case 0x12: p.assignedClientIdentifier = try slice.readMQTTString(what)
            case 0x13: p.serverKeepAlive = try slice.readMQTTUInt16(what)
            case 0x15: p.authenticationMethod = try slice.readMQTTString(what)
            case 0x16: p.authenticationData = try slice.readMQTTBinary(what)
            case 0x17: p.requestProblemInformation = try flag()
            case 0x18: p.willDelayInterval = try slice.readMQTTUInt32(what)
            case 0x19: p.requestResponseInformation = try flag()
            case 0x1A: p.responseInformation = try slice.readMQTTString(what)
            case 0x1C: p.serverReference = try slice.readMQTTString(what)
            case 0x1F: p.reasonString = try slice.readMQTTString(what)
            case 0x21:
                let v = try slice.readMQTTUInt16(what)
                guard v > 0 else { throw .invalidPropertyValue(property: id, detail: "receive maximum 0") }
                p.receiveMaximum = v
            case 0x22: p.topicAliasMaximum = try slice.readMQTTUInt16(what)
            case 0x23:
                let v = try slice.readMQTTUInt16(what)
                guard v > 0 else { throw .invalidTopicAlias(0) }
                p.topicAlias = v
            case 0x24: p.maximumQoS = try flag()
            case 0x25: p.retainAvailable = try flag()
            case 0x26:
                let k = try slice.readMQTTString(what), v = try slice.readMQTTString(what)
                p.userProperties.append(MQTTUserProperty(k, v))
            case 0x27:
                let v = try slice.readMQTTUInt32(what)
                guard v > 0 else { throw .invalidPropertyValue(property: id, detail: "maximum packet size 0") }
                p.maximumPacketSize = v
            case 0x28: p.wildcardSubscriptionAvailable = try flag()
            case 0x29: p.subscriptionIdentifierAvailable = try flag()
            case 0x2A: p.sharedSubscriptionAvailable = try flag()
            default: throw .unknownProperty(id)
            }
        }
        return p
    }
}
