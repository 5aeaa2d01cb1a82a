import Foundation
import Synchronization
import Testing
import TestSupport
@testable import Modbus

#if canImport(Glibc)
import Glibc
#endif

/// A Modbus TCP bus to a loopback peer (the tests of this module).
func tcpBus(_ port: Int, timeoutMs: Int = 1000) -> ModbusBus {
    ModbusBus(configuration: BusConfiguration(name: "test", transport: .tcp(host: "127.0.0.1", port: port),
                                              responseTimeout: .milliseconds(timeoutMs)))
}

@Suite("Modbus bus against real peers", .timeLimit(.minutes(2)))
struct ModbusBusTests {

    @Test("every type and order written with FC16 and read back from gateway simulate")
    func typesAgainstSimulator() async throws {
        let sim = try await GatewaySimulator.start()
        let bus = tcpBus(sim.port)
        defer { bus.close() }
        let values: [(ModbusValue, DataType)] = [
            (.int(-1234), .int16), (.uint(54321), .uint16), (.int(-123_456), .int32), (.uint(4_000_000_000), .uint32),
            (.int(-9_000_000_000_000), .int64), (.uint(18_000_000_000_000_000_000), .uint64),
            (.double(230.5), .float32), (.double(-0.001), .float64), (.string("QR-42"), .string(registers: 3)),
        ]
        var address = 0
        for order in RegisterCodecTests.orders {
            for (value, type) in values {
                let regs = try RegisterCodec.encode(value, as: type, order: order)
                try await bus.writeRegisters(unit: 1, address: address, values: regs)
                let back = try await bus.readHoldingRegisters(unit: 1, address: address, count: regs.count)
                #expect(back == regs)
                #expect(try RegisterCodec.decode(back, as: type, order: order) == value)
                address += regs.count
            }
        }
        try await bus.writeCoils(unit: 1, address: 3, values: [true, false, true])
        #expect(try await bus.readCoils(unit: 1, address: 2, count: 5) == [false, true, false, true, false])
        try await bus.writeCoil(unit: 1, address: 2, value: true)
        try await bus.writeRegister(unit: 1, address: 500, value: 7)
        #expect(try await bus.writeAndReadRegisters(unit: 1, writeAddress: 501, values: [8, 9], readAddress: 500, readCount: 3) == [7, 8, 9])
        try await sim.process.waitForLine(containing: "\"fc\":23")
        let fcs = sim.writes.map(\.fc)
        #expect(fcs.filter { $0 == 16 }.count == values.count * 4)
        #expect(fcs.suffix(4) == [15, 5, 6, 23])
        #expect(await sim.stop() == 0)
    }

