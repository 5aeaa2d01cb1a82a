import GatewayConfig
import Modbus

// The decisions of the Modbus TCP front, without sockets: which bus and unit an outside request
// reaches, whether it may write there, and the request and answer PDUs. Pure; tested in-process.

/// One outside request, decoded from its PDU.
enum FrontRequest: Equatable {
    case read(RegisterKind, address: Int, count: Int)
    case writeCoil(address: Int, value: Bool)
    case writeRegister(address: Int, value: UInt16)
    case writeCoils(address: Int, values: [Bool])
    case writeRegisters(address: Int, values: [UInt16])

    var function: UInt8 {
        switch self {
        case .read(let k, _, _): switch k { case .coil: 1; case .discrete: 2; case .holding: 3; case .input: 4 }
        case .writeCoil: 5
        case .writeRegister: 6
        case .writeCoils: 15
        case .writeRegisters: 16
        }
    }

    /// The table, first address and count a write touches (nil for reads).
    var written: (table: RegisterTable, address: Int, count: Int)? {
        switch self {
        case .read: nil
        case .writeCoil(let a, _): (.coil, a, 1)
        case .writeCoils(let a, let v): (.coil, a, v.count)
        case .writeRegister(let a, _): (.holding, a, 1)
        case .writeRegisters(let a, let v): (.holding, a, v.count)
        }
    }

    /// Decodes a request PDU; the exception code to answer when it cannot be served as asked.
    static func decode(_ pdu: [UInt8]) -> Result<FrontRequest, ModbusException> {
        guard let fc = pdu.first else { return .failure(.illegalFunction) }
        func u16(_ i: Int) -> Int { Int(pdu[i]) << 8 | Int(pdu[i + 1]) }
        switch fc {
        case 1, 2, 3, 4:
            guard pdu.count == 5 else { return .failure(.illegalDataValue) }
            let kind: RegisterKind = [1: .coil, 2: .discrete, 3: .holding, 4: .input][fc]!
            let count = u16(3)
            guard (1...kind.maxReadCount).contains(count) else { return .failure(.illegalDataValue) }
            guard u16(1) + count <= 0x10000 else { return .failure(.illegalDataAddress) }
            return .success(.read(kind, address: u16(1), count: count))
        case 5:
            guard pdu.count == 5, pdu[4] == 0, pdu[3] == 0xFF || pdu[3] == 0 else { return .failure(.illegalDataValue) }
            return .success(.writeCoil(address: u16(1), value: pdu[3] == 0xFF))
        case 6:
            guard pdu.count == 5 else { return .failure(.illegalDataValue) }
            return .success(.writeRegister(address: u16(1), value: UInt16(u16(3))))
        case 15:
            guard pdu.count >= 6 else { return .failure(.illegalDataValue) }
            let count = u16(3), bytes = Int(pdu[5])
            guard (1...1968).contains(count), bytes == (count + 7) / 8, pdu.count == 6 + bytes else { return .failure(.illegalDataValue) }
            guard u16(1) + count <= 0x10000 else { return .failure(.illegalDataAddress) }
            return .success(.writeCoils(address: u16(1), values: (0..<count).map { pdu[6 + $0 / 8] & (1 << ($0 % 8)) != 0 }))
        case 16:
            guard pdu.count >= 6 else { return .failure(.illegalDataValue) }
            let count = u16(3), bytes = Int(pdu[5])
            guard (1...123).contains(count), bytes == count * 2, pdu.count == 6 + bytes else { return .failure(.illegalDataValue) }
            guard u16(1) + count <= 0x10000 else { return .failure(.illegalDataAddress) }
            return .success(.writeRegisters(address: u16(1), values: (0..<count).map { UInt16(u16(6 + 2 * $0)) }))
        default:
            return .failure(.illegalFunction)
        }
    }

    /// The answer PDU to a request that succeeded (`read` holds what a read returned).
    func answer(read: ReadResult?) -> [UInt8] {
        func u16(_ v: Int) -> [UInt8] { [UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
        switch self {
        case .read:
            switch read {
            case .bits(let bits):
                var packed = [UInt8](repeating: 0, count: (bits.count + 7) / 8)
                for (i, b) in bits.enumerated() where b { packed[i / 8] |= 1 << (i % 8) }
                return [function, UInt8(packed.count)] + packed
            case .registers(let regs):
                return [function, UInt8(regs.count * 2)] + regs.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
            case nil:
                return [function | 0x80, ModbusException.slaveDeviceFailure.rawValue]
            }
        case .writeCoil(let a, let v): return [5] + u16(a) + [v ? 0xFF : 0, 0]
        case .writeRegister(let a, let v): return [6] + u16(a) + u16(Int(v))
        case .writeCoils(let a, let v): return [15] + u16(a) + u16(v.count)
        case .writeRegisters(let a, let v): return [16] + u16(a) + u16(v.count)
        }
    }
}

extension ModbusException {
    /// What a bus error becomes for an outside client of the front.
    static func answering(_ error: ModbusError) -> ModbusException {
        switch error {
        case .exception(let e, _): e
        case .timeout, .connectFailed, .connectionLost, .badCRC, .badResponse: .gatewayTargetFailedToRespond
        case .busBusy: .slaveDeviceBusy
        case .closed: .gatewayPathUnavailable
        case .invalidArgument, .valueOutOfRange: .illegalDataValue
        case .other: .slaveDeviceFailure
        }
    }
}

/// Which outside unit reaches which bus and unit, and which writes are allowed.
struct ModbusFrontPolicy: Sendable {
    let settings: ModbusServerSettings

    func route(_ unit: Int) -> ModbusServerTarget? { settings.units[unit] }

    /// How long the gate stays shut after an outside request held the line for `held`, so that
    /// outside requests take at most `line_share` of it: (1 / share - 1) x held (3 x at 25 %).
    func rest(afterHolding held: Duration) -> Duration {
        held * ((1 / settings.lineShare) - 1)
    }

    /// Writes are refused unless the whole range written lies in one opened range. (Points with a
    /// pulse, a fail-safe or a signature cannot be opened: `gateway check` refuses that.)
    func mayWrite(_ request: FrontRequest, at target: ModbusServerTarget) -> Bool {
        guard let w = request.written else { return true }
        return settings.writable.contains { $0.covers(target, w.table, address: w.address, count: w.count) }
    }
}
