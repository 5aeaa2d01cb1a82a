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
        // Requests 1, 3, 5, 7 and 10 are polls (the bus thread sends them, and reconnects first
        // after a bad answer closed the connection); the others are writes sent at once.
        // 2: the answer of another transaction. 4: a wrong echo. 6: a header announcing more
        // bytes than came. 8: an exception. 9: nothing (a timeout).
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
            default: return ScriptedModbusPeer.answer(to: request)
            }
        }
        defer { peer.close() }
        let bus = tcpBus(peer.port, timeoutMs: 300)
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
        #expect(bus.statistics.sentAtOnce == 5)
        #expect(bus.statistics.errors == 5)
        // Each bad answer and the timeout closed the connection; the exception kept it.
        #expect(peer.connections == 5)
        #expect(peer.requests.count == 10)
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
        let bus = tcpBus(peer.port)
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

/// A Modbus TCP device the test scripts: each request (counted from 1 over all connections) is
/// answered with what `answer` returns for it, or not at all (nil). One connection at a time, on
/// a thread of its own; blocking I/O never runs on Swift's cooperative pool.
final class ScriptedModbusPeer: Sendable {
    let port: Int
    private let state = Locked<(connections: Int, closes: Int, requests: [[UInt8]], stopped: Bool)>((0, 0, [], false))
    private let done = ConditionLock(false)

    var connections: Int { state.withLock { $0.connections } }
    /// Connections this device closed by itself (`closeAfter`).
    var closes: Int { state.withLock { $0.closes } }
    var requests: [[UInt8]] { state.withLock { $0.requests } }

    /// `closeAfter`: the requests after whose answer the device closes the connection (as a PLC
    /// does with a connection left idle).
    init(closeAfter: Set<Int> = [], answer: @escaping @Sendable (_ request: [UInt8], _ index: Int) -> [UInt8]?) throws {
        let listening = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listening, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(listening, 4) == 0 else { Glibc.close(listening); throw FixtureError("cannot listen: errno \(errno)") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listening, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let state = self.state, done = self.done
        startThread(name: "scripted-peer") {
            var conn: Int32 = -1
            var buffer: [UInt8] = []
            let end = ContinuousClock.now + .seconds(60)
            while !state.withLock({ $0.stopped }), ContinuousClock.now < end {
                var fds = [pollfd(fd: listening, events: Int16(POLLIN), revents: 0), pollfd(fd: conn, events: Int16(POLLIN), revents: 0)]
                guard poll(&fds, 2, 20) > 0 else { continue }
                if fds[0].revents != 0 {
                    let c = accept(listening, nil, nil)
                    if c >= 0 {
                        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                        if conn >= 0 { Glibc.close(conn) }
                        conn = c
                        buffer = []
                        state.withLock { $0.connections += 1 }
                    }
                }
                guard conn >= 0, fds[1].revents != 0 else { continue }
                var chunk = [UInt8](repeating: 0, count: 512)
                let n = recv(conn, &chunk, chunk.count, 0)
                guard n > 0 else { Glibc.close(conn); conn = -1; continue }
                buffer += chunk[0..<n]
                while buffer.count >= 6, buffer.count >= 6 + (Int(buffer[4]) << 8 | Int(buffer[5])) {
                    let whole = 6 + (Int(buffer[4]) << 8 | Int(buffer[5]))
                    let request = Array(buffer[0..<whole])
                    buffer.removeFirst(whole)
                    let index = state.withLock { s -> Int in s.requests.append(request); return s.requests.count }
                    if let reply = answer(request, index) {
                        _ = reply.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    }
                    if closeAfter.contains(index) {
                        Glibc.close(conn)
                        conn = -1
                        buffer = []
                        state.withLock { $0.closes += 1 }
                        break
                    }
                }
            }
            if conn >= 0 { Glibc.close(conn) }
            Glibc.close(listening)
            done.withLockSignalling { $0 = true }
        }
    }

    func close() {
        state.withLock { $0.stopped = true }
        _ = done.wait(timeout: .seconds(5)) { $0 ? true : nil }
    }

    /// Waits (bounded) until `count` requests have come.
    func waitForRequests(_ count: Int, timeout: Duration = .seconds(10)) async throws {
        let end = ContinuousClock.now + timeout
        while requests.count < count {
            guard ContinuousClock.now < end else { throw FixtureError("\(requests.count) of \(count) requests came") }
            await Task.yield()
        }
    }

    /// Waits (bounded) until the device has closed `count` connections by itself.
    func waitForCloses(_ count: Int, timeout: Duration = .seconds(10)) async throws {
        let end = ContinuousClock.now + timeout
        while closes < count {
            guard ContinuousClock.now < end else { throw FixtureError("\(closes) of \(count) closes") }
            await Task.yield()
        }
    }

    /// The right answer to `request` (an echo for a write, zeros or `registers` for a read), or
    /// `pdu`, under `transaction` (the request's unless given).
    static func answer(to request: [UInt8], transaction: UInt16? = nil, pdu: [UInt8]? = nil, registers: [UInt16]? = nil) -> [UInt8] {
        let fc = request[7]
        let count = Int(request[10]) << 8 | Int(request[11])
        let body: [UInt8]
        if let pdu {
            body = pdu
        } else {
            switch fc {
            case 1, 2: body = [fc, UInt8((count + 7) / 8)] + [UInt8](repeating: 0, count: (count + 7) / 8)
            case 3, 4:
                let regs = registers ?? [UInt16](repeating: 0, count: count)
                body = [fc, UInt8(regs.count * 2)] + regs.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
            case 5, 6: body = Array(request[7..<12])
            default: body = Array(request[7..<12])   // 15, 16: function, address, quantity
            }
        }
        let tid = transaction.map { [UInt8($0 >> 8), UInt8($0 & 0xFF)] } ?? Array(request[0..<2])
        return tid + [0, 0, UInt8((body.count + 1) >> 8), UInt8((body.count + 1) & 0xFF), request[6]] + body
    }
}
