import NIOCore

/// Encodes and decodes MQTT control packets for 3.1.1 and 5.0 (the version is passed in).
///
/// Decoding is single-step and rewinds on a short read: ``decode(from:version:maximumPacketSize:)``
/// returns nil and leaves the buffer untouched until a whole packet is there. Malformed input
/// throws ``MQTTPacketError``; no length from the wire is used before it is checked against the
/// bytes present and the maximum packet size.
public enum MQTTPacketCodec {
    // MARK: - Encode

    /// Appends `packet` to `buffer`.
    public static func encode(_ packet: MQTTPacket, version: MQTTVersion, into buffer: inout ByteBuffer) {
        var body = ByteBuffer()
        let v5 = version == .v5
        let first: UInt8
        switch packet {
        case .connect(let c):
            first = 0x10
            body.writeMQTTString("MQTT")
            body.writeInteger(version.rawValue)
            var flags: UInt8 = c.cleanStart ? 0x02 : 0
            if let w = c.will { flags |= 0x04 | (w.qos.rawValue << 3) | (w.retain ? 0x20 : 0) }
            if c.username != nil { flags |= 0x80 }
            if c.password != nil { flags |= 0x40 }
            body.writeInteger(flags)
            body.writeInteger(c.keepAlive)
            if v5 { c.properties.write(to: &body) }
            body.writeMQTTString(c.clientIdentifier)
            if let w = c.will {
                if v5 { w.properties.write(to: &body) }
                body.writeMQTTString(w.topic)
                body.writeMQTTBinary(w.payload)
            }
            if let u = c.username { body.writeMQTTString(u) }
            if let p = c.password { body.writeMQTTBinary(p) }
        case .connack(let c):
            first = 0x20
            body.writeInteger(UInt8(c.sessionPresent ? 1 : 0))
            if v5 {
                body.writeInteger(c.reasonCode.rawValue)
                c.properties.write(to: &body)
            } else {
                body.writeInteger(v3ReturnCode(c.reasonCode))
            }
        case .publish(let p):
            first = 0x30 | (p.dup ? 0x08 : 0) | (p.qos.rawValue << 1) | (p.retain ? 0x01 : 0)
            body.writeMQTTString(p.topic)
            if p.qos != .atMostOnce { body.writeInteger(p.packetIdentifier ?? 0) }
            if v5 { p.properties.write(to: &body) }
            body.writeBytes(p.payload)
        case .puback(let a): first = 0x40; writeAck(a, v5: v5, into: &body)
        case .pubrec(let a): first = 0x50; writeAck(a, v5: v5, into: &body)
        case .pubrel(let a): first = 0x62; writeAck(a, v5: v5, into: &body)
        case .pubcomp(let a): first = 0x70; writeAck(a, v5: v5, into: &body)
        case .subscribe(let s):
            first = 0x82
            body.writeInteger(s.packetIdentifier)
            if v5 { s.properties.write(to: &body) }
            for sub in s.subscriptions {
                body.writeMQTTString(sub.filter)
                var options = sub.qos.rawValue
                if v5 {
                    options |= (sub.noLocal ? 0x04 : 0) | (sub.retainAsPublished ? 0x08 : 0) | (sub.retainHandling.rawValue << 4)
                }
                body.writeInteger(options)
            }
        case .suback(let s):
            first = 0x90
            body.writeInteger(s.packetIdentifier)
            if v5 { s.properties.write(to: &body) }
            for code in s.reasonCodes { body.writeInteger(v5 ? code.rawValue : (code.isFailure ? 0x80 : code.rawValue)) }
        case .unsubscribe(let u):
            first = 0xA2
            body.writeInteger(u.packetIdentifier)
            if v5 { u.properties.write(to: &body) }
            for f in u.filters { body.writeMQTTString(f) }
        case .unsuback(let u):
            first = 0xB0
            body.writeInteger(u.packetIdentifier)
            if v5 {
                u.properties.write(to: &body)
                for code in u.reasonCodes { body.writeInteger(code.rawValue) }
            }
        case .pingreq: first = 0xC0
        case .pingresp: first = 0xD0
        case .disconnect(let d):
            first = 0xE0
            if v5 && (d.reasonCode != .success || !d.properties.isEmpty) {
                body.writeInteger(d.reasonCode.rawValue)
                if !d.properties.isEmpty { d.properties.write(to: &body) }
            }
        case .auth(let a):
            first = 0xF0
            if a.reasonCode != .success || !a.properties.isEmpty {
                body.writeInteger(a.reasonCode.rawValue)
                if !a.properties.isEmpty { a.properties.write(to: &body) }
            }
        }
        buffer.writeInteger(first)
        buffer.writeMQTTVariableInt(body.readableBytes)
        buffer.writeBuffer(&body)
    }

