import NIOCore
import Testing
import TestSupport
@testable import MQTT

/// One malformed input and the error it must produce.
struct MalformedCase: CustomTestStringConvertible, Sendable {
    var name: String
    var version: MQTTVersion
    var bytes: [UInt8]
    var expected: MQTTPacketError
    var maximumPacketSize = 1 << 20
    var testDescription: String { name }
}

let T: UInt8 = 0x74  // "t"
let mqttName: [UInt8] = [0, 4, 0x4D, 0x51, 0x54, 0x54]

let malformedCases: [MalformedCase] = [
    .init(name: "packet type 0", version: .v5, bytes: [0x00, 0x00], expected: .invalidPacketType(0)),
    .init(name: "AUTH on 3.1.1", version: .v3_1_1, bytes: [0xF0, 0x00], expected: .invalidPacketType(15)),
    .init(name: "PUBREL with flags 0", version: .v5, bytes: [0x60, 2, 0, 1], expected: .invalidFlags(packet: "PUBREL", flags: 0)),
    .init(name: "SUBSCRIBE with flags 0", version: .v3_1_1, bytes: [0x80, 6, 0, 1, 0, 1, 0x61, 0], expected: .invalidFlags(packet: "SUBSCRIBE", flags: 0)),
    .init(name: "UNSUBSCRIBE with flags 3", version: .v3_1_1, bytes: [0xA3, 5, 0, 1, 0, 1, 0x61], expected: .invalidFlags(packet: "UNSUBSCRIBE", flags: 3)),
    .init(name: "PUBACK with flag bit 0", version: .v3_1_1, bytes: [0x41, 2, 0, 1], expected: .invalidFlags(packet: "PUBACK", flags: 1)),
    .init(name: "PINGRESP with flags", version: .v5, bytes: [0xD1, 0], expected: .invalidFlags(packet: "PINGRESP", flags: 1)),
    .init(name: "remaining length of 5 bytes", version: .v5, bytes: [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], expected: .malformedVariableByteInteger),
    .init(name: "remaining length not minimally encoded", version: .v5, bytes: [0x30, 0x80, 0x00], expected: .malformedVariableByteInteger),
    .init(name: "packet larger than the maximum (refused before the body arrives)", version: .v3_1_1, bytes: [0x30, 103],
          expected: .packetTooLarge(size: 105, maximum: 50), maximumPacketSize: 50),
    .init(name: "PUBLISH QoS 3", version: .v3_1_1, bytes: [0x36, 5, 0, 1, T, 0, 1], expected: .invalidQoS(3)),
    .init(name: "PUBLISH QoS 0 with DUP", version: .v3_1_1, bytes: [0x38, 3, 0, 1, T], expected: .invalidFlags(packet: "PUBLISH", flags: 8)),
    .init(name: "PUBLISH topic with +", version: .v3_1_1, bytes: [0x30, 5, 0, 3, 0x61, 0x2F, 0x2B], expected: .invalidTopicName("a/+")),
    .init(name: "PUBLISH topic with #", version: .v5, bytes: [0x30, 4, 0, 1, 0x23, 0], expected: .invalidTopicName("#")),
    .init(name: "PUBLISH QoS 1 packet id 0", version: .v3_1_1, bytes: [0x32, 5, 0, 1, T, 0, 0], expected: .packetIdentifierZero(packet: "PUBLISH")),
    .init(name: "PUBLISH empty topic on 3.1.1", version: .v3_1_1, bytes: [0x30, 2, 0, 0], expected: .invalidTopicName("")),
    .init(name: "PUBLISH empty topic without alias on 5.0", version: .v5, bytes: [0x30, 3, 0, 0, 0], expected: .invalidTopicName("")),
    .init(name: "topic alias 0", version: .v5, bytes: [0x30, 7, 0, 1, T, 3, 0x23, 0, 0], expected: .invalidTopicAlias(0)),
    .init(name: "topic length cut", version: .v5, bytes: [0x30, 1, 0], expected: .truncated("PUBLISH topic")),
    .init(name: "topic longer than the packet", version: .v5, bytes: [0x30, 3, 0, 5, 0x61], expected: .truncated("PUBLISH topic")),
    .init(name: "invalid UTF-8 in topic", version: .v5, bytes: [0x30, 5, 0, 2, 0xC3, 0x28, 0], expected: .invalidUTF8("PUBLISH topic")),
    .init(name: "U+0000 in topic", version: .v3_1_1, bytes: [0x30, 4, 0, 2, 0x61, 0x00], expected: .invalidUTF8("PUBLISH topic")),
    .init(name: "UTF-16 surrogate encoded in topic", version: .v3_1_1, bytes: [0x30, 5, 0, 3, 0xED, 0xA0, 0x80], expected: .invalidUTF8("PUBLISH topic")),
    .init(name: "properties cut short", version: .v5, bytes: [0x40, 4, 0, 1, 0x00, 5], expected: .truncated("PUBACK properties")),
    .init(name: "duplicate message expiry", version: .v5, bytes: [0x30, 14, 0, 1, T, 10, 2, 0, 0, 0, 1, 2, 0, 0, 0, 2], expected: .duplicateProperty(2)),
    .init(name: "session expiry in PUBLISH", version: .v5, bytes: [0x30, 9, 0, 1, T, 5, 0x11, 0, 0, 0, 1], expected: .propertyNotAllowed(property: 0x11, packet: "PUBLISH")),
    .init(name: "unknown property 0x05", version: .v5, bytes: [0x30, 6, 0, 1, T, 2, 0x05, 0], expected: .unknownProperty(5)),
    .init(name: "payload format indicator 2", version: .v5, bytes: [0x30, 6, 0, 1, T, 2, 0x01, 2], expected: .invalidPropertyValue(property: 1, detail: "")),
    .init(name: "subscription identifier 0", version: .v5, bytes: [0x30, 6, 0, 1, T, 2, 0x0B, 0], expected: .invalidPropertyValue(property: 0x0B, detail: "")),
    .init(name: "PUBACK packet id 0", version: .v5, bytes: [0x40, 2, 0, 0], expected: .packetIdentifierZero(packet: "PUBACK")),
    .init(name: "PUBREC packet id 0", version: .v5, bytes: [0x50, 2, 0, 0], expected: .packetIdentifierZero(packet: "PUBREC")),
    .init(name: "PUBREL packet id 0", version: .v3_1_1, bytes: [0x62, 2, 0, 0], expected: .packetIdentifierZero(packet: "PUBREL")),
    .init(name: "PUBCOMP packet id 0", version: .v3_1_1, bytes: [0x70, 2, 0, 0], expected: .packetIdentifierZero(packet: "PUBCOMP")),
    .init(name: "PUBACK reason code 0x05", version: .v5, bytes: [0x40, 3, 0, 1, 0x05], expected: .invalidReasonCode(code: 5, packet: "PUBACK")),
    .init(name: "PUBREL reason code 0x80", version: .v5, bytes: [0x62, 3, 0, 1, 0x80], expected: .invalidReasonCode(code: 0x80, packet: "PUBREL")),
    .init(name: "3.1.1 PUBACK with a trailing byte", version: .v3_1_1, bytes: [0x40, 3, 0, 1, 0], expected: .trailingBytes(packet: "PUBACK")),
    .init(name: "CONNACK reserved flags", version: .v3_1_1, bytes: [0x20, 2, 0x02, 0], expected: .invalidFlags(packet: "CONNACK", flags: 2)),
    .init(name: "CONNACK session present with a refusal", version: .v3_1_1, bytes: [0x20, 2, 1, 5], expected: .protocolViolation("")),
    .init(name: "CONNACK return code 6 on 3.1.1", version: .v3_1_1, bytes: [0x20, 2, 0, 6], expected: .invalidReasonCode(code: 6, packet: "CONNACK")),
    .init(name: "CONNACK reason code 0x10 on 5.0", version: .v5, bytes: [0x20, 3, 0, 0x10, 0], expected: .invalidReasonCode(code: 0x10, packet: "CONNACK")),
    .init(name: "CONNACK receive maximum 0", version: .v5, bytes: [0x20, 6, 0, 0, 3, 0x21, 0, 0], expected: .invalidPropertyValue(property: 0x21, detail: "")),
    .init(name: "CONNACK maximum packet size 0", version: .v5, bytes: [0x20, 8, 0, 0, 5, 0x27, 0, 0, 0, 0], expected: .invalidPropertyValue(property: 0x27, detail: "")),
    .init(name: "CONNACK maximum QoS 2", version: .v5, bytes: [0x20, 5, 0, 0, 2, 0x24, 2], expected: .invalidPropertyValue(property: 0x24, detail: "")),
    .init(name: "CONNACK duplicate server keep alive", version: .v5, bytes: [0x20, 9, 0, 0, 6, 0x13, 0, 5, 0x13, 0, 6], expected: .duplicateProperty(0x13)),
    .init(name: "PINGRESP with a body", version: .v5, bytes: [0xD0, 1, 0], expected: .trailingBytes(packet: "PINGRESP")),
    .init(name: "3.1.1 DISCONNECT with a body", version: .v3_1_1, bytes: [0xE0, 1, 0], expected: .trailingBytes(packet: "DISCONNECT")),
    .init(name: "SUBACK without reason codes", version: .v3_1_1, bytes: [0x90, 2, 0, 1], expected: .protocolViolation("")),
    .init(name: "SUBACK packet id 0", version: .v3_1_1, bytes: [0x90, 3, 0, 0, 0], expected: .packetIdentifierZero(packet: "SUBACK")),
    .init(name: "SUBACK code 3 on 3.1.1", version: .v3_1_1, bytes: [0x90, 3, 0, 1, 3], expected: .invalidReasonCode(code: 3, packet: "SUBACK")),
    .init(name: "SUBSCRIBE without a filter", version: .v3_1_1, bytes: [0x82, 2, 0, 1], expected: .protocolViolation("")),
    .init(name: "SUBSCRIBE QoS 3", version: .v3_1_1, bytes: [0x82, 6, 0, 1, 0, 1, 0x61, 3], expected: .invalidQoS(3)),
    .init(name: "SUBSCRIBE filter a/b#", version: .v3_1_1, bytes: [0x82, 9, 0, 1, 0, 4, 0x61, 0x2F, 0x62, 0x23, 1], expected: .invalidTopicFilter("a/b#")),
    .init(name: "SUBSCRIBE reserved option bits on 5.0", version: .v5, bytes: [0x82, 7, 0, 1, 0, 0, 1, 0x61, 0xC0], expected: .protocolViolation("")),
    .init(name: "UNSUBSCRIBE without a filter", version: .v3_1_1, bytes: [0xA2, 2, 0, 1], expected: .protocolViolation("")),
    .init(name: "UNSUBACK packet id 0", version: .v3_1_1, bytes: [0xB0, 2, 0, 0], expected: .packetIdentifierZero(packet: "UNSUBACK")),
    .init(name: "CONNECT protocol name MQIs", version: .v3_1_1, bytes: [0x10, 12, 0, 4, 0x4D, 0x51, 0x49, 0x73, 4, 2, 0, 60, 0, 0], expected: .protocolViolation("")),
    .init(name: "CONNECT reserved flag bit", version: .v3_1_1, bytes: [0x10, 12] + mqttName + [4, 0x03, 0, 60, 0, 0], expected: .invalidFlags(packet: "CONNECT", flags: 3)),
    .init(name: "CONNECT will QoS 3", version: .v3_1_1, bytes: [0x10, 12] + mqttName + [4, 0x1E, 0, 60, 0, 0], expected: .invalidQoS(3)),
    .init(name: "CONNECT password without user name on 3.1.1", version: .v3_1_1, bytes: [0x10, 12] + mqttName + [4, 0x42, 0, 60, 0, 0], expected: .protocolViolation("")),
    .init(name: "CONNECT will QoS without a will", version: .v3_1_1, bytes: [0x10, 12] + mqttName + [4, 0x0A, 0, 60, 0, 0], expected: .protocolViolation("")),
    .init(name: "DISCONNECT reason code 0x01", version: .v5, bytes: [0xE0, 1, 0x01], expected: .invalidReasonCode(code: 1, packet: "DISCONNECT")),
    .init(name: "AUTH reason code 0x05", version: .v5, bytes: [0xF0, 1, 0x05], expected: .invalidReasonCode(code: 5, packet: "AUTH")),
    .init(name: "response topic with a wildcard", version: .v5, bytes: [0x30, 8, 0, 1, T, 4, 0x08, 0, 1, 0x23], expected: .invalidTopicName("#")),
]

