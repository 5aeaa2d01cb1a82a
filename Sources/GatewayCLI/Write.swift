import ArgumentParser
import Modbus

struct Write: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a device by hand (commissioning), then read the value back.",
        discussion: "Example: gateway write --tcp 127.0.0.1:1502 --unit 1 --holding 100 --type int16 --scale 0.1 --value 21.5")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var point: PointOptions

    @Option(help: "The value: true/false/1/0 for coils and bool, a number, or text for --type string.")
    var value: String

    @Flag(name: .customLong("fc16"), help: "Use FC16 even for one register (devices without FC6).")
    var forceMultiple = false

    func validate() throws {
        guard point.kind.isWritable else { throw ValidationError("only coils and holding registers can be written") }
    }

    func run() async throws {
        let type = point.dataType
        let parsed: ModbusValue
        do {
            parsed = try parseValue(value, for: type)
        } catch let e as ValidationError {
            emitError("error: \(e.message)")
            throw ExitCode(2)
        }
        let bus = ModbusBus(configuration: BusConfiguration(name: "cli", transport: try connection.transport(),
                                                            responseTimeout: .milliseconds(connection.timeoutMs)))
        defer { bus.close() }
        do {
            if point.kind == .coil {
                guard case .bool(let b) = parsed else { throw ModbusError.valueOutOfRange("\(value) is not a bool") }
                try await bus.writeCoil(unit: point.unit, address: point.address, value: b)
                let back = try await bus.readCoils(unit: point.unit, address: point.address, count: 1)
                emit("coil \(point.address) = \(back[0])")
            } else {
                let raw = try point.scaling.invert(parsed, for: type)
                let regs = try RegisterCodec.encode(raw, as: type, order: point.order)
                if regs.count == 1 && !forceMultiple {
                    try await bus.writeRegister(unit: point.unit, address: point.address, value: regs[0])
                } else {
                    try await bus.writeRegisters(unit: point.unit, address: point.address, values: regs)
                }
                let back = try await bus.readHoldingRegisters(unit: point.unit, address: point.address, count: regs.count)
                let v = point.scaling.apply(try RegisterCodec.decode(back, as: type, order: point.order))
                emit("holding \(point.address) (\(type) \(point.order)) = \(v)")
            }
        } catch let error as ModbusError {
            emitError("error: \(error)\(error.isOutcomeUnknown ? " (outcome unknown: the write may have happened)" : "")")
            throw ExitCode(error.isCallerError ? 2 : 1)
        }
    }
}

extension ModbusError {
    var isCallerError: Bool {
        switch self {
        case .invalidArgument, .valueOutOfRange: true
        default: false
        }
    }
}

/// Parses a command-line value for `type`.
func parseValue(_ s: String, for type: DataType) throws -> ModbusValue {
    switch type {
    case .bool:
        switch s.lowercased() {
        case "true", "1", "on": return .bool(true)
        case "false", "0", "off": return .bool(false)
        default: throw ValidationError("'\(s)' is not a bool (true/false, 1/0, on/off)")
        }
    case .string: return .string(s)
    default:
        if let i = Int64(s) { return .int(i) }
        if let u = UInt64(s) { return .uint(u) }
        if let d = Double(s), d.isFinite { return .double(d) }
        throw ValidationError("'\(s)' is not a number")
    }
}
