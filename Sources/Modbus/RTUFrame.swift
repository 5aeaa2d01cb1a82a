// Modbus RTU framing without libmodbus: the CRC, and how long a frame is from its first bytes.
// libmodbus cannot frame function codes it does not know (FC 43 Read Device Identification), nor
// RTU frames over a TCP stream; the scan (and the simulator's multi-unit RTU line) read frames
// with this instead.

/// RTU frames: `unit, function, data..., crc-low, crc-high`.
public enum RTUFrame {
    /// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF).
    public static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0xFFFF
        for b in bytes {
            crc ^= UInt16(b)
            for _ in 0..<8 {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xA001 : crc >> 1
            }
        }
        return crc
    }

    /// `unit + pdu + crc`.
    public static func seal(unit: Int, pdu: [UInt8]) -> [UInt8] {
        var frame = [UInt8(truncatingIfNeeded: unit)] + pdu
        let crc = crc16(frame)
        frame.append(UInt8(crc & 0xFF))
        frame.append(UInt8(crc >> 8))
        return frame
    }

    /// Whether `frame` (unit ... crc) ends in its own CRC.
    public static func checks(_ frame: some Collection<UInt8>) -> Bool {
        guard frame.count >= 4 else { return false }
        let body = frame.dropLast(2)
        let crc = crc16(body)
        let tail = Array(frame.suffix(2))
        return tail[0] == UInt8(crc & 0xFF) && tail[1] == UInt8(crc >> 8)
    }

    /// The PDU of an answer `frame` (unit ... crc) to a request to `unit`, once its CRC and unit
    /// check: the RTU side of ``MBAP/open(_:transaction:function:)``, for libmodbus's RTU lines and
    /// for `rtu-tcp` alike.
    static func open(_ frame: ArraySlice<UInt8>, unit: Int, function: String) throws(ModbusError) -> [UInt8] {
        guard frame.count >= 4 else { throw .badResponse(function: function, detail: "an answer of \(frame.count) bytes") }
        guard checks(frame) else { throw .badCRC(function: function) }
        let s = frame.startIndex
        guard Int(frame[s]) == unit else {
            throw .badResponse(function: function, detail: "answer from unit \(frame[s]), not \(unit)")
        }
        return Array(frame[(s + 1)..<(frame.endIndex - 2)])
    }

    /// What the first bytes of a frame say about its length.
    public enum Length: Equatable, Sendable {
        /// At least this many bytes are needed before the length is known.
        case needAtLeast(Int)
        /// The whole frame, CRC included, is this long.
        case complete(Int)
        /// A function code this framer cannot measure.
        case unknown
    }

    /// The length of a response (server to client) that starts with `head`.
    public static func responseLength(_ head: some Collection<UInt8>) -> Length {
        let h = Array(head.prefix(260))
        guard h.count >= 2 else { return .needAtLeast(2) }
        let fc = h[1]
        if fc & 0x80 != 0 { return .complete(5) }
        switch fc {
        case 1, 2, 3, 4, 12, 17, 20, 21, 23:
            guard h.count >= 3 else { return .needAtLeast(3) }
            return .complete(3 + Int(h[2]) + 2)
        case 5, 6, 8, 11, 15, 16: return .complete(8)
        case 7: return .complete(5)
        case 22: return .complete(10)
        case 43: return deviceIdentificationLength(h)
        default: return .unknown
        }
    }

    /// The length of a request (client to server) that starts with `head`.
    public static func requestLength(_ head: some Collection<UInt8>) -> Length {
        let h = Array(head.prefix(260))
        guard h.count >= 2 else { return .needAtLeast(2) }
        switch h[1] {
        case 1, 2, 3, 4, 5, 6, 8: return .complete(8)
        case 7, 11, 12, 17: return .complete(4)
        case 15, 16:
            guard h.count >= 7 else { return .needAtLeast(7) }
            return .complete(7 + Int(h[6]) + 2)
        case 22: return .complete(10)
        case 23:
            guard h.count >= 11 else { return .needAtLeast(11) }
            return .complete(11 + Int(h[10]) + 2)
        case 43:
            guard h.count >= 3 else { return .needAtLeast(3) }
            return h[2] == 14 ? .complete(7) : .unknown
        default: return .unknown
        }
    }

    /// FC 43 / MEI 14: unit, 0x2B, 0x0E, code, conformity, more, next, count, then `count`
    /// objects of (id, length, bytes), then the CRC.
    private static func deviceIdentificationLength(_ h: [UInt8]) -> Length {
        guard h.count >= 3 else { return .needAtLeast(3) }
        guard h[2] == 14 else { return .unknown }
        guard h.count >= 8 else { return .needAtLeast(8) }
        var at = 8
        for _ in 0..<Int(h[7]) {
            guard h.count >= at + 2 else { return .needAtLeast(at + 2) }
            at += 2 + Int(h[at + 1])
            if at > 256 { return .unknown }
        }
        return .complete(at + 2)
    }
}
