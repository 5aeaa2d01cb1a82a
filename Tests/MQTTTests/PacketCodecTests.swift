import NIOCore
import Testing
@testable import MQTT

@Suite("MQTT packet codec")
struct PacketCodecTests {
    static var fullProperties: MQTTProperties {
        var p = MQTTProperties()
        p.payloadFormatIndicator = 1
        p.messageExpiryInterval = 60
        p.contentType = "application/json"
        p.responseTopic = "reply/here"
        p.correlationData = [1, 2, 3]
        p.userProperties = [MQTTUserProperty("a", "1"), MQTTUserProperty("a", "2"), MQTTUserProperty("ü", "✓")]
        return p
    }

    static var v5Packets: [MQTTPacket] {
        var connectProps = MQTTProperties()
        connectProps.sessionExpiryInterval = 3600
        connectProps.receiveMaximum = 10
        connectProps.maximumPacketSize = 65536
        connectProps.topicAliasMaximum = 5
        connectProps.requestProblemInformation = 1
        connectProps.requestResponseInformation = 0
        connectProps.userProperties = [MQTTUserProperty("k", "v")]
        var willProps = MQTTProperties()
        willProps.willDelayInterval = 5
        willProps.messageExpiryInterval = 100
        willProps.contentType = "text/plain"
        var ackProps = MQTTProperties()
        ackProps.sessionExpiryInterval = 10
        ackProps.assignedClientIdentifier = "auto-1"
        ackProps.serverKeepAlive = 20
        ackProps.receiveMaximum = 3
        ackProps.maximumQoS = 1
        ackProps.retainAvailable = 0
        ackProps.maximumPacketSize = 1000
        ackProps.topicAliasMaximum = 4
        ackProps.wildcardSubscriptionAvailable = 1
        ackProps.subscriptionIdentifierAvailable = 0
        ackProps.sharedSubscriptionAvailable = 1
        ackProps.responseInformation = "resp/"
        ackProps.serverReference = "other:1883"
        ackProps.reasonString = "welcome"
        var pubProps = fullProperties
        pubProps.topicAlias = 3
        pubProps.subscriptionIdentifiers = [7, 300]
        var reason = MQTTProperties()
        reason.reasonString = "why"
        reason.userProperties = [MQTTUserProperty("x", "y")]
        var subProps = MQTTProperties()
        subProps.subscriptionIdentifiers = [42]
        var authProps = MQTTProperties()
        authProps.authenticationMethod = "SCRAM"
        authProps.authenticationData = [9, 9]
        return [
            .connect(ConnectPacket(clientIdentifier: "gw-1", cleanStart: false, keepAlive: 30, username: "u", password: [0, 1, 2],
                                   will: MQTTWill(topic: "gateway/x/status", payload: Array("offline".utf8), qos: .atLeastOnce, retain: true, properties: willProps),
                                   properties: connectProps)),
            .connect(ConnectPacket(clientIdentifier: "", cleanStart: true, keepAlive: 0)),
            .connack(ConnAckPacket(sessionPresent: true, reasonCode: .success, properties: ackProps)),
            .connack(ConnAckPacket(sessionPresent: false, reasonCode: .notAuthorized)),
            .publish(PublishPacket(topic: "a/b", payload: Array("21.5".utf8), qos: .atMostOnce, retain: true)),
            .publish(PublishPacket(topic: "a/b", payload: [], qos: .atLeastOnce, dup: true, packetIdentifier: 7, properties: pubProps)),
            .publish(PublishPacket(topic: "", payload: [1], qos: .exactlyOnce, packetIdentifier: 65535, properties: pubProps)),
            .puback(AckPacket(packetIdentifier: 1)),
            .puback(AckPacket(packetIdentifier: 2, reasonCode: .noMatchingSubscribers)),
            .puback(AckPacket(packetIdentifier: 3, reasonCode: .notAuthorized, properties: reason)),
            .pubrec(AckPacket(packetIdentifier: 4)),
            .pubrec(AckPacket(packetIdentifier: 4, reasonCode: .quotaExceeded, properties: reason)),
            .pubrel(AckPacket(packetIdentifier: 5)),
            .pubrel(AckPacket(packetIdentifier: 5, reasonCode: .packetIdentifierNotFound)),
            .pubcomp(AckPacket(packetIdentifier: 6)),
            .subscribe(SubscribePacket(packetIdentifier: 8, subscriptions: [
                MQTTSubscription("gateway/+/+/set", qos: .exactlyOnce, noLocal: true, retainAsPublished: true, retainHandling: .doNotSend),
                MQTTSubscription("$share/g/a/#", qos: .atMostOnce),
            ], properties: subProps)),
            .suback(SubAckPacket(packetIdentifier: 8, reasonCodes: [.grantedQoS2, .notAuthorized], properties: reason)),
            .unsubscribe(UnsubscribePacket(packetIdentifier: 9, filters: ["a/#", "b/+"], properties: MQTTProperties())),
            .unsuback(SubAckPacket(packetIdentifier: 9, reasonCodes: [.success, .noSubscriptionExisted])),
            .pingreq, .pingresp,
            .disconnect(ReasonPacket()),
            .disconnect(ReasonPacket(reasonCode: .sessionTakenOver, properties: reason)),
            .auth(ReasonPacket(reasonCode: .continueAuthentication, properties: authProps)),
        ]
    }

