/// Converts between registers and typed values for every ``DataType`` and ``RegisterOrder``.
///
/// Encoding is the exact inverse of decoding. A value that does not fit the type is an error,
/// never a silent wrap.
public enum RegisterCodec {
    // MARK: Decode

    /// Decodes `registers` (exactly `type.registerCount` of them) as `type`.
    public static func decode(_ registers: some Collection<UInt16>, as type: DataType, order: RegisterOrder = .default) throws(ModbusError) -> ModbusValue {
        guard registers.count == type.registerCount else {
            throw .invalidArgument("\(type) needs \(type.registerCount) registers, got \(registers.count)")
        }
        if case .string = type {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(registers.count * 2)
            for r in registers {
                let hi = UInt8(r >> 8), lo = UInt8(r & 0xFF)
                if order.byte == .big { bytes += [hi, lo] } else { bytes += [lo, hi] }
            }
            while let last = bytes.last, last == 0 || last == 0x20 { bytes.removeLast() }
            if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
            return .string(String(decoding: bytes, as: UTF8.self))
        }
        let raw = combine(registers, order: order)
        switch type {
        case .bool: return .bool(raw != 0)
        case .int16: return .int(Int64(Int16(truncatingIfNeeded: raw)))
        case .uint16: return .uint(raw)
        case .int32: return .int(Int64(Int32(truncatingIfNeeded: raw)))
        case .uint32: return .uint(raw)
        case .int64: return .int(Int64(bitPattern: raw))
        case .uint64: return .uint(raw)
        case .float32: return .double(Double(Float(bitPattern: UInt32(truncatingIfNeeded: raw))))
        case .float64: return .double(Double(bitPattern: raw))
        case .string: fatalError("handled above")
        }
    }

    /// Decodes bit `bit` (0 = least significant) of one register.
    public static func decodeBit(_ register: UInt16, bit: Int) -> Bool {
        (register >> UInt16(bit)) & 1 == 1
    }

    /// Joins registers into one unsigned integer, most significant word first after reordering.
    static func combine(_ registers: some Collection<UInt16>, order: RegisterOrder) -> UInt64 {
        var words = Array(registers)
        if order.word == .little { words.reverse() }
        var v: UInt64 = 0
        for w in words {
            let word = order.byte == .big ? w : w.byteSwapped
            v = v << 16 | UInt64(word)
        }
        return v
    }

    /// Splits an unsigned integer into `count` registers in the given order.
    static func split(_ value: UInt64, count: Int, order: RegisterOrder) -> [UInt16] {
        var words = [UInt16](repeating: 0, count: count)
        var v = value
        for i in stride(from: count - 1, through: 0, by: -1) {
            words[i] = UInt16(truncatingIfNeeded: v)
            v >>= 16
        }
        if order.byte == .little { words = words.map { $0.byteSwapped } }
        if order.word == .little { words.reverse() }
        return words
    }

    // MARK: Encode

    /// Encodes `value` as `type`. Integers must fit exactly; floats are rounded to the nearest
    /// integer only when `type` is an integer type and the value is whole; strings must fit.
    public static func encode(_ value: ModbusValue, as type: DataType, order: RegisterOrder = .default) throws(ModbusError) -> [UInt16] {
        switch type {
        case .string(let n):
            guard case .string(let s) = value else { throw .valueOutOfRange("\(value) is not a string") }
            var bytes = Array(s.utf8)
            guard bytes.count <= n * 2 else { throw .valueOutOfRange("\"\(s)\" is longer than \(n * 2) bytes") }
            bytes += [UInt8](repeating: 0, count: n * 2 - bytes.count)
            return (0..<n).map { i in
                let hi = bytes[2 * i], lo = bytes[2 * i + 1]
                return order.byte == .big ? UInt16(hi) << 8 | UInt16(lo) : UInt16(lo) << 8 | UInt16(hi)
            }
        case .bool:
            switch value {
            case .bool(let b): return [b ? 1 : 0]
            case .int(0), .uint(0): return [0]
            case .int(1), .uint(1): return [1]
            case .double(let d) where d == 0 || d == 1: return [d == 1 ? 1 : 0]
            default: throw .valueOutOfRange("\(value) is not a bool (true/false, 1/0)")
            }
        case .float32:
            guard let d = value.doubleValue, d.isFinite else { throw .valueOutOfRange("\(value) is not a finite number") }
            guard abs(d) <= Double(Float.greatestFiniteMagnitude) else { throw .valueOutOfRange("\(value) does not fit float32") }
            return split(UInt64(Float(d).bitPattern), count: 2, order: order)
        case .float64:
            guard let d = value.doubleValue, d.isFinite else { throw .valueOutOfRange("\(value) is not a finite number") }
            return split(d.bitPattern, count: 4, order: order)
        case .int16, .uint16, .int32, .uint32, .int64, .uint64:
            let bits = type.registerCount * 16
            let pattern: UInt64
            switch value {
            case .int(let i):
                pattern = try integerPattern(signed: i, type: type, bits: bits)
            case .uint(let u):
                if type.isSigned {
                    guard u <= UInt64(Int64.max) else { throw .valueOutOfRange("\(u) does not fit \(type)") }
                    pattern = try integerPattern(signed: Int64(u), type: type, bits: bits)
                } else {
                    guard bits == 64 || u < (UInt64(1) << UInt64(bits)) else { throw .valueOutOfRange("\(u) does not fit \(type)") }
                    pattern = u
                }
            case .double(let d):
                guard d.isFinite, d == d.rounded() else { throw .valueOutOfRange("\(Scaling.format(d)) is not a whole number for \(type)") }
                if d < 0 {
                    guard d >= -9_223_372_036_854_775_808 else { throw .valueOutOfRange("\(Scaling.format(d)) does not fit \(type)") }
                    pattern = try integerPattern(signed: Int64(d), type: type, bits: bits)
                } else {
                    guard d < 18_446_744_073_709_551_616 else { throw .valueOutOfRange("\(Scaling.format(d)) does not fit \(type)") }
                    return try encode(.uint(UInt64(d)), as: type, order: order)
                }
            case .bool(let b):
                pattern = b ? 1 : 0
            case .string(let s):
                throw .valueOutOfRange("\"\(s)\" is not a number")
            }
            return split(pattern, count: type.registerCount, order: order)
        }
    }

