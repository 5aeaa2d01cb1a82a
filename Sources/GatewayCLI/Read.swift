import ArgumentParser
import Modbus

struct Read: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read a device by hand (commissioning), like mbpoll.",
        discussion: "Example: gateway read --tcp 127.0.0.1:1502 --unit 1 --holding 100 --count 2 --type float32 --word-order little")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var point: PointOptions

    @Option(help: "How many values (of --type) to read.") var count: Int = 1
    @Flag(help: "Also print the raw registers in hex.") var raw = false

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
        let width = point.kind.isBit ? 1 : point.dataType.registerCount
        guard count * width <= point.kind.maxReadCount else {
            throw ValidationError("--count \(count) x \(width) exceeds the Modbus limit of \(point.kind.maxReadCount) per read")
        }
    }

    func run() async throws {
        let bus = ModbusBus(configuration: BusConfiguration(name: "cli", transport: try connection.transport(),
                                                            responseTimeout: .milliseconds(connection.timeoutMs)))
        defer { bus.close() }
        let width = point.kind.isBit ? 1 : point.dataType.registerCount
        do {
            let result = try await bus.read(point.kind, unit: point.unit, address: point.address, count: count * width)
            switch result {
            case .bits(let bits):
                for (i, b) in bits.enumerated() { emit("\(point.kind) \(point.address + i) = \(b)") }
            case .registers(let regs):
                for i in 0..<count {
                    let slice = regs[(i * width)..<((i + 1) * width)]
                    let value = point.scaling.apply(try RegisterCodec.decode(slice, as: point.dataType, order: point.order))
                    let hex = raw ? "  [" + slice.map { hex4($0) }.joined(separator: " ") + "]" : ""
                    emit("\(point.kind) \(point.address + i * width) (\(point.dataType) \(point.order)) = \(value)\(hex)")
                }
            }
        } catch let error as ModbusError {
            emitError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

func hex4(_ v: UInt16) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 4 - s.count) + s
}