    /// Size of `packet` on the wire.
    public static func encodedSize(_ packet: MQTTPacket, version: MQTTVersion) -> Int {
        var b = ByteBuffer()
        encode(packet, version: version, into: &b)
        return b.readableBytes
    }

    private static func writeAck(_ a: AckPacket, v5: Bool, into body: inout ByteBuffer) {
        body.writeInteger(a.packetIdentifier)
        guard v5, a.reasonCode != .success || !a.properties.isEmpty else { return }
        body.writeInteger(a.reasonCode.rawValue)
        if !a.properties.isEmpty { a.properties.write(to: &body) }
    }

    private static func v3ReturnCode(_ r: MQTTReasonCode) -> UInt8 {
        switch r {
        case .success: 0
        case .unsupportedProtocolVersion: 1
        case .clientIdentifierNotValid: 2
        case .serverUnavailable: 3
        case .badUserNameOrPassword: 4
        case .notAuthorized: 5
        default: r.rawValue <= 5 ? r.rawValue : 3
        }
    }

    // MARK: - Decode

    /// Decodes one packet from the front of `buffer`, or returns nil (buffer untouched) when it is
    /// not complete yet. `maximumPacketSize` bounds the whole packet (fixed header included).
    public static func decode(from buffer: inout ByteBuffer, version: MQTTVersion,
                              maximumPacketSize: Int = MQTTLimits.maxVariableInt + 5) throws(MQTTPacketError) -> MQTTPacket? {
        var peek = buffer
        guard let first: UInt8 = peek.readInteger() else { return nil }
        let type = first >> 4, flags = first & 0x0F
        // Check the type and flags before waiting for the body: garbage is refused at once.
        try checkFixedHeader(type: type, flags: flags, version: version)
        guard let length = try peek.readMQTTVariableIntIfComplete() else { return nil }
        let total = 1 + MQTTString.varIntSize(length) + length
        guard total <= maximumPacketSize else { throw .packetTooLarge(size: total, maximum: maximumPacketSize) }
        guard var body = peek.readSlice(length: length) else { return nil }
        let packet = try decodeBody(type: type, flags: flags, body: &body, version: version)
        guard body.readableBytes == 0 else { throw .trailingBytes(packet: packet.name) }
        buffer = peek
        return packet
    }

    /// The head of a PUBLISH at the front of `buffer` (which is left untouched): enough to
    /// acknowledge and report a message that is too large to be kept, while its body is read past.
    /// nil until the topic and packet id have arrived, or when the front is not a PUBLISH.
    public static func decodePublishHead(from buffer: ByteBuffer) throws(MQTTPacketError) -> PublishHead? {
        var peek = buffer
        guard let first: UInt8 = peek.readInteger(), first >> 4 == 3 else { return nil }
        guard let length = try peek.readMQTTVariableIntIfComplete() else { return nil }
        let qos = MQTTQoS(rawValue: (first >> 1) & 0x03) ?? .atMostOnce
        guard let topicLength: UInt16 = peek.getInteger(at: peek.readerIndex),
              peek.readableBytes >= 2 + Int(topicLength) + (qos == .atMostOnce ? 0 : 2) else { return nil }
        let topic = try peek.readMQTTString("topic")
        let id: UInt16? = qos == .atMostOnce ? nil : try peek.readMQTTUInt16("packet identifier")
        return PublishHead(topic: topic, qos: qos, retain: first & 0x01 != 0, packetIdentifier: id,
                           size: 1 + MQTTString.varIntSize(length) + length)
    }

    private static func checkFixedHeader(type: UInt8, flags: UInt8, version: MQTTVersion) throws(MQTTPacketError) {
        switch type {
        case 0: throw .invalidPacketType(0)
        case 3:
            let qos = (flags >> 1) & 0x03
            guard qos != 3 else { throw .invalidQoS(3) }
            if qos == 0 && flags & 0x08 != 0 { throw .invalidFlags(packet: "PUBLISH", flags: flags) }
        case 6, 8, 10:
            guard flags == 0x02 else { throw .invalidFlags(packet: packetName(type), flags: flags) }
        case 15:
            guard version == .v5 else { throw .invalidPacketType(15) }
            guard flags == 0 else { throw .invalidFlags(packet: "AUTH", flags: flags) }
        default:
            guard flags == 0 else { throw .invalidFlags(packet: packetName(type), flags: flags) }
        }
    }

