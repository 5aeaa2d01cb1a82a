import NIOCore

extension ByteBuffer {
    /// Writes a variable-byte integer (1-4 bytes, minimal encoding). `value` must be < 268,435,456.
    mutating func writeMQTTVariableInt(_ value: Int) {
        precondition(value >= 0 && value <= MQTTLimits.maxVariableInt)
        var v = value
        repeat {
            var byte = UInt8(v & 0x7F)
            v >>= 7
            if v > 0 { byte |= 0x80 }
            writeInteger(byte)
        } while v > 0
    }

    /// Reads a variable-byte integer. Returns nil when more bytes are needed (reader not moved).
    mutating func readMQTTVariableIntIfComplete() throws(MQTTPacketError) -> Int? {
        var value = 0, multiplier = 1, index = readerIndex
        for i in 0..<4 {
            guard let byte: UInt8 = getInteger(at: index) else { return nil }
            index += 1
            value += Int(byte & 0x7F) * multiplier
            if byte & 0x80 == 0 {
                // Minimal encoding: a last byte of 0 after the first byte means padding.
                if i > 0 && byte == 0 { throw .malformedVariableByteInteger }
                moveReaderIndex(to: index)
                return value
            }
            multiplier *= 128
        }
        throw .malformedVariableByteInteger
    }

    // `what` names the field in an error; it is built only when one is thrown (an interpolated
    // name cost an allocation on every packet read).

    /// Reads a variable-byte integer inside a packet (missing bytes are a truncation).
    mutating func readMQTTVariableInt(_ what: @autoclosure () -> String) throws(MQTTPacketError) -> Int {
        guard let v = try readMQTTVariableIntIfComplete() else { throw .truncated(what()) }
        return v
    }

    mutating func readMQTTByte(_ what: @autoclosure () -> String) throws(MQTTPacketError) -> UInt8 {
        guard let v: UInt8 = readInteger() else { throw .truncated(what()) }
        return v
    }

    mutating func readMQTTUInt16(_ what: @autoclosure () -> String) throws(MQTTPacketError) -> UInt16 {
        guard let v: UInt16 = readInteger() else { throw .truncated(what()) }
        return v
    }

    mutating func readMQTTUInt32(_ what: @autoclosure () -> String) throws(MQTTPacketError) -> UInt32 {
        guard let v: UInt32 = readInteger() else { throw .truncated(what()) }
        return v
    }

    /// A UTF-8 string with a 2-byte length. Rejects invalid UTF-8 (incl. surrogates) and U+0000.
    mutating func readMQTTString(_ what: @autoclosure () -> String) throws(MQTTPacketError) -> String {
        let len = Int(try readMQTTUInt16(what()))
        guard let bytes = readBytes(length: len) else { throw .truncated(what()) }
        return try MQTTString.validate(bytes, what())
    }

    /// Binary data with a 2-byte length.
    mutating func readMQTTBinary(_ what: @autoclosure () -> String) throws(MQTTPacketError) -> [UInt8] {
        let len = Int(try readMQTTUInt16(what()))
        guard let bytes = readBytes(length: len) else { throw .truncated(what()) }
        return bytes
    }

    mutating func writeMQTTString(_ s: String) {
        let utf8 = Array(s.utf8)
        writeInteger(UInt16(truncatingIfNeeded: utf8.count))
        writeBytes(utf8)
    }

    mutating func writeMQTTBinary(_ b: [UInt8]) {
        writeInteger(UInt16(truncatingIfNeeded: b.count))
        writeBytes(b)
    }
}

public enum MQTTLimits {
    public static let maxVariableInt = 268_435_455
    public static let maxStringBytes = 65_535
}

/// UTF-8 string rules of MQTT (1.5.4): well-formed UTF-8, no U+0000, at most 65,535 bytes.
public enum MQTTString {
    static func validate(_ bytes: [UInt8], _ what: @autoclosure () -> String) throws(MQTTPacketError) -> String {
        guard !bytes.contains(0), let s = decodeUTF8(bytes) else { throw .invalidUTF8(what()) }
        return s
    }

    /// `bytes` as a String, or nil when they are not well-formed UTF-8 (encoded surrogates
    /// included). ASCII, the rule for topics and command payloads, takes one pass over the bytes
    /// and a copy; the general check costs several times as much, and every incoming command
    /// pays it on its way to the device.
    public static func decodeUTF8(_ bytes: [UInt8]) -> String? {
        if bytes.allSatisfy({ $0 < 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
        return String(validating: bytes, as: UTF8.self)
    }

    /// True when `s` can be sent as an MQTT string.
    public static func isValid(_ s: String) -> Bool {
        s.utf8.count <= MQTTLimits.maxStringBytes && !s.utf8.contains(0)
    }

    static func varIntSize(_ v: Int) -> Int {
        v < 128 ? 1 : v < 16_384 ? 2 : v < 2_097_152 ? 3 : 4
    }
}
