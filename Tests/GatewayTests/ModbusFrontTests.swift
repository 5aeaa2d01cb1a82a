import GatewayConfig
import Modbus
import Testing
@testable import Gateway


/// The Modbus TCP front's decisions, in-process: request decoding, answers, routing, writes, the
/// one-at-a-time gate per bus.
@Suite("Modbus front logic")
struct ModbusFrontTests {
    @Test("requests decode, malformed ones get the right exception")
    func decoding() throws {
        #expect(try FrontRequest.decode([3, 0, 100, 0, 2]).get() == .read(.holding, address: 100, count: 2))
        #expect(try FrontRequest.decode([5, 0, 7, 0xFF, 0]).get() == .writeCoil(address: 7, value: true))
        #expect(try FrontRequest.decode([15, 0, 0, 0, 10, 2, 0xCD, 0x01]).get()
                == .writeCoils(address: 0, values: [true, false, true, true, false, false, true, true, true, false]))
        #expect(try FrontRequest.decode([16, 0, 10, 0, 2, 4, 0, 5, 0, 6]).get() == .writeRegisters(address: 10, values: [5, 6]))
        func failure(_ pdu: [UInt8]) -> ModbusException? { if case .failure(let e) = FrontRequest.decode(pdu) { e } else { nil } }
        #expect(failure([43, 14, 1, 0]) == .illegalFunction)
        #expect(failure([23, 0, 0, 0, 1, 0, 0, 0, 1, 2, 0, 0]) == .illegalFunction)
        #expect(failure([3, 0, 0, 0, 200]) == .illegalDataValue)
        #expect(failure([5, 0, 0, 0x12, 0x34]) == .illegalDataValue)
        #expect(failure([16, 0, 0, 0, 2, 3, 0, 0, 0]) == .illegalDataValue)
        #expect(failure([3, 0xFF, 0xFF, 0, 2]) == .illegalDataAddress)
        #expect(failure([]) == .illegalFunction)
    }

    @Test("answers are encoded as Modbus TCP servers answer")
    func answers() {
        #expect(FrontRequest.read(.coil, address: 0, count: 10).answer(read: .bits([true, false, true, true, false, false, true, true, true, false]))
                == [1, 2, 0xCD, 0x01])
        #expect(FrontRequest.read(.input, address: 0, count: 2).answer(read: .registers([0x1234, 7])) == [4, 4, 0x12, 0x34, 0, 7])
        #expect(FrontRequest.writeRegisters(address: 10, values: [1, 2]).answer(read: nil) == [16, 0, 10, 0, 2])
        #expect(ModbusException.answering(.timeout(function: "x")).rawValue == 0x0B)
        #expect(ModbusException.answering(.exception(.illegalDataAddress, function: "x")).rawValue == 2)
        #expect(ModbusException.answering(.busBusy).rawValue == 6)
    }

    @Test("routing and writes: only whole requests inside an opened range of that bus and unit")
    func policy() {
        var s = ModbusServerSettings(listen: ListenAddress(host: "127.0.0.1", port: 1502), units: [7: ModbusServerTarget(bus: "line1", unit: 3)])
        s.writable = [ModbusWritableRange(target: ModbusServerTarget(bus: "line1", unit: 3), table: .holding, first: 10, last: 19)]
        let p = ModbusFrontPolicy(settings: s)
        let t = ModbusServerTarget(bus: "line1", unit: 3)
        #expect(p.route(7) == t)
        #expect(p.route(3) == nil)
        #expect(p.mayWrite(.read(.holding, address: 0, count: 100), at: t))
        #expect(p.mayWrite(.writeRegisters(address: 10, values: Array(repeating: 0, count: 10)), at: t))
        #expect(!p.mayWrite(.writeRegisters(address: 18, values: [1, 2, 3]), at: t))
        #expect(!p.mayWrite(.writeRegister(address: 9, value: 1), at: t))
        #expect(!p.mayWrite(.writeCoil(address: 10, value: true), at: t))
        #expect(!p.mayWrite(.writeRegister(address: 10, value: 1), at: ModbusServerTarget(bus: "line1", unit: 4)))
    }

    @Test("the gate lets one outside request per bus through; the next waits for it, other buses do not")
    func gate() async {
        let gates = LineGates()
        #expect(await gates.enter("a"))
        #expect(await gates.enter("b"))
        let second = Task { await gates.enter("a") }
        // The second request waits behind the first (bounded: the task queues within a few turns).
        for _ in 0..<10_000 where await gates.waiting("a") == 0 { await Task.yield() }
        #expect(await gates.waiting("a") == 1)
        #expect(await gates.waiting("b") == 0)
        // Leaving hands the gate to it.
        await gates.leave("a")
        #expect(await second.value)
        await gates.leave("a")
        #expect(await gates.enter("a"))
    }

    @Test("outside requests take at most line_share of the line: the rest after a request is (1/share - 1) x its time")
    func share() {
        var s = ModbusServerSettings(listen: ListenAddress(host: "127.0.0.1", port: 1502), units: [:])
        #expect(ModbusFrontPolicy(settings: s).rest(afterHolding: .milliseconds(10)) == .milliseconds(30))
        s.lineShare = 1
        #expect(ModbusFrontPolicy(settings: s).rest(afterHolding: .milliseconds(10)) == .zero)
        s.lineShare = 0.05
        #expect(ModbusFrontPolicy(settings: s).rest(afterHolding: .milliseconds(10)) == .milliseconds(190))
    }

    @Test("the gate stays shut during the rest: a waiting request is let in only when the rest ends")
    func gateHeldDuringRest() async {
        let gates = LineGates()
        #expect(await gates.enter("a"))
        // A rest far longer than the test: only its end (cancelled here) opens the gate.
        let resting = Task { await gates.leave("a", after: .seconds(3600)) }
        let next = Task { await gates.enter("a") }
        for _ in 0..<10_000 where await gates.waiting("a") == 0 { await Task.yield() }
        #expect(await gates.waiting("a") == 1)
        resting.cancel()
        #expect(await next.value)
        #expect(await gates.waiting("a") == 0)
    }

    @Test("at most 64 requests wait for one bus; the next is answered busy at once")
    func gateBounded() async {
        let gates = LineGates()
        #expect(await gates.enter("a"))
        let waiting = (0..<LineGates.maxWaiting).map { _ in Task { await gates.enter("a") } }
        for _ in 0..<100_000 where await gates.waiting("a") < LineGates.maxWaiting { await Task.yield() }
        #expect(await gates.waiting("a") == 64)
        #expect(await gates.enter("a") == false)
        // Each leaves in turn: every waiter gets through.
        for _ in 0...LineGates.maxWaiting { await gates.leave("a") }
        for w in waiting { #expect(await w.value) }
    }
}