    static func packetName(_ type: UInt8) -> String {
        ["reserved", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK",
         "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"][Int(type & 0x0F)]
    }

    private static func decodeBody(type: UInt8, flags: UInt8, body: inout ByteBuffer, version: MQTTVersion) throws(MQTTPacketError) -> MQTTPacket {
        let v5 = version == .v5
        switch type {
        case 1: return .connect(try decodeConnect(&body))
        case 2:
            let ackFlags = try body.readMQTTByte("CONNACK flags")
            guard ackFlags & 0xFE == 0 else { throw .invalidFlags(packet: "CONNACK", flags: ackFlags) }
            let code = try body.readMQTTByte("CONNACK reason code")
            if v5 {
                // A 3.1.1-only broker answers a 5.0 CONNECT with a 2-byte CONNACK (code 1).
                let props = body.readableBytes > 0 ? try MQTTProperties.read(from: &body, context: .connack) : MQTTProperties()
                let reason = body.readableBytes == 0 && code == 1 ? MQTTReasonCode.unsupportedProtocolVersion : MQTTReasonCode(rawValue: code)
                guard MQTTReasonCode.allowedConnAck.contains(reason.rawValue) else { throw .invalidReasonCode(code: code, packet: "CONNACK") }
                guard !(ackFlags & 1 == 1 && reason.isFailure) else { throw .protocolViolation("CONNACK: session present with a failure code") }
                return .connack(ConnAckPacket(sessionPresent: ackFlags & 1 == 1, reasonCode: reason, properties: props))
            }
            guard code <= 5 else { throw .invalidReasonCode(code: code, packet: "CONNACK") }
            guard !(ackFlags & 1 == 1 && code != 0) else { throw .protocolViolation("CONNACK: session present with a failure code") }
            return .connack(ConnAckPacket(sessionPresent: ackFlags & 1 == 1, reasonCode: .fromV3ConnectReturnCode(code)))
        case 3:
            let qosRaw = (flags >> 1) & 0x03
            guard let qos = MQTTQoS(rawValue: qosRaw) else { throw .invalidQoS(qosRaw) }
            let topic = try body.readMQTTString("PUBLISH topic")
            var id: UInt16?
            if qos != .atMostOnce {
                let v = try body.readMQTTUInt16("PUBLISH packet identifier")
                guard v != 0 else { throw .packetIdentifierZero(packet: "PUBLISH") }
                id = v
            }
            let props = v5 ? try MQTTProperties.read(from: &body, context: .publish) : MQTTProperties()
            if topic.isEmpty {
                guard props.topicAlias != nil else { throw .invalidTopicName(topic) }
            } else {
                guard MQTTTopic.isValidName(topic) else { throw .invalidTopicName(topic) }
            }
            let payload = body.readBytes(length: body.readableBytes) ?? []
            return .publish(PublishPacket(topic: topic, payload: payload, qos: qos, retain: flags & 1 == 1, dup: flags & 0x08 != 0,
                                          packetIdentifier: id, properties: props))
        case 4: return .puback(try decodeAck(&body, v5: v5, context: .puback, allowed: MQTTReasonCode.allowedPubAckRec))
        case 5: return .pubrec(try decodeAck(&body, v5: v5, context: .pubrec, allowed: MQTTReasonCode.allowedPubAckRec))
        case 6: return .pubrel(try decodeAck(&body, v5: v5, context: .pubrel, allowed: MQTTReasonCode.allowedPubRelComp))
        case 7: return .pubcomp(try decodeAck(&body, v5: v5, context: .pubcomp, allowed: MQTTReasonCode.allowedPubRelComp))
        case 8:
            let id = try body.readMQTTUInt16("SUBSCRIBE packet identifier")
            guard id != 0 else { throw .packetIdentifierZero(packet: "SUBSCRIBE") }
            let props = v5 ? try MQTTProperties.read(from: &body, context: .subscribe) : MQTTProperties()
            var subs: [MQTTSubscription] = []
            while body.readableBytes > 0 {
                let filter = try body.readMQTTString("SUBSCRIBE topic filter")
                guard MQTTTopic.isValidFilter(filter) else { throw .invalidTopicFilter(filter) }
                let o = try body.readMQTTByte("SUBSCRIBE options")
                guard let qos = MQTTQoS(rawValue: o & 0x03) else { throw .invalidQoS(o & 0x03) }
                if v5 {
                    guard o & 0xC0 == 0, let rh = MQTTRetainHandling(rawValue: (o >> 4) & 0x03) else {
                        throw .protocolViolation("SUBSCRIBE: reserved option bits 0x\(String(o, radix: 16))")
                    }
                    subs.append(MQTTSubscription(filter, qos: qos, noLocal: o & 0x04 != 0, retainAsPublished: o & 0x08 != 0, retainHandling: rh))
                } else {
                    guard o & 0xFC == 0 else { throw .protocolViolation("SUBSCRIBE: reserved option bits 0x\(String(o, radix: 16))") }
                    subs.append(MQTTSubscription(filter, qos: qos))
                }
            }
            guard !subs.isEmpty else { throw .protocolViolation("SUBSCRIBE without a topic filter") }
            return .subscribe(SubscribePacket(packetIdentifier: id, subscriptions: subs, properties: props))
        case 9:
            let id = try body.readMQTTUInt16("SUBACK packet identifier")
            guard id != 0 else { throw .packetIdentifierZero(packet: "SUBACK") }
            let props = v5 ? try MQTTProperties.read(from: &body, context: .suback) : MQTTProperties()
            var codes: [MQTTReasonCode] = []
            while body.readableBytes > 0 {
                let c = try body.readMQTTByte("SUBACK reason code")
                if v5 {
                    guard MQTTReasonCode.allowedSubAck.contains(c) else { throw .invalidReasonCode(code: c, packet: "SUBACK") }
                } else {
                    guard c <= 2 || c == 0x80 else { throw .invalidReasonCode(code: c, packet: "SUBACK") }
                }
                codes.append(MQTTReasonCode(rawValue: c))
            }
            guard !codes.isEmpty else { throw .protocolViolation("SUBACK without a reason code") }
            return .suback(SubAckPacket(packetIdentifier: id, reasonCodes: codes, properties: props))
        case 10:
            let id = try body.readMQTTUInt16("UNSUBSCRIBE packet identifier")
            guard id != 0 else { throw .packetIdentifierZero(packet: "UNSUBSCRIBE") }
            let props = v5 ? try MQTTProperties.read(from: &body, context: .unsubscribe) : MQTTProperties()
            var filters: [String] = []
            while body.readableBytes > 0 {
                let f = try body.readMQTTString("UNSUBSCRIBE topic filter")
                guard MQTTTopic.isValidFilter(f) else { throw .invalidTopicFilter(f) }
                filters.append(f)
            }
            guard !filters.isEmpty else { throw .protocolViolation("UNSUBSCRIBE without a topic filter") }
            return .unsubscribe(UnsubscribePacket(packetIdentifier: id, filters: filters, properties: props))
        case 11:
            let id = try body.readMQTTUInt16("UNSUBACK packet identifier")
            guard id != 0 else { throw .packetIdentifierZero(packet: "UNSUBACK") }
            guard v5 else { return .unsuback(SubAckPacket(packetIdentifier: id, reasonCodes: [])) }
            let props = try MQTTProperties.read(from: &body, context: .unsuback)
            var codes: [MQTTReasonCode] = []
            while body.readableBytes > 0 {
                let c = try body.readMQTTByte("UNSUBACK reason code")
                guard MQTTReasonCode.allowedUnsubAck.contains(c) else { throw .invalidReasonCode(code: c, packet: "UNSUBACK") }
                codes.append(MQTTReasonCode(rawValue: c))
            }
            guard !codes.isEmpty else { throw .protocolViolation("UNSUBACK without a reason code") }
            return .unsuback(SubAckPacket(packetIdentifier: id, reasonCodes: codes, properties: props))
        case 12: return .pingreq
        case 13: return .pingresp
        case 14:
            guard v5, body.readableBytes > 0 else { return .disconnect(ReasonPacket()) }
            let c = try body.readMQTTByte("DISCONNECT reason code")
            guard MQTTReasonCode.allowedDisconnect.contains(c) else { throw .invalidReasonCode(code: c, packet: "DISCONNECT") }
            let props = body.readableBytes > 0 ? try MQTTProperties.read(from: &body, context: .disconnect) : MQTTProperties()
            return .disconnect(ReasonPacket(reasonCode: MQTTReasonCode(rawValue: c), properties: props))
        case 15:
            guard body.readableBytes > 0 else { return .auth(ReasonPacket()) }
            let c = try body.readMQTTByte("AUTH reason code")
            guard MQTTReasonCode.allowedAuth.contains(c) else { throw .invalidReasonCode(code: c, packet: "AUTH") }
            let props = body.readableBytes > 0 ? try MQTTProperties.read(from: &body, context: .auth) : MQTTProperties()
            return .auth(ReasonPacket(reasonCode: MQTTReasonCode(rawValue: c), properties: props))
        default:
            throw .invalidPacketType(type)
        }
    }