    @Test("a request whose task was cancelled before it was queued is never sent")
    func cancelledBeforeQueued() async throws {
        let sim = try await GatewaySimulator.start(["--log-requests", "--set", "holding:0=5"])
        let bus = tcpBus(sim.port)
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await bus.writeRegister(unit: 1, address: 0, value: 99)
        }
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        // The next request goes through, and it is the only one the device saw.
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [5])
        #expect(sim.writes.isEmpty)
        // The simulator's log reaches us through a pipe, after the answer: wait for the read's line.
        _ = try await sim.process.waitForLine(timeout: .seconds(10)) { $0.hasPrefix("{\"request\":") && $0.contains("\"fc\":3") }
        #expect(sim.process.lines.filter { $0.hasPrefix("{\"request\":") }.count == 1, "\(sim.process.lines)")
        bus.close()
        _ = await sim.stop()
    }

    @Test("exceptions surface as named errors; the bus keeps working")
    func exceptions() async throws {
        let sim = try await GatewaySimulator.start(["--unit", "1", "--size", "50"])
        let bus = tcpBus(sim.port)
        defer { bus.close() }
        await #expect(throws: ModbusError.exception(.illegalDataAddress, function: "read holding registers")) {
            try await bus.readHoldingRegisters(unit: 1, address: 49, count: 2)
        }
        await #expect(throws: ModbusError.exception(.gatewayTargetFailedToRespond, function: "read input registers")) {
            try await bus.readInputRegisters(unit: 9, address: 0, count: 1)
        }
        await #expect(throws: ModbusError.exception(.illegalDataAddress, function: "write single coil")) {
            try await bus.writeCoil(unit: 1, address: 60, value: true)
        }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 49, count: 1) == [0])
        #expect(sim.writes.isEmpty, "a refused write is not logged as done")
        await #expect(throws: ModbusError.self) { try await bus.readHoldingRegisters(unit: 1, address: 0, count: 126) }
        _ = await sim.stop()
    }

    @Test("a merged read answered ILLEGAL DATA ADDRESS is split and remembered; good points keep working")
    func splitOnIllegalAddress() async throws {
        let sim = try await GatewaySimulator.start(["--size", "50", "--set", "holding:10=111", "--set", "holding:40=444"])
        let bus = tcpBus(sim.port)
        defer { bus.close() }
        var plan = ReadPlan(items: [ReadItem(id: 1, kind: .holding, address: 10, count: 1),
                                    ReadItem(id: 2, kind: .holding, address: 40, count: 1),
                                    ReadItem(id: 3, kind: .holding, address: 55, count: 1)], gaps: .tcp)
        #expect(plan.requests.count == 1)
        let first = await bus.poll(&plan, unit: 1)
        #expect(try first[1]?.get() == .registers([111]))
        #expect(try first[2]?.get() == .registers([444]))
        guard case .failure(.exception(.illegalDataAddress, _)) = first[3] else {
            Issue.record("item 3 should fail with illegal data address, got \(String(describing: first[3]))")
            return
        }
        #expect(plan.requests.count == 3, "the split is remembered")
        let second = await bus.poll(&plan, unit: 1)
        #expect(try second[1]?.get() == .registers([111]))
        _ = await sim.stop()
    }

    @Test("pymodbus as an independent peer: reads, writes and typed values")
    func againstPymodbus() async throws {
        let server = try await PymodbusServer.startTCP(spec: #"{"1": {"hr": {"100": 17254, "101": 32768}, "ir": {"5": 65535}, "di": {"1": 1}}}"#)
        let bus = tcpBus(server.port ?? 0)
        defer { bus.close() }
        let regs = try await bus.readHoldingRegisters(unit: 1, address: 100, count: 2)
        #expect(try RegisterCodec.decode(regs, as: .float32) == .double(230.5))
        #expect(try RegisterCodec.decode(try await bus.readInputRegisters(unit: 1, address: 5, count: 1), as: .int16) == .int(-1))
        #expect(try await bus.readDiscreteInputs(unit: 1, address: 0, count: 2) == [false, true])
        try await bus.writeRegisters(unit: 1, address: 200, values: try RegisterCodec.encode(.int(-5), as: .int32, order: RegisterOrder(word: .little)))
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 200, count: 2) == [0xFFFB, 0xFFFF])
        try await bus.writeCoil(unit: 1, address: 4, value: true)
        #expect(try await bus.readCoils(unit: 1, address: 4, count: 1) == [true])
        _ = await server.stop()
    }

    @Test("connection refused, then a device that accepts but never answers: distinct errors")
    func connectionErrors() async throws {
        let port = try TestEnvironment.freePort()
        let bus = tcpBus(port, timeoutMs: 200)
        defer { bus.close() }
        do {
            _ = try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1)
            Issue.record("expected a connect error")
        } catch ModbusError.connectFailed(_, let e, _) {
            #expect(e == ECONNREFUSED)
        }
        // A listening socket nobody accepts from: the kernel completes the handshake, nobody answers.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        try #require(bound == 0)
        listen(fd, 4)
        await #expect(throws: ModbusError.timeout(function: "read holding registers")) {
            try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1)
        }
        #expect(ModbusError.timeout(function: "x").isOutcomeUnknown)
    }

    @Test("the bus reconnects by itself when a TCP device goes away and comes back")
    func reconnect() async throws {
        let port = try TestEnvironment.freePort()
        let sim = try await GatewaySimulator.start(["--set", "holding:0=1"], port: port)
        let bus = tcpBus(port, timeoutMs: 300)
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [1])
        #expect(await sim.stop() == 0)
        do {
            _ = try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1)
            Issue.record("a read from a stopped device must fail")
        } catch let e as ModbusError {
            switch e {
            case .connectionLost, .connectFailed, .timeout: break
            default: Issue.record("unexpected error \(e)")
            }
        }
        let again = try await GatewaySimulator.start(["--set", "holding:0=2"], port: port)
        // The failed transaction closed the connection; the next one opens a new one.
        var value: [UInt16] = []
        for _ in 0..<3 where value.isEmpty {   // at most one more failure while the old socket is torn down
            value = (try? await bus.readHoldingRegisters(unit: 1, address: 0, count: 1)) ?? []
        }
        #expect(value == [2])
        _ = await again.stop()
    }

    @Test("a late answer is never taken for the answer to the next request (TCP)")
    func lateAnswer() async throws {
        let sim = try await GatewaySimulator.start(["--set", "holding:0=11"])
        let bus = tcpBus(sim.port, timeoutMs: 200)
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [11])
        try await sim.setLatency(ms: 500)
        await #expect(throws: ModbusError.timeout(function: "write single register")) {
            try await bus.writeRegister(unit: 1, address: 1, value: 22)
        }
        // The simulator logs a write once it has sent its (late) answer.
        try await sim.waitForWrites(1)
        try await sim.setLatency(ms: 0)
        // That answer must not be read as the answer to this request ("Invalid data" before).
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 2) == [11, 22])
        _ = await sim.stop()
    }

    @Test("a write placed at high priority runs before queued polls")
    func writePriority() async throws {
        let sim = try await GatewaySimulator.start()
        let bus = tcpBus(sim.port)
        defer { bus.close() }
        // Hold the bus thread so that the queue fills up deterministically.
        let gate = ConditionLock(false)
        let started = Locked(false)
        let holding = Task {
            try await bus.submit(priority: .normal, deadline: nil) { _ in
                started.withLock { $0 = true }
                _ = gate.wait(timeout: .seconds(10)) { $0 ? true : nil }   // released below, bounded
            }
        }
        let startedBy = ContinuousClock.now + .seconds(10)
        while !started.withLock({ $0 }) && ContinuousClock.now < startedBy { await Task.yield() }
        let order = Locked<[String]>([])
        var polls: [Task<Void, any Error>] = []
        for i in 0..<10 {
            polls.append(Task {
                _ = try await bus.readHoldingRegisters(unit: 1, address: i, count: 1)
                order.withLock { $0.append("poll\(i)") }
            })
        }
        // Wait (bounded) until the 10 polls are queued behind the held transaction.
        let queuedBy = ContinuousClock.now + .seconds(10)
        while bus.queuedCount < 10 && ContinuousClock.now < queuedBy { await Task.yield() }
        #expect(bus.queuedCount == 10)
        let write = Task {
            try await bus.writeCoil(unit: 1, address: 0, value: true)
            order.withLock { $0.append("write") }
        }
        while bus.queuedCount < 11 && ContinuousClock.now < queuedBy { await Task.yield() }
        gate.withLockSignalling { $0 = true }
        try await holding.value
        try await write.value
        for p in polls { try await p.value }
        let finished = order.withLock { $0 }
        #expect(finished.first == "write")
        #expect(finished.count == 11)
        _ = await sim.stop()
    }

    @Test("a request past its deadline in the queue fails with busBusy and is not sent")
    func deadline() async throws {
        let sim = try await GatewaySimulator.start()
        let bus = tcpBus(sim.port)
        defer { bus.close() }
        await #expect(throws: ModbusError.busBusy) {
            try await bus.writeCoil(unit: 1, address: 0, value: true, deadline: ContinuousClock.now - .milliseconds(1))
        }
        #expect(try await bus.readCoils(unit: 1, address: 0, count: 1) == [false])
        #expect(sim.writes.isEmpty)
        _ = await sim.stop()
    }

    @Test("RTU over a socat pty pair: two units on one line (pymodbus); a silent unit costs only its timeout")
    func rtuTwoUnits() async throws {
        let pair = try await PtyPair.start()
        let server = try await PymodbusServer.startRTU(path: pair.b, spec: #"{"1": {"hr": {"0": 11}}, "2": {"hr": {"0": 22}}}"#)
        let bus = ModbusBus(configuration: BusConfiguration(name: "rtu", transport: .rtu(RTUSettings(path: pair.a, baud: 19200)),
                                                            responseTimeout: .milliseconds(300)))
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) == [11])
        #expect(try await bus.readHoldingRegisters(unit: 2, address: 0, count: 1) == [22])
        // Unit 9 does not exist: it times out; the units around it in the queue are still served.
        let a = Task { try await bus.readHoldingRegisters(unit: 1, address: 0, count: 1) }
        let silent = Task { try await bus.readHoldingRegisters(unit: 9, address: 0, count: 1) }
        let b = Task { try await bus.readHoldingRegisters(unit: 2, address: 0, count: 1) }
        #expect(try await a.value == [11])
        #expect(try await b.value == [22])
        await #expect(throws: ModbusError.timeout(function: "read holding registers")) { _ = try await silent.value }
        try await bus.writeRegister(unit: 2, address: 3, value: 99)
        #expect(try await bus.readHoldingRegisters(unit: 2, address: 3, count: 1) == [99])
        _ = await server.stop()
        await pair.stop()
    }

    @Test("RTU over a pty against gateway simulate")
    func rtuOurSimulator() async throws {
        let pair = try await PtyPair.start()
        let sim = try await GatewaySimulator.startRTU(path: pair.b, ["--unit", "3", "--set", "coil:0=1", "--set", "input:7=700"])
        let bus = ModbusBus(configuration: BusConfiguration(name: "rtu", transport: .rtu(RTUSettings(path: pair.a, baud: 9600, parity: .even)),
                                                            responseTimeout: .milliseconds(500)))
        defer { bus.close() }
        #expect(try await bus.readCoils(unit: 3, address: 0, count: 2) == [true, false])
        #expect(try await bus.readInputRegisters(unit: 3, address: 7, count: 1) == [700])
        try await bus.writeCoil(unit: 3, address: 1, value: true)
        try await sim.waitForLine(containing: "\"fc\":5")
        #expect(await sim.stop() == 0)
        await pair.stop()
    }

    @Test("an RTU port is held with exclusive access: a second program opening it gets 'busy'")
    func rtuExclusive() async throws {
        let pair = try await PtyPair.start()
        let sim = try await GatewaySimulator.startRTU(path: pair.b, ["--unit", "3", "--set", "holding:0=7"])
        let bus = ModbusBus(configuration: BusConfiguration(name: "rtu", transport: .rtu(RTUSettings(path: pair.a, baud: 9600)),
                                                            responseTimeout: .milliseconds(500)))
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 3, address: 0, count: 1) == [7])
        // TIOCEXCL does not hold back root: as root, the second program runs as nobody.
        let device = try FileManager.default.destinationOfSymbolicLink(atPath: pair.a)
        chmod(device, 0o666)
        let gateway = try TestEnvironment.gatewayBinary()
        let read = ["read", "--rtu", device, "--unit", "3", "--holding", "0"]
        let second = getuid() == 0
            ? try ChildProcess(try TestEnvironment.require("setpriv"), ["--reuid=65534", "--regid=65534", "--clear-groups", gateway] + read)
            : try ChildProcess(gateway, read)
        #expect(try await second.waitForExit() == 1)
        #expect(second.lines.contains { $0.contains("another program (another gateway?) holds the port") }, "\(second.lines)")
        #expect(try await bus.readHoldingRegisters(unit: 3, address: 0, count: 1) == [7])
        _ = await sim.stop()
        await pair.stop()
    }
}

