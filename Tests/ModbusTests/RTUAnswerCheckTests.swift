import Foundation
import Testing
import TestSupport
@testable import Modbus

/// RTU lines (libmodbus): the answers are checked as on TCP and `rtu-tcp`. The device is a
/// scripted RTU peer behind a real pty (socat joins the pty to the peer's TCP port), so the
/// bus opens a tty as it would an RS-485 adapter.
@Suite("RTU answers checked like TCP ones", .timeLimit(.minutes(2)))
struct RTUAnswerCheckTests {
    @Test("a wrong echo to a single write, a write answered for another range and an answer from another unit are bad responses, never done writes; exceptions and silence read as before; the line then serves the next request")
    func wrongAnswersOnRTU() async throws {
        let peer = try ScriptedModbusPeer(rtu: true) { request, index in
            let right = ScriptedModbusPeer.rtuAnswer(to: request)
            switch index {
            case 1: return RTUFrame.seal(unit: 3, pdu: [5, 0, 1, 0, 0])        // coil 1 set on, echoed off
            case 2: return RTUFrame.seal(unit: 3, pdu: [6, 0, 8, 0, 7])        // register 9 written, echo names 8
            case 3: return RTUFrame.seal(unit: 4, pdu: Array(right[1..<(right.count - 2)]))   // unit 4 answers unit 3
            case 5: return RTUFrame.seal(unit: 3, pdu: [16, 0, 20, 0, 1])      // registers 20-21 written, answer names 20-20
            case 7: return RTUFrame.seal(unit: 3, pdu: [0x83, 2])             // illegal data address
            case 8: return nil                                                 // silence
            default: return right
            }
        }
        defer { peer.close() }
        let dir = try TestEnvironment.makeTemporaryDirectory("rtu-check")
        let socat = try ChildProcess(try TestEnvironment.require("socat"),
                                     ["-d", "-d", "pty,raw,echo=0,link=\(dir)/tty", "tcp:127.0.0.1:\(peer.port)"])
        try await socat.waitForLine(containing: "starting data transfer loop")
        let bus = ModbusBus(configuration: BusConfiguration(name: "rtu", transport: .rtu(RTUSettings(path: "\(dir)/tty", baud: 19200)),
                                                            responseTimeout: .milliseconds(300)))
        defer { bus.close() }
        let writes: [(String, @Sendable () async throws -> Void)] = [
            ("a coil echoed off", { try await bus.writeCoil(unit: 3, address: 1, value: true) }),
            ("a register echoed at another address", { try await bus.writeRegister(unit: 3, address: 9, value: 7) }),
            ("an answer from unit 4", { try await bus.writeRegister(unit: 3, address: 9, value: 7) }),
        ]
        for (what, write) in writes {
            do {
                try await write()
                Issue.record("\(what) was taken for a done write")
            } catch let e as ModbusError {
                #expect(e.isOutcomeUnknown, "\(what): \(e)")
                guard case .badResponse = e else { Issue.record("\(what): \(e)"); continue }
            }
        }
        // The line still works: a right answer is taken.
        try await bus.writeRegister(unit: 3, address: 9, value: 7)
        do {
            try await bus.writeRegisters(unit: 3, address: 20, values: [1, 2])
            Issue.record("an answer naming another range was taken for a done write")
        } catch let e as ModbusError {
            guard case .badResponse = e else { Issue.record("\(e)"); return }
        }
        #expect(try await bus.readHoldingRegisters(unit: 3, address: 0, count: 2) == [0, 0])
        // An exception is the device's answer, silence a timeout, as before.
        await #expect(throws: ModbusError.exception(.illegalDataAddress, function: "read holding registers")) {
            _ = try await bus.readHoldingRegisters(unit: 3, address: 900, count: 1)
        }
        await #expect(throws: ModbusError.timeout(function: "read holding registers")) {
            _ = try await bus.readHoldingRegisters(unit: 3, address: 0, count: 1)
        }
        #expect(try await bus.readHoldingRegisters(unit: 3, address: 0, count: 1) == [0])
        #expect(peer.requests.count == 9)
        _ = await socat.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