    private static func decodeAck(_ body: inout ByteBuffer, v5: Bool, context: PropertyContext, allowed: Set<UInt8>) throws(MQTTPacketError) -> AckPacket {
        let id = try body.readMQTTUInt16("\(context.rawValue) packet identifier")
        guard id != 0 else { throw .packetIdentifierZero(packet: context.rawValue) }
        guard v5, body.readableBytes > 0 else { return AckPacket(packetIdentifier: id) }
        let c = try body.readMQTTByte("\(context.rawValue) reason code")
        guard allowed.contains(c) else { throw .invalidReasonCode(code: c, packet: context.rawValue) }
        let props = body.readableBytes > 0 ? try MQTTProperties.read(from: &body, context: context) : MQTTProperties()
        return AckPacket(packetIdentifier: id, reasonCode: MQTTReasonCode(rawValue: c), properties: props)
    }

    private static func decodeConnect(_ body: inout ByteBuffer) throws(MQTTPacketError) -> ConnectPacket {
        let name = try body.readMQTTString("CONNECT protocol name")
        guard name == "MQTT" else { throw .protocolViolation("CONNECT: protocol name '\(name)'") }
        let level = try body.readMQTTByte("CONNECT protocol level")
        guard let version = MQTTVersion(rawValue: level) else { throw .protocolViolation("CONNECT: unsupported protocol level \(level)") }
        let v5 = version == .v5
        let flags = try body.readMQTTByte("CONNECT flags")
        guard flags & 0x01 == 0 else { throw .invalidFlags(packet: "CONNECT", flags: flags) }
        let willFlag = flags & 0x04 != 0
        let willQoSRaw = (flags >> 3) & 0x03
        guard let willQoS = MQTTQoS(rawValue: willQoSRaw) else { throw .invalidQoS(willQoSRaw) }
        if !willFlag && (willQoSRaw != 0 || flags & 0x20 != 0) { throw .protocolViolation("CONNECT: will QoS/retain without a will") }
        if !v5 && flags & 0x40 != 0 && flags & 0x80 == 0 { throw .protocolViolation("CONNECT: password without user name") }
        let keepAlive = try body.readMQTTUInt16("CONNECT keep alive")
        let props = v5 ? try MQTTProperties.read(from: &body, context: .connect) : MQTTProperties()
        let clientID = try body.readMQTTString("CONNECT client identifier")
        var will: MQTTWill?
        if willFlag {
            let wp = v5 ? try MQTTProperties.read(from: &body, context: .will) : MQTTProperties()
            let topic = try body.readMQTTString("will topic")
            guard MQTTTopic.isValidName(topic) else { throw .invalidTopicName(topic) }
            let payload = try body.readMQTTBinary("will payload")
            will = MQTTWill(topic: topic, payload: payload, qos: willQoS, retain: flags & 0x20 != 0, properties: wp)
        }
        let username = flags & 0x80 != 0 ? try body.readMQTTString("user name") : nil
        let password = flags & 0x40 != 0 ? try body.readMQTTBinary("password") : nil
        return ConnectPacket(clientIdentifier: clientID, cleanStart: flags & 0x02 != 0, keepAlive: keepAlive,
                             username: username, password: password, will: will, properties: props)
    }
}

extension MQTTPacketCodec {
    /// The protocol level of a CONNECT at the front of `buffer` (for a server that must pick the codec version).
    public static func peekConnectVersion(_ buffer: ByteBuffer) -> MQTTVersion? {
        var b = buffer
        guard let first: UInt8 = b.readInteger(), first == 0x10, (try? b.readMQTTVariableIntIfComplete()) != nil,
              let len: UInt16 = b.readInteger(), b.readableBytes > Int(len) else { return nil }
        b.moveReaderIndex(forwardBy: Int(len))
        guard let level: UInt8 = b.readInteger() else { return nil }
        return MQTTVersion(rawValue: level)
    }
}