    static var v3Packets: [MQTTPacket] {
        [
            .connect(ConnectPacket(clientIdentifier: "gw-1", cleanStart: true, keepAlive: 60, username: "u", password: Array("p".utf8),
                                   will: MQTTWill(topic: "s", payload: Array("offline".utf8), qos: .exactlyOnce, retain: false))),
            .connect(ConnectPacket(clientIdentifier: "c", cleanStart: false, keepAlive: 5)),
            .connack(ConnAckPacket(sessionPresent: true)),
            .connack(ConnAckPacket(reasonCode: .badUserNameOrPassword)),
            .publish(PublishPacket(topic: "t", payload: Array("x".utf8))),
            .publish(PublishPacket(topic: "t/1", payload: [0, 255], qos: .exactlyOnce, retain: true, dup: true, packetIdentifier: 300)),
            .puback(AckPacket(packetIdentifier: 1)), .pubrec(AckPacket(packetIdentifier: 2)),
            .pubrel(AckPacket(packetIdentifier: 3)), .pubcomp(AckPacket(packetIdentifier: 4)),
            .subscribe(SubscribePacket(packetIdentifier: 5, subscriptions: [MQTTSubscription("a/+", qos: .atLeastOnce), MQTTSubscription("#", qos: .exactlyOnce)])),
            .suback(SubAckPacket(packetIdentifier: 5, reasonCodes: [.grantedQoS1, MQTTReasonCode(rawValue: 0x80)])),
            .unsubscribe(UnsubscribePacket(packetIdentifier: 6, filters: ["a/+"])),
            .unsuback(SubAckPacket(packetIdentifier: 6, reasonCodes: [])),
            .pingreq, .pingresp, .disconnect(ReasonPacket()),
        ]
    }

    func encode(_ p: MQTTPacket, _ v: MQTTVersion) -> ByteBuffer {
        var b = ByteBuffer()
        MQTTPacketCodec.encode(p, version: v, into: &b)
        return b
    }

    @Test("every 5.0 packet round-trips", arguments: PacketCodecTests.v5Packets)
    func roundTripV5(packet: MQTTPacket) throws {
        var b = encode(packet, .v5)
        #expect(try MQTTPacketCodec.decode(from: &b, version: .v5) == packet)
        #expect(b.readableBytes == 0)
    }

    @Test("every 3.1.1 packet round-trips", arguments: PacketCodecTests.v3Packets)
    func roundTripV3(packet: MQTTPacket) throws {
        var b = encode(packet, .v3_1_1)
        #expect(try MQTTPacketCodec.decode(from: &b, version: .v3_1_1) == packet)
        #expect(b.readableBytes == 0)
    }

    @Test("known bytes: 3.1.1 CONNECT, PUBLISH QoS 1, 5.0 PUBACK short form")
    func knownBytes() {
        let c = encode(.connect(ConnectPacket(clientIdentifier: "ab", cleanStart: true, keepAlive: 60)), .v3_1_1)
        #expect(Array(c.readableBytesView) == [0x10, 14, 0, 4, 0x4D, 0x51, 0x54, 0x54, 4, 0x02, 0, 60, 0, 2, 0x61, 0x62])
        let p = encode(.publish(PublishPacket(topic: "a", payload: [0x31], qos: .atLeastOnce, retain: true, packetIdentifier: 10)), .v3_1_1)
        #expect(Array(p.readableBytesView) == [0x33, 6, 0, 1, 0x61, 0, 10, 0x31])
        let a = encode(.puback(AckPacket(packetIdentifier: 10)), .v5)
        #expect(Array(a.readableBytesView) == [0x40, 2, 0, 10])
        let big = encode(.publish(PublishPacket(topic: "t", payload: [UInt8](repeating: 0, count: 200))), .v3_1_1)
        #expect(Array(big.readableBytesView.prefix(3)) == [0x30, 0xCB, 0x01], "remaining length 203 as a 2-byte varint")
    }

    @Test("decoding one byte at a time and in batches gives the same packets")
    func dripFeed() throws {
        for version in [MQTTVersion.v5, .v3_1_1] {
            let packets = version == .v5 ? Self.v5Packets : Self.v3Packets
            var all = ByteBuffer()
            for p in packets { MQTTPacketCodec.encode(p, version: version, into: &all) }
            let bytes = Array(all.readableBytesView)
            for chunk in [1, 2, 3, 7, 64, bytes.count] {
                var cumulation = ByteBuffer()
                var decoded: [MQTTPacket] = []
                var i = 0
                while i < bytes.count {
                    cumulation.writeBytes(bytes[i..<min(i + chunk, bytes.count)])
                    i += chunk
                    while let p = try MQTTPacketCodec.decode(from: &cumulation, version: version) { decoded.append(p) }
                }
                #expect(decoded == packets, "version \(version), chunk \(chunk)")
                #expect(cumulation.readableBytes == 0)
            }
        }
    }

    @Test("a short read leaves the buffer untouched")
    func shortReadRewinds() throws {
        let full = encode(.publish(PublishPacket(topic: "abc", payload: Array("hello".utf8))), .v5)
        for cut in 0..<full.readableBytes {
            var partial = full.getSlice(at: 0, length: cut)!
            let before = partial.readerIndex
            #expect(try MQTTPacketCodec.decode(from: &partial, version: .v5) == nil)
            #expect(partial.readerIndex == before)
        }
    }
}