/// A value behind a mutex, shareable by reference between tasks.
/// A process with more than 1024 descriptors open: libmodbus's select() cannot wait on one that
/// high (glibc aborts the process). Run as a child (`gateway read`) with descriptors 3-1023 taken,
/// so its connection's socket would come out above.
@Suite("Modbus connection in a process with 1024 descriptors open")
struct DescriptorLimitTests {
    @Test("no descriptor below FD_SETSIZE free: the connection is refused with the reason, and the process does not abort")
    func aboveSelectLimit() async throws {
        let sim = try await GatewaySimulator.start(["--set", "holding:0=7"])
        let gateway = try TestEnvironment.gatewayBinary()
        let script = "for i in $(seq 3 1023); do eval \"exec $i</dev/null\"; done; exec \"$0\" \"$@\""
        let p = try ChildProcess("/bin/bash", ["-c", script, gateway, "read", "--tcp", "127.0.0.1:\(sim.port)", "--unit", "1", "--holding", "0"])
        let status = try await p.waitForExit(timeout: .seconds(30))
        #expect(status != 134 && status != 128 + SIGABRT, "aborted:\n\(p.tail)")
        #expect(status != 0, "read with descriptors up to 1023 taken: \(p.tail)")
        #expect(p.lines.contains { $0.contains("no descriptor below FD_SETSIZE (1024) is free") }, "\(p.tail)")
        _ = await sim.stop()
    }
}

final class Locked<T: Sendable>: Sendable {
    private let m: Mutex<T>
    init(_ v: T) { m = Mutex(v) }
    func withLock<R>(_ body: (inout T) -> R) -> R { m.withLock { body(&$0) } }
}
