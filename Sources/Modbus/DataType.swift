/// How a point's value is laid out in registers.
public enum DataType: Sendable, Equatable, Hashable, CustomStringConvertible {
    case bool
    case int16, uint16, int32, uint32, int64, uint64
    case float32, float64
    /// An ASCII/UTF-8 string of `registers` registers (2 bytes each), NUL padded.
    case string(registers: Int)

    /// Parses the config / CLI spelling: `bool`, `int16` ... `float64`, `string` (with `length` registers).
    public init?(name: String, stringRegisters: Int = 1) {
        switch name.lowercased() {
        case "bool": self = .bool
        case "int16": self = .int16
        case "uint16": self = .uint16
        case "int32": self = .int32
        case "uint32": self = .uint32
        case "int64": self = .int64
        case "uint64": self = .uint64
        case "float32", "float": self = .float32
        case "float64", "double": self = .float64
        case "string": self = .string(registers: stringRegisters)
        default: return nil
        }
    }

    public static let names = ["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"]

    /// Registers this type occupies (a bool in a register occupies one; on a bit table one bit).
    public var registerCount: Int {
        switch self {
        case .bool, .int16, .uint16: 1
        case .int32, .uint32, .float32: 2
        case .int64, .uint64, .float64: 4
        case .string(let n): n
        }
    }

    public var isInteger: Bool {
        switch self {
        case .int16, .uint16, .int32, .uint32, .int64, .uint64: true
        default: false
        }
    }

    public var isSigned: Bool {
        switch self {
        case .int16, .int32, .int64: true
        default: false
        }
    }

    public var description: String {
        switch self {
        case .bool: "bool"
        case .int16: "int16"
        case .uint16: "uint16"
        case .int32: "int32"
        case .uint32: "uint32"
        case .int64: "int64"
        case .uint64: "uint64"
        case .float32: "float32"
        case .float64: "float64"
        case .string(let n): "string(\(n) registers)"
        }
    }

    /// Range of the raw integer type, as doubles (for range checks).
    var integerRange: ClosedRange<Double>? {
        switch self {
        case .int16: Double(Int16.min)...Double(Int16.max)
        case .uint16: 0...Double(UInt16.max)
        case .int32: Double(Int32.min)...Double(Int32.max)
        case .uint32: 0...Double(UInt32.max)
        case .int64: Double(Int64.min)...Double(Int64.max)
        case .uint64: 0...Double(UInt64.max)
        default: nil
        }
    }
}

/// Order of 16-bit words for values wider than one register. `big`: most significant word first
/// (the Modbus convention, "ABCD"); `little`: least significant word first ("CDAB").
public enum WordOrder: String, Sendable, Equatable, Hashable, CaseIterable {
    case big, little
}

/// Order of the two bytes inside each register. `big` is the Modbus convention; `little` is for
/// byte-swapped devices ("BADC", "DCBA").
public enum ByteOrder: String, Sendable, Equatable, Hashable, CaseIterable {
    case big, little
}

/// Word and byte order together, also spelled as the usual four letters.
public struct RegisterOrder: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var word: WordOrder
    public var byte: ByteOrder

    public init(word: WordOrder = .big, byte: ByteOrder = .big) {
        self.word = word
        self.byte = byte
    }

    /// `ABCD` (big/big), `CDAB` (little words), `BADC` (swapped bytes), `DCBA` (both).
    public init?(letters: String) {
        switch letters.uppercased() {
        case "ABCD": self.init(word: .big, byte: .big)
        case "CDAB": self.init(word: .little, byte: .big)
        case "BADC": self.init(word: .big, byte: .little)
        case "DCBA": self.init(word: .little, byte: .little)
        default: return nil
        }
    }

    public static let `default` = RegisterOrder()

    public var description: String {
        switch (word, byte) {
        case (.big, .big): "ABCD"
        case (.little, .big): "CDAB"
        case (.big, .little): "BADC"
        case (.little, .little): "DCBA"
        }
    }
}

/// A decoded value, before or after scaling.
public enum ModbusValue: Sendable, Equatable, Hashable, CustomStringConvertible {
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)

    public var description: String {
        switch self {
        case .bool(let b): b ? "true" : "false"
        case .int(let i): String(i)
        case .uint(let u): String(u)
        case .double(let d): Scaling.format(d)
        case .string(let s): s
        }
    }

    /// The value as a Double when numeric (bools are 0/1).
    public var doubleValue: Double? {
        switch self {
        case .bool(let b): b ? 1 : 0
        case .int(let i): Double(i)
        case .uint(let u): Double(u)
        case .double(let d): d
        case .string: nil
        }
    }
}
