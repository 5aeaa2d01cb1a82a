import ArgumentParser
import LineSettings
import Modbus

/// Where to reach a device by hand, like mbpoll: `--tcp host:port` or `--rtu /dev/ttyUSB0 --baud ...`.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "Modbus TCP device, HOST:PORT ([::1]:1502 for IPv6).")
    var tcp: String?

    @Option(help: "Modbus RTU serial port, e.g. /dev/ttyUSB0.")
    var rtu: String?

    @Option(name: .customLong("rtu-tcp"), help: "Serial device server carrying RTU frames over TCP, HOST:PORT.")
    var rtuTCP: String?

    @Option(help: "RTU baud rate.")
    var baud: Int = 19200

    @Option(help: "RTU parity: N, E or O.")
    var parity: String = "N"

    @Option(name: .customLong("data-bits"), help: "RTU data bits (5-8).")
    var dataBits: Int = 8

    @Option(name: .customLong("stop-bits"), help: "RTU stop bits (1 or 2).")
    var stopBits: Int = 1

    @Option(help: "Response timeout in milliseconds.")
    var timeoutMs: Int = 1000

    func validate() throws {
        guard [tcp, rtu, rtuTCP].compactMap({ $0 }).count == 1 else {
            throw ValidationError("give exactly one of --tcp HOST:PORT, --rtu PATH or --rtu-tcp HOST:PORT")
        }
        if let tcp { _ = try parseHostPort(tcp) }
        if let rtuTCP { _ = try parseHostPort(rtuTCP) }
        guard Parity(letter: parity) != nil else { throw ValidationError("--parity must be N, E or O") }
        guard BaudRate.isSupported(baud) else { throw ValidationError("--baud \(baud) is not one of \(BaudRate.supportedList)") }
        guard (5...8).contains(dataBits) else { throw ValidationError("--data-bits must be 5 to 8") }
        guard (1...2).contains(stopBits) else { throw ValidationError("--stop-bits must be 1 or 2") }
        guard (1...60_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms must be 1 to 60000") }
    }

    func transport() throws -> ModbusTransport {
        if let tcp {
            let (h, p) = try parseHostPort(tcp)
            return .tcp(host: h, port: p)
        }
        if let rtuTCP {
            let (h, p) = try parseHostPort(rtuTCP)
            return .rtuOverTCP(host: h, port: p)
        }
        return .rtu(RTUSettings(path: rtu ?? "", baud: baud, parity: Parity(letter: parity) ?? .none,
                                dataBits: dataBits, stopBits: stopBits))
    }
}

/// HOST:PORT, [v6]:PORT.
func parseHostPort(_ s: String) throws -> (String, Int) {
    var host: Substring, port: Substring
    if s.hasPrefix("["), let close = s.firstIndex(of: "]") {
        host = s[s.index(after: s.startIndex)..<close]
        let rest = s[s.index(after: close)...]
        guard rest.hasPrefix(":") else { throw ValidationError("'\(s)': expected [HOST]:PORT") }
        port = rest.dropFirst()
    } else {
        guard let colon = s.lastIndex(of: ":") else { throw ValidationError("'\(s)': expected HOST:PORT") }
        host = s[..<colon]
        port = s[s.index(after: colon)...]
    }
    guard let p = Int(port), (0...65535).contains(p), !host.isEmpty else { throw ValidationError("'\(s)': expected HOST:PORT with a port 0-65535") }
    return (String(host), p)
}

/// The table and address to act on, and how to interpret registers.
struct PointOptions: ParsableArguments {
    @Option(help: "Coil address (FC1 / FC5, FC15).") var coil: Int?
    @Option(help: "Discrete input address (FC2).") var discrete: Int?
    @Option(help: "Holding register address (FC3 / FC6, FC16).") var holding: Int?
    @Option(help: "Input register address (FC4).") var input: Int?

    @Option(help: "Unit (slave) id.") var unit: Int = 1

    @Option(help: "Value type: \(DataType.names.joined(separator: ", ")).")
    var type: String = "uint16"

    @Option(help: "Registers of a string type.") var length: Int = 1

    @Option(name: .customLong("word-order"), help: "Word order for 32/64-bit types: big (ABCD) or little (CDAB).")
    var wordOrder: String = "big"

    @Option(name: .customLong("byte-order"), help: "Byte order inside a register: big or little (byte-swapped devices).")
    var byteOrder: String = "big"

    @Option(help: "value = raw * scale + offset.") var scale: Double = 1
    @Option(help: "value = raw * scale + offset.") var offset: Double = 0

    func validate() throws {
        let given = [coil, discrete, holding, input].compactMap { $0 }
        guard given.count == 1 else { throw ValidationError("give exactly one of --coil, --discrete, --holding, --input") }
        guard (0...65535).contains(given[0]) else { throw ValidationError("address must be 0-65535") }
        guard (0...255).contains(unit) else { throw ValidationError("--unit must be 0-255") }
        guard DataType(name: type, stringRegisters: length) != nil else {
            throw ValidationError("--type must be one of \(DataType.names.joined(separator: ", "))")
        }
        guard (1...123).contains(length) else { throw ValidationError("--length must be 1-123") }
        guard WordOrder(rawValue: wordOrder) != nil else { throw ValidationError("--word-order must be big or little") }
        guard ByteOrder(rawValue: byteOrder) != nil else { throw ValidationError("--byte-order must be big or little") }
        guard scale != 0, scale.isFinite, offset.isFinite else { throw ValidationError("--scale must be a non-zero number") }
    }

    var kind: RegisterKind {
        if coil != nil { return .coil }
        if discrete != nil { return .discrete }
        if holding != nil { return .holding }
        return .input
    }
    var address: Int { coil ?? discrete ?? holding ?? input ?? 0 }
    var dataType: DataType { kind.isBit ? .bool : (DataType(name: type, stringRegisters: length) ?? .uint16) }
    var order: RegisterOrder {
        RegisterOrder(word: WordOrder(rawValue: wordOrder) ?? .big, byte: ByteOrder(rawValue: byteOrder) ?? .big)
    }
    var scaling: Scaling { Scaling(scale: scale, offset: offset) }
}