    private static func integerPattern(signed i: Int64, type: DataType, bits: Int) throws(ModbusError) -> UInt64 {
        if type.isSigned {
            if bits < 64 {
                let lim = Int64(1) << Int64(bits - 1)
                guard i >= -lim && i < lim else { throw .valueOutOfRange("\(i) does not fit \(type)") }
                return UInt64(bitPattern: i) & ((UInt64(1) << UInt64(bits)) - 1)
            }
            return UInt64(bitPattern: i)
        }
        guard i >= 0 else { throw .valueOutOfRange("\(i) does not fit \(type)") }
        guard bits == 64 || UInt64(i) < (UInt64(1) << UInt64(bits)) else { throw .valueOutOfRange("\(i) does not fit \(type)") }
        return UInt64(i)
    }
}

/// Linear scaling: `value = raw * scale + offset`.
public struct Scaling: Sendable, Equatable, Hashable {
    public var scale: Double
    public var offset: Double

    public init(scale: Double = 1, offset: Double = 0) {
        self.scale = scale
        self.offset = offset
    }

    public var isIdentity: Bool { scale == 1 && offset == 0 }

    /// Formats a number the shortest way that reads back to the same Double: `21.5`, `3`, `-0.1`,
    /// never `21.500000001` from float noise already rounded away by the caller.
    public static func format(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
        if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
        return "\(d)"   // Swift prints the shortest representation that round-trips
    }

    /// Raw -> engineering value. Rounds away float noise (`215 * 0.1` is `21.5`, not `21.500000000000004`).
    public func apply(_ raw: ModbusValue) -> ModbusValue {
        switch raw {
        case .string, .bool: return raw
        default: break
        }
        guard !isIdentity, let d = raw.doubleValue else { return raw }
        return .double(Self.clean(d * scale + offset))
    }

    /// Engineering value -> raw value for `type`: the exact inverse, rounded to the nearest whole
    /// raw value for integer types; fails when the result does not fit.
    public func invert(_ value: ModbusValue, for type: DataType) throws(ModbusError) -> ModbusValue {
        if isIdentity { return value }
        guard let d = value.doubleValue, d.isFinite else { throw .valueOutOfRange("\(value) is not a number") }
        guard scale != 0 else { throw .invalidArgument("scale 0 cannot be inverted") }
        let raw = (d - offset) / scale
        if type.isInteger || type == .bool {
            let r = raw.rounded()
            guard abs(raw - r) < 1e-6 * max(1, abs(r)) else {
                throw .valueOutOfRange("\(Scaling.format(d)) is not a multiple of the scale \(Scaling.format(scale))")
            }
            if let range = type.integerRange, !range.contains(r) { throw .valueOutOfRange("\(Scaling.format(d)) does not fit \(type) after scaling") }
            return .double(r)
        }
        return .double(raw)
    }

    /// Rounds to 12 significant digits, which removes binary noise from the multiplication.
    static func clean(_ d: Double) -> Double {
        guard d.isFinite, d != 0 else { return d }
        let digits = 12 - Int((abs(d)).log10Floor) - 1
        guard digits > 0, digits < 300 else { return d }
        let p = pow10(digits)
        return (d * p).rounded() / p
    }

    private static func pow10(_ n: Int) -> Double {
        var r = 1.0
        for _ in 0..<n { r *= 10 }
        return r
    }
}

extension Double {
    var log10Floor: Double {
        var v = self, n = 0.0
        if v >= 1 {
            while v >= 10 { v /= 10; n += 1 }
        } else {
            while v < 1 && n > -400 { v *= 10; n -= 1 }
        }
        return n
    }
}