@Suite("Malformed packets are rejected with the right error")
struct MalformedPacketTests {
    @Test("at least 40 cases")
    func count() { #expect(malformedCases.count >= 40) }

    @Test("each malformed packet throws its error and never crashes", arguments: malformedCases)
    func rejects(_ c: MalformedCase) {
        var b = ByteBuffer(bytes: c.bytes)
        do {
            let p = try MQTTPacketCodec.decode(from: &b, version: c.version, maximumPacketSize: c.maximumPacketSize)
            Issue.record("decoded \(String(describing: p)) instead of failing")
        } catch {
            #expect(Self.sameError(error, c.expected), "got \(error), expected \(c.expected)")
        }
    }

    /// Same case; for errors with a free-text detail only the case and property are compared.
    static func sameError(_ a: MQTTPacketError, _ b: MQTTPacketError) -> Bool {
        switch (a, b) {
        case (.protocolViolation, .protocolViolation): true
        case (.invalidPropertyValue(let x, _), .invalidPropertyValue(let y, _)): x == y
        default: a == b
        }
    }

    @Test("seeded random garbage: the decoder returns a packet, asks for more, or throws; a packet it returns re-encodes to what it read")
    func garbage() {
        // A fixed seed: a failure is reproducible.
        var rng = SplitMix(seed: 0x5EED_6A7E_3A9)
        var decoded = 0, refused = 0
        for _ in 0..<20_000 {
            let n = Int.random(in: 0..<64, using: &rng)
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            for v in [MQTTVersion.v5, .v3_1_1] {
                var b = ByteBuffer(bytes: bytes)
                do {
                    let before = b.readerIndex
                    guard let packet = try MQTTPacketCodec.decode(from: &b, version: v, maximumPacketSize: 4096) else {
                        #expect(b.readerIndex == before, "an incomplete packet must leave the buffer untouched")
                        continue
                    }
                    decoded += 1
                    // What was read decodes again to the same packet after encoding.
                    var out = ByteBuffer()
                    MQTTPacketCodec.encode(packet, version: v, into: &out)
                    #expect((try? MQTTPacketCodec.decode(from: &out, version: v)) == packet, "\(packet)")
                } catch {
                    refused += 1
                }
            }
        }
        #expect(refused > 10_000, "garbage should mostly be refused (\(refused))")
        #expect(decoded > 0, "some short garbage is a valid packet (PINGRESP, ...)")
    }
}

@Suite("Topic names and filters")
struct TopicTests {
    @Test("filters follow the wildcard rules")
    func filters() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "$share/g/a/+", "sport/tennis/#"] { #expect(MQTTTopic.isValidFilter(ok), "\(ok)") }
        for bad in ["", "a/b#", "a#", "#/a", "a+", "a/+b", "$share/g", "$share//a", "a\u{0}"] { #expect(!MQTTTopic.isValidFilter(bad), "\(bad)") }
    }

    @Test("matching, including $-topics and multi-level wildcards")
    func matching() {
        #expect(MQTTTopic.matches(topic: "gateway/lobby/door/set", filter: "gateway/+/+/set"))
        #expect(!MQTTTopic.matches(topic: "gateway/lobby/door/set/result", filter: "gateway/+/+/set"))
        #expect(MQTTTopic.matches(topic: "sport", filter: "sport/#"))
        #expect(MQTTTopic.matches(topic: "a/b/c", filter: "#"))
        #expect(!MQTTTopic.matches(topic: "$SYS/broker", filter: "#"))
        #expect(!MQTTTopic.matches(topic: "$SYS/broker", filter: "+/broker"))
        #expect(MQTTTopic.matches(topic: "$SYS/broker", filter: "$SYS/#"))
        #expect(MQTTTopic.matches(topic: "a//b", filter: "a/+/b"))
        #expect(MQTTTopic.matches(topic: "a/b", filter: "$share/g/a/+"))
    }
}
