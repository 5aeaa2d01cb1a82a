import Foundation
import Testing
import TestSupport
@testable import Modbus

/// `rtu-tcp`: RTU frames over TCP (a serial device server), framed by the gateway itself, against
/// `gateway simulate --rtu-tcp` and pymodbus with its RTU framer on a TCP server.
@Suite("Modbus RTU over TCP against real peers", .timeLimit(.minutes(2)))
struct RTUOverTCPTests {
    func bus(_ port: Int, timeoutMs: Int = 1000) -> ModbusBus {
        ModbusBus(configuration: BusConfiguration(name: "server", transport: .rtuOverTCP(host: "127.0.0.1", port: port),
                                                  responseTimeout: .milliseconds(timeoutMs)))
    }

    @Test("every function the gateway uses, on two units behind one device server (gateway simulate)")
    func functionsAgainstSimulator() async throws {
        let sim = try await GatewaySimulator.start(["--unit", "1", "--unit", "2", "--set", "1/holding:100=215", "--set", "2/discrete:3=1"],
                                                   rtuOverTCP: true)
        let b = bus(sim.port)
        defer { b.close() }
        #expect(try await b.readHoldingRegisters(unit: 1, address: 99, count: 3) == [0, 215, 0])
        #expect(try await b.readDiscreteInputs(unit: 2, address: 0, count: 5) == [false, false, false, true, false])
        try await b.writeRegisters(unit: 1, address: 10, values: [1, 2, 3])
        #expect(try await b.readHoldingRegisters(unit: 1, address: 10, count: 3) == [1, 2, 3])
        try await b.writeCoils(unit: 2, address: 3, values: [true, false, true, true, false, false, false, false, true])
        #expect(try await b.readCoils(unit: 2, address: 2, count: 11) == [false, true, false, true, true, false, false, false, false, true, false])
        try await b.writeCoil(unit: 2, address: 0, value: true)
        try await b.writeRegister(unit: 1, address: 500, value: 7)
        #expect(try await b.writeAndReadRegisters(unit: 1, writeAddress: 501, values: [8, 9], readAddress: 500, readCount: 3) == [7, 8, 9])
        #expect(try await b.readInputRegisters(unit: 2, address: 0, count: 2) == [0, 0])
        // An exception comes back named; a unit nobody serves is silence (a timeout), as on a line.
        await #expect(throws: ModbusError.exception(.illegalDataAddress, function: "read holding registers")) {
            try await b.readHoldingRegisters(unit: 1, address: 9999, count: 2)
        }
        let quick = bus(sim.port, timeoutMs: 150)
        defer { quick.close() }
        await #expect(throws: ModbusError.timeout(function: "read holding registers")) {
            try await quick.readHoldingRegisters(unit: 7, address: 0, count: 1)
        }
        try await sim.process.waitForLine(containing: "\"fc\":23")
        #expect(sim.writes.map(\.fc).suffix(5) == [16, 15, 5, 6, 23])
        #expect(b.statistics.requests == 11)
        _ = await sim.stop()
    }

    @Test("a noise byte garbles one answer: a bad-CRC error, the stream drained, the next request answered")
    func garbledAnswer() async throws {
        let sim = try await GatewaySimulator.start(["--set", "holding:0=11"], rtuOverTCP: true)
        let b = bus(sim.port)
        defer { b.close() }
        #expect(try await b.readHoldingRegisters(unit: 1, address: 0, count: 1) == [11])
        try await sim.addNoise(answers: 1)
        await #expect(throws: ModbusError.badCRC(function: "read holding registers")) {
            try await b.readHoldingRegisters(unit: 1, address: 0, count: 1)
        }
        try await sim.set("holding:0=12")
        #expect(try await b.readHoldingRegisters(unit: 1, address: 0, count: 1) == [12])
        #expect(b.statistics.errors == 1)
        _ = await sim.stop()
    }

    @Test("a late answer is never taken for the answer to the next request (RTU over TCP)")
    func lateAnswer() async throws {
        let sim = try await GatewaySimulator.start(["--set", "holding:0=11"], rtuOverTCP: true)
        let b = bus(sim.port, timeoutMs: 400)
        defer { b.close() }
        #expect(try await b.readHoldingRegisters(unit: 1, address: 0, count: 1) == [11])
        try await sim.setLatency(ms: 600)
        await #expect(throws: ModbusError.timeout(function: "write single register")) {
            try await b.writeRegister(unit: 1, address: 0, value: 22)
        }
        // The next request goes out while the simulator still holds the first; its late answer
        // (the echo 6 0 0 0 22) comes about 200 ms later. Read as this request's answer it would
        // not match (22, not 33): only a new connection keeps it out. The simulator answers this
        // one at once after the late one (latency 0 from then on).
        try await sim.setLatency(ms: 0)
        try await b.writeRegister(unit: 1, address: 0, value: 33)
        #expect(try await b.readHoldingRegisters(unit: 1, address: 0, count: 1) == [33])
        _ = await sim.stop()
    }

    @Test("pymodbus with its RTU framer on a TCP server as the independent device server")
    func againstPymodbus() async throws {
        let server = try await PymodbusServer.startTCP(spec: #"{"1": {"hr": {"100": 17254, "101": 32768}, "di": {"1": 1}}, "3": {"co": {"2": 1}}}"#,
                                                       rtuFraming: true)
        let b = bus(server.port ?? 0)
        defer { b.close() }
        let regs = try await b.readHoldingRegisters(unit: 1, address: 100, count: 2)
        #expect(try RegisterCodec.decode(regs, as: .float32) == .double(230.5))
        #expect(try await b.readDiscreteInputs(unit: 1, address: 0, count: 2) == [false, true])
        #expect(try await b.readCoils(unit: 3, address: 0, count: 4) == [false, false, true, false])
        try await b.writeRegisters(unit: 1, address: 200, values: [0xFFFB, 0xFFFF])
        #expect(try await b.readHoldingRegisters(unit: 1, address: 200, count: 2) == [0xFFFB, 0xFFFF])
        try await b.writeCoil(unit: 3, address: 4, value: true)
        #expect(try await b.readCoils(unit: 3, address: 4, count: 1) == [true])
        _ = await server.stop()
    }

    @Test("a device server that closes the idle connection: the next request goes on a new connection and succeeds")
    func serverClosesIdleConnection() async throws {
        let peer = try ScriptedModbusPeer(rtu: true, closeAfter: [1]) { request, _ in ScriptedModbusPeer.rtuAnswer(to: request) }
        defer { peer.close() }
        let b = bus(peer.port)
        defer { b.close() }
        #expect(try await b.readHoldingRegisters(unit: 1, address: 0, count: 2) == [0, 0])
        try await peer.waitForCloses(1)
        // Sent on the closed connection, this write would fail as "outcome unknown".
        try await b.writeRegister(unit: 1, address: 9, value: 1)
        #expect(peer.connections == 2)
        #expect(peer.requests.count == 2)
        #expect(b.statistics.errors == 0)
    }

    @Test("request PDUs and answer checks, in-process")
    func pduCodec() throws {
        let write = ModbusOperation.writeBits(address: 0x13, values: [true, false, true, true, false, false, true, true, true, false])
        #expect(write.requestPDU == [15, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01])
        #expect(throws: ModbusError.self) { try write.decode([15, 0x00, 0x13, 0x00, 0x0B]) }
        let read = ModbusOperation.readRegisters(.holding, address: 0x6B, count: 3)
        #expect(read.requestPDU == [3, 0x00, 0x6B, 0x00, 0x03])
        guard case .registers(let r) = try read.decode([3, 6, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64]) else { Issue.record("not registers"); return }
        #expect(r == [0x022B, 0, 0x64])
        #expect(throws: ModbusError.badResponse(function: "read holding registers", detail: "5 bytes for 3 registers")) {
            try read.decode([3, 3, 0, 0, 0])
        }
        #expect(throws: ModbusError.exception(.illegalDataValue, function: "read holding registers")) { try read.decode([0x83, 3]) }
        #expect(throws: ModbusError.badResponse(function: "read holding registers", detail: "answer to function 4, not 3")) {
            try read.decode([4, 2, 0, 0])
        }
    }
}
