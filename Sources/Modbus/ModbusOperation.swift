/// One Modbus transaction, as a bus asks it of its connection.
enum ModbusOperation {
    /// FC 1 (coils) or FC 2 (discrete inputs).
    case readBits(RegisterKind, address: Int, count: Int)
    /// FC 3 (holding) or FC 4 (input registers).
    case readRegisters(RegisterKind, address: Int, count: Int)
    /// FC 5.
    case writeBit(address: Int, value: Bool)
    /// FC 15.
    case writeBits(address: Int, values: [Bool])
    /// FC 6.
    case writeRegister(address: Int, value: UInt16)
    /// FC 16.
    case writeRegisters(address: Int, values: [UInt16])
    /// FC 23: write, then read, in one transaction.
    case writeAndRead(writeAddress: Int, values: [UInt16], readAddress: Int, readCount: Int)

    /// Names errors and logs ("read holding registers: timeout").
    var name: String {
        switch self {
        case .readBits(let k, _, _): k == .coil ? "read coils" : "read discrete inputs"
        case .readRegisters(let k, _, _): k == .holding ? "read holding registers" : "read input registers"
        case .writeBit: "write single coil"
        case .writeBits: "write multiple coils"
        case .writeRegister: "write single register"
        case .writeRegisters: "write multiple registers"
        case .writeAndRead: "write and read registers"
        }
    }

    // MARK: PDU (for the framings we do ourselves: RTU over TCP)

    var function: UInt8 {
        switch self {
        case .readBits(let k, _, _): k == .coil ? 1 : 2
        case .readRegisters(let k, _, _): k == .holding ? 3 : 4
        case .writeBit: 5
        case .writeRegister: 6
        case .writeBits: 15
        case .writeRegisters: 16
        case .writeAndRead: 23
        }
    }

    /// The request PDU, function code first (built in one buffer: it is made for every request).
    var requestPDU: [UInt8] {
        var pdu: [UInt8] = []
        pdu.reserveCapacity(6 + byteCount)
        func u16(_ v: Int) { pdu.append(UInt8((v >> 8) & 0xFF)); pdu.append(UInt8(v & 0xFF)) }
        func regs(_ values: [UInt16]) { for v in values { pdu.append(UInt8(v >> 8)); pdu.append(UInt8(v & 0xFF)) } }
        pdu.append(function)
        switch self {
        case .readBits(_, let a, let c), .readRegisters(_, let a, let c):
            u16(a); u16(c)
        case .writeBit(let a, let v):
            u16(a); pdu.append(v ? 0xFF : 0x00); pdu.append(0x00)
        case .writeRegister(let a, let v):
            u16(a); u16(Int(v))
        case .writeBits(let a, let values):
            u16(a); u16(values.count); pdu.append(UInt8(byteCount))
            var packed = [UInt8](repeating: 0, count: byteCount)
            for (i, v) in values.enumerated() where v { packed[i / 8] |= 1 << (i % 8) }
            pdu.append(contentsOf: packed)
        case .writeRegisters(let a, let values):
            u16(a); u16(values.count); pdu.append(UInt8(byteCount)); regs(values)
        case .writeAndRead(let wa, let values, let ra, let rc):
            u16(ra); u16(rc); u16(wa); u16(values.count); pdu.append(UInt8(byteCount)); regs(values)
        }
        return pdu
    }

    /// The data bytes a write carries after its byte count (0 for the others).
    private var byteCount: Int {
        switch self {
        case .writeBits(_, let values): (values.count + 7) / 8
        case .writeRegisters(_, let values), .writeAndRead(_, let values, _, _): values.count * 2
        default: 0
        }
    }

    /// Checks an answer PDU against the request and decodes it. Exceptions are thrown as such.
    func decode(_ pdu: [UInt8]) throws(ModbusError) -> ModbusAnswer {
        guard let fc = pdu.first else { throw .badResponse(function: name, detail: "empty answer") }
        if fc == function | 0x80 {
            guard pdu.count == 2 else { throw .badResponse(function: name, detail: "exception of \(pdu.count) bytes") }
            guard let e = ModbusException(rawValue: pdu[1]) else {
                throw .badResponse(function: name, detail: "unknown exception code \(pdu[1])")
            }
            throw .exception(e, function: name)
        }
        guard fc == function else { throw .badResponse(function: name, detail: "answer to function \(fc), not \(function)") }
        switch self {
        case .readBits(_, _, let count):
            guard pdu.count >= 2, Int(pdu[1]) == (count + 7) / 8, pdu.count == 2 + Int(pdu[1]) else {
                throw .badResponse(function: name, detail: "\(pdu.count) bytes for \(count) bits")
            }
            return .bits((0..<count).map { pdu[2 + $0 / 8] & (1 << ($0 % 8)) != 0 })
        case .readRegisters(_, _, let count), .writeAndRead(_, _, _, let count):
            guard pdu.count >= 2, Int(pdu[1]) == count * 2, pdu.count == 2 + count * 2 else {
                throw .badResponse(function: name, detail: "\(pdu.count) bytes for \(count) registers")
            }
            return .registers((0..<count).map { UInt16(pdu[2 + 2 * $0]) << 8 | UInt16(pdu[3 + 2 * $0]) })
        case .writeBit, .writeRegister:
            guard pdu == requestPDU else { throw .badResponse(function: name, detail: "the echo differs from the request") }
            return .done
        case .writeBits, .writeRegisters:
            guard pdu.count == 5, Array(pdu) == Array(requestPDU.prefix(5)) else {
                throw .badResponse(function: name, detail: "the answer does not name the written range")
            }
            return .done
        }
    }
}

/// What a transaction gave back.
enum ModbusAnswer {
    case bits([Bool])
    case registers([UInt16])
    case done
}
