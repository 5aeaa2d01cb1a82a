import Foundation
import Synchronization
import Testing
import TestSupport
@testable import Modbus

#if canImport(Glibc)
import Glibc
#endif

/// A command's request on an idle TCP bus is sent at once by the thread that makes it; the bus
/// thread only reads the answer (``ModbusBus/submit(priority:deadline:early:_:)``). Against
/// `gateway simulate` and pymodbus, and a scripted device for the answers no real one gives.
@Suite("Modbus TCP: a request sent at once, its answer read by the bus thread", .timeLimit(.minutes(2)))
struct EarlySendTests {
    @Test("writes and read-backs at high priority on an open idle bus go out at once; polls and the first connect do not")
    func sentAtOnce() async throws {
        let sim = try await GatewaySimulator.start(["--set", "holding:7=70"])
        let bus = tcpBus(sim.port)
        defer { bus.close() }
        // Not connected yet: the bus thread connects and sends.
        try await bus.writeCoil(unit: 1, address: 1, value: true)
        #expect(bus.statistics.sentAtOnce == 0)
        try await bus.writeCoil(unit: 1, address: 2, value: true)
        try await bus.writeRegister(unit: 1, address: 7, value: 71)
        try await bus.writeRegisters(unit: 1, address: 8, values: [1, 2])
        try await bus.writeCoils(unit: 1, address: 10, values: [true, false, true])
        #expect(try await bus.read(.holding, unit: 1, address: 7, count: 3, priority: .high) == .registers([71, 1, 2]))
        #expect(try await bus.read(.coil, unit: 1, address: 0, count: 13, priority: .high)
                == .bits([false, true, true, false, false, false, false, false, false, false, true, false, true]))
        #expect(bus.statistics.sentAtOnce == 6)
        // A poll (normal priority) is the bus thread's to send.
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 7, count: 1) == [71])
        #expect(bus.statistics.sentAtOnce == 6)
        #expect(bus.statistics.requests == 8)
        #expect(bus.statistics.errors == 0)
        let writes = try await sim.waitForWrites(5)
        #expect(writes.map(\.fc) == [5, 5, 6, 16, 15])
        _ = await sim.stop()
    }

    @Test("pymodbus as an independent peer: a write and its read-back sent at once")
    func againstPymodbus() async throws {
        let server = try await PymodbusServer.startTCP(spec: #"{"1": {"hr": {"3": 5}}}"#)
        let bus = tcpBus(server.port ?? 0)
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 3, count: 1) == [5])
        try await bus.writeRegister(unit: 1, address: 3, value: 6)
        try await bus.writeCoil(unit: 1, address: 4, value: true)
        #expect(try await bus.read(.holding, unit: 1, address: 3, count: 1, priority: .high) == .registers([6]))
        #expect(try await bus.read(.coil, unit: 1, address: 4, count: 1, priority: .high) == .bits([true]))
        #expect(bus.statistics.sentAtOnce == 4)
        _ = await server.stop()
    }

    @Test("answers that do not fit (another transaction, a wrong echo, a short header) fail as outcome unknown; the next request gets its own answer")
    func answersThatDoNotFit() async throws {
        // Requests 1, 3, 5, 7, 10 and 12 are polls (the bus thread sends them, and reconnects first
        // after a bad answer closed the connection); the others are writes sent at once.
        // 2: the answer of another transaction. 4: a wrong echo. 6: a header announcing more
        // bytes than came. 8: an exception. 9: nothing (a timeout). 11: protocol id 1.
        let peer = try ScriptedModbusPeer { request, index in
            switch index {
            case 2: return ScriptedModbusPeer.answer(to: request, transaction: 0x7777)
            case 4: return ScriptedModbusPeer.answer(to: request, pdu: [6, 0, 9, 0, 99])
            case 6:
                var a = ScriptedModbusPeer.answer(to: request)
                a[5] += 3
                return a
            case 8: return ScriptedModbusPeer.answer(to: request, pdu: [0x86, 2])
            case 9: return nil
            case 11:
                var a = ScriptedModbusPeer.answer(to: request)
                a[3] = 1
                return a
            default: return ScriptedModbusPeer.answer(to: request)
            }
        }
        defer { peer.close() }
        let bus = tcpBus(peer.port, timeoutMs: 1000)
        defer { bus.close() }
        func poll() async throws {
            #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [0])
        }
        func expectUnknown(_ value: UInt16, detail: String) async {
            do {
                try await bus.writeRegister(unit: 1, address: 9, value: value)
                Issue.record("write \(value): expected a bad response")
            } catch let e as ModbusError {
                #expect(e.isOutcomeUnknown, "\(e)")
                #expect("\(e)".contains(detail), "\(e)")
            } catch {
                Issue.record("write \(value): \(error)")
            }
        }
        try await poll()
        await expectUnknown(1, detail: "answer to transaction 30583")
        try await poll()
        await expectUnknown(2, detail: "the echo differs")
        try await poll()
        // libmodbus reads as many bytes as the function takes; the 3 more announced would be
        // taken for the start of the next answer.
        await expectUnknown(3, detail: "announces")
        try await poll()
        await #expect(throws: ModbusError.exception(.illegalDataAddress, function: "write single register")) {
            try await bus.writeRegister(unit: 1, address: 9, value: 4)
        }
        await #expect(throws: ModbusError.timeout(function: "write single register")) {
            try await bus.writeRegister(unit: 1, address: 9, value: 5)
        }
        try await poll()
        await expectUnknown(6, detail: "protocol id 1, not 0")
        try await poll()
        #expect(bus.statistics.sentAtOnce == 6)
        #expect(bus.statistics.errors == 6)
        // Each bad answer and the timeout closed the connection; the exception kept it.
        #expect(peer.connections == 6)
        #expect(peer.requests.count == 12)
    }

    @Test("requests the bus thread sends on TCP are checked alike: a wrong echo to its write is a bad response, as on the early path")
    func busThreadChecksAlike() async throws {
        let peer = try ScriptedModbusPeer { request, index in
            index == 2 ? ScriptedModbusPeer.answer(to: request, pdu: [6, 0, 9, 0, 99]) : ScriptedModbusPeer.answer(to: request)
        }
        defer { peer.close() }
        let bus = tcpBus(peer.port)
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [0])
        do {
            // Normal priority: queued for the bus thread, which sends it.
            try await bus.writeRegister(unit: 1, address: 9, value: 1, priority: .normal)
            Issue.record("a wrong echo was taken for a done write")
        } catch let e as ModbusError {
            #expect(e.isOutcomeUnknown, "\(e)")
            #expect("\(e)".contains("the echo differs"), "\(e)")
        }
        #expect(bus.statistics.sentAtOnce == 0)
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [0])
        #expect(peer.connections == 2, "a bad answer closes the connection")
    }

    @Test("a device that closes an idle connection: the next write and the next poll go on a new connection and succeed")
    func deviceClosesIdleConnection() async throws {
        let peer = try ScriptedModbusPeer(closeAfter: [1, 3]) { request, _ in ScriptedModbusPeer.answer(to: request) }
        defer { peer.close() }
        let bus = tcpBus(peer.port)
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [0])
        try await peer.waitForCloses(1)
        // Sent on the closed connection, this write would fail as "outcome unknown".
        try await bus.writeRegister(unit: 1, address: 9, value: 1)
        #expect(peer.connections == 2)
        try await bus.writeRegister(unit: 1, address: 9, value: 2)
        #expect(bus.statistics.sentAtOnce == 1, "the write on the open connection goes out at once")
        try await peer.waitForCloses(2)
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [0])
        #expect(peer.connections == 3)
        #expect(bus.statistics.errors == 0)
        #expect(peer.requests.count == 4)
    }

    @Test("bytes nobody asked for on an idle connection (an answer sent twice): the next request goes on a new connection, never reads them as its answer")
    func unaskedBytesOnIdleConnection() async throws {
        let peer = try ScriptedModbusPeer { request, index in
            let a = ScriptedModbusPeer.answer(to: request, registers: [UInt16(index)])
            return index == 1 ? a + a : a
        }
        defer { peer.close() }
        let bus = tcpBus(peer.port)
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [1])
        // Read as this request's answer, the copy would fail the write (another transaction).
        try await bus.writeRegister(unit: 1, address: 9, value: 1)
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [3])
        #expect(peer.connections == 2)
        #expect(bus.statistics.errors == 0)
    }

    @Test("a request on the wire is answered even when its task is cancelled or the bus closes: its answer is read, never left for the next")
    func inFlightSurvivesCancelAndClose() async throws {
        let gate = ConditionLock(0)
        let peer = try ScriptedModbusPeer { request, index in
            if index == 2 || index == 4 {   // held until the test lets it go (bounded)
                _ = gate.wait(timeout: .seconds(10)) { $0 >= index ? true : nil }
            }
            return ScriptedModbusPeer.answer(to: request, registers: [UInt16(index)])
        }
        defer { peer.close() }
        // Held answers must not time out however slowly this test runs (a full run on a loaded
        // machine took seconds between the send and the release).
        let bus = tcpBus(peer.port, timeoutMs: 30_000)
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [1])
        let write = Task { try await bus.writeRegister(unit: 1, address: 9, value: 1) }
        try await peer.waitForRequests(2)
        write.cancel()
        gate.withLockSignalling { $0 = 2 }
        // Sent, then answered: it happened, and the task learns so.
        try await write.value
        #expect(try await bus.read(.holding, unit: 1, address: 0, count: 1, priority: .high) == .registers([3]))
        #expect(peer.connections == 1)
        // Closing the bus while a request is on the wire: its answer is still read.
        let last = Task { try await bus.writeRegister(unit: 1, address: 9, value: 4) }
        try await peer.waitForRequests(4)
        bus.close()
        gate.withLockSignalling { $0 = 4 }
        try await last.value
        #expect(bus.statistics.sentAtOnce == 3)
        await #expect(throws: ModbusError.closed) { try await bus.writeRegister(unit: 1, address: 9, value: 5) }
    }
}
