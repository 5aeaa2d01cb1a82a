import Synchronization

/// The transaction ids of one bus's TCP requests, whichever thread sends them: a request sent at
/// once by its caller (``ModbusBus``) and one the bus thread sends (``ModbusConnection``) draw
/// from the same sequence.
final class MBAPTransactions: Sendable {
    private let last = Atomic<UInt16>(0)

    func next() -> UInt16 { last.wrappingAdd(1, ordering: .relaxed).newValue }
}

/// Modbus TCP framing (MBAP): a 7-byte header (transaction id, protocol id 0, the length of what
/// follows, unit id), then the PDU. Used where the bus frames a request itself: a request sent at
/// once from the caller's thread (``ModbusBus``), whose answer libmodbus receives.
enum MBAP {
    static let headerLength = 7

    /// The unit ids a TCP request may carry: 0...247 and 255, as libmodbus takes them.
    static func carries(unit: Int) -> Bool { (0...247).contains(unit) || unit == 255 }

    /// The whole request frame.
    static func seal(transaction: UInt16, unit: Int, pdu: [UInt8]) -> [UInt8] {
        var frame: [UInt8] = []
        frame.reserveCapacity(headerLength + pdu.count)
        frame.append(UInt8(transaction >> 8))
        frame.append(UInt8(transaction & 0xFF))
        frame.append(0)
        frame.append(0)
        frame.append(UInt8((pdu.count + 1) >> 8))
        frame.append(UInt8((pdu.count + 1) & 0xFF))
        frame.append(UInt8(truncatingIfNeeded: unit))
        frame.append(contentsOf: pdu)
        return frame
    }

    /// Puts `transaction` into a sealed frame.
    static func stamp(_ frame: inout [UInt8], transaction: UInt16) {
        frame[0] = UInt8(transaction >> 8)
        frame[1] = UInt8(transaction & 0xFF)
    }

    /// The PDU of `answer`, once its header answers `transaction`: the same transaction id,
    /// protocol id 0, and a length that covers exactly the bytes received. The unit id is not
    /// checked, as libmodbus does not on TCP (some gateways answer with their own); the
    /// transaction id is what ties an answer to its request.
    static func open(_ a: ArraySlice<UInt8>, transaction: UInt16, function: String) throws(ModbusError) -> [UInt8] {
        guard a.count > headerLength else {
            throw .badResponse(function: function, detail: "an answer of \(a.count) bytes")
        }
        let s = a.startIndex
        let tid = UInt16(a[s]) << 8 | UInt16(a[s + 1])
        guard tid == transaction else {
            throw .badResponse(function: function, detail: "answer to transaction \(tid), not \(transaction)")
        }
        guard a[s + 2] == 0, a[s + 3] == 0 else {
            throw .badResponse(function: function, detail: "protocol id \(UInt16(a[s + 2]) << 8 | UInt16(a[s + 3])), not 0")
        }
        let length = Int(a[s + 4]) << 8 | Int(a[s + 5])
        guard length == a.count - 6 else {
            throw .badResponse(function: function, detail: "its header announces \(length - 1) bytes, \(a.count - headerLength) came")
        }
        return Array(a[(s + headerLength)...])
    }
}
