import Testing
@testable import Modbus

@Suite("Register codec")
struct RegisterCodecTests {
    static let orders: [RegisterOrder] = ["ABCD", "CDAB", "BADC", "DCBA"].compactMap { RegisterOrder(letters: $0) }

    @Test("known vectors: float32 230.5 in every order", arguments: [
        ("ABCD", [0x4366, 0x8000]), ("CDAB", [0x8000, 0x4366]), ("BADC", [0x6643, 0x0080]), ("DCBA", [0x0080, 0x6643]),
    ] as [(String, [UInt16])])
    func float32Vectors(order: String, regs: [UInt16]) throws {
        let o = try #require(RegisterOrder(letters: order))
        #expect(try RegisterCodec.encode(.double(230.5), as: .float32, order: o) == regs)
        #expect(try RegisterCodec.decode(regs, as: .float32, order: o) == .double(230.5))
    }

    @Test("known vectors: uint32 0x12345678 in every order", arguments: [
        ("ABCD", [0x1234, 0x5678]), ("CDAB", [0x5678, 0x1234]), ("BADC", [0x3412, 0x7856]), ("DCBA", [0x7856, 0x3412]),
    ] as [(String, [UInt16])])
    func uint32Vectors(order: String, regs: [UInt16]) throws {
        let o = try #require(RegisterOrder(letters: order))
        #expect(try RegisterCodec.encode(.uint(0x1234_5678), as: .uint32, order: o) == regs)
        #expect(try RegisterCodec.decode(regs, as: .uint32, order: o) == .uint(0x1234_5678))
    }

    @Test("known vectors: other types")
    func otherVectors() throws {
        #expect(try RegisterCodec.encode(.int(-2), as: .int32) == [0xFFFF, 0xFFFE])
        #expect(try RegisterCodec.encode(.int(-1), as: .int16) == [0xFFFF])
        #expect(try RegisterCodec.decode([0x8000], as: .int16) == .int(-32768))
        #expect(try RegisterCodec.encode(.double(1.0), as: .float64) == [0x3FF0, 0, 0, 0])
        #expect(try RegisterCodec.encode(.int(-3), as: .int64) == [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD])
        #expect(try RegisterCodec.encode(.uint(UInt64.max), as: .uint64) == [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF])
        #expect(try RegisterCodec.encode(.string("AB1"), as: .string(registers: 3)) == [0x4142, 0x3100, 0])
        #expect(try RegisterCodec.decode([0x4142, 0x3100, 0], as: .string(registers: 3)) == .string("AB1"))
        #expect(try RegisterCodec.decode([0x4241], as: .string(registers: 1), order: RegisterOrder(word: .big, byte: .little)) == .string("AB"))
        #expect(try RegisterCodec.decode([0x0002], as: .bool) == .bool(true))
        #expect(RegisterCodec.decodeBit(0b0100, bit: 2) == true)
        #expect(RegisterCodec.decodeBit(0b0100, bit: 1) == false)
    }

    @Test("every type x order round-trips", arguments: RegisterCodecTests.orders)
    func roundTrips(order: RegisterOrder) throws {
        let cases: [(ModbusValue, DataType)] = [
            (.int(-32768), .int16), (.int(32767), .int16), (.uint(65535), .uint16), (.uint(0), .uint16),
            (.int(Int64(Int32.min)), .int32), (.int(123_456_789), .int32), (.uint(UInt64(UInt32.max)), .uint32),
            (.int(Int64.min), .int64), (.int(-1_234_567_890_123), .int64), (.uint(UInt64.max), .uint64),
            (.double(-0.15625), .float32), (.double(3.4028234663852886e38), .float32),
            (.double(Double.pi), .float64), (.double(-1e-300), .float64),
            (.string("door-7"), .string(registers: 4)), (.bool(true), .bool), (.bool(false), .bool),
        ]
        for (value, type) in cases {
            let regs = try RegisterCodec.encode(value, as: type, order: order)
            #expect(regs.count == type.registerCount)
            #expect(try RegisterCodec.decode(regs, as: type, order: order) == value, "\(value) as \(type) \(order)")
        }
    }

    @Test("values that do not fit are errors, never a wrap")
    func rangeChecks() {
        let bad: [(ModbusValue, DataType)] = [
            (.int(32768), .int16), (.int(-32769), .int16), (.int(-1), .uint16), (.uint(65536), .uint16),
            (.int(Int64(UInt32.max) + 1), .uint32), (.int(-1), .uint64), (.uint(UInt64(Int64.max) + 1), .int64),
            (.double(1.5), .int16), (.double(1e39), .float32), (.double(.nan), .float32), (.double(.infinity), .float64),
            (.string("toolong"), .string(registers: 2)), (.string("x"), .int16), (.int(2), .bool), (.double(70000), .uint16),
        ]
        for (value, type) in bad {
            #expect(throws: ModbusError.self, "\(value) as \(type)") { try RegisterCodec.encode(value, as: type) }
        }
    }

    @Test("scaling: raw * scale + offset, without float noise, and its exact inverse")
    func scaling() throws {
        let s = Scaling(scale: 0.1)
        #expect(s.apply(.int(215)) == .double(21.5))
        #expect(s.apply(.int(-3)) == .double(-0.3))
        #expect(try s.invert(.double(21.5), for: .int16) == .double(215))
        #expect(throws: ModbusError.self) { try s.invert(.double(21.55), for: .int16) }
        #expect(throws: ModbusError.self) { try s.invert(.double(4000), for: .int16) }
        let o = Scaling(scale: 2, offset: -40)
        #expect(o.apply(.uint(50)) == .double(60))
        #expect(try o.invert(.double(60), for: .uint16) == .double(50))
        #expect(Scaling().apply(.uint(7)) == .uint(7))
        #expect(Scaling.format(21.5) == "21.5")
        #expect(Scaling.format(3) == "3")
        #expect(Scaling.format(Scaling.clean(0.1 + 0.2)) == "0.3")
    }
}
