import CModbus
import Logging
import Synchronization

// The Modbus module: the Swift face of libmodbus. A ``ModbusBus`` is one TCP connection or RTU
// line with its own thread (libmodbus blocks and a context is not thread-safe), taking requests
// by priority (commands before polls) with deadlines, reconnecting by itself, and never retrying
// a write whose outcome is unknown. ``ReadPlanner`` merges a device's points into few reads and
// splits them again where the device refuses; ``RegisterCodec`` turns registers into typed,
// scaled values and back (floats decoded in Swift: libmodbus's helpers are wrong here).

/// The four Modbus data tables.
public enum RegisterKind: String, Sendable, CaseIterable, Hashable, Comparable {
    case coil, discrete, holding, input

    /// True for the 1-bit tables (coils, discrete inputs).
    public var isBit: Bool { self == .coil || self == .discrete }
    /// True for tables a master may write (coils, holding registers).
    public var isWritable: Bool { self == .coil || self == .holding }
    /// Most items one read may ask for (2000 bits / 125 registers).
    public var maxReadCount: Int { isBit ? 2000 : 125 }

    public static func < (a: Self, b: Self) -> Bool { a.order < b.order }
    private var order: Int { switch self { case .coil: 0; case .discrete: 1; case .holding: 2; case .input: 3 } }
}

/// Where a request goes in the bus queue: `.high` (commands) runs before every queued `.normal` (polls).
public enum RequestPriority: Int, Sendable, Comparable {
    case normal = 0, high = 1
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// The result of a read: bits for coils/discrete inputs, 16-bit words for registers.
public enum ReadResult: Sendable, Equatable {
    case bits([Bool])
    case registers([UInt16])

    public var count: Int { switch self { case .bits(let b): b.count; case .registers(let r): r.count } }
}

/// Counters of one bus since it was made (operations metrics).
public struct BusStatistics: Sendable, Equatable {
    /// Modbus transactions started on the line (a merged read is one).
    public var requests = 0
    /// Transactions that failed: no answer, a bad answer, an exception, a lost connection.
    public var errors = 0
    /// Requests that had not started by their deadline because the bus was busy.
    public var busyRefusals = 0
    /// Time spent running requests.
    public var busyNanoseconds: Int64 = 0
}

/// One physical Modbus line or TCP connection.
///
/// The bus owns one libmodbus context and one thread; every transaction runs on that thread,
/// one at a time, so nothing blocks Swift's cooperative pool. Requests wait in a queue ordered
/// by priority (FIFO within one priority). A request may carry a deadline: if it has not started
/// by then it fails with ``ModbusError/busBusy`` instead of running late.
public final class ModbusBus: Sendable {
    public let configuration: BusConfiguration
    private let logger: Logger
    private let queue: ConditionLock<Queue>

    private struct Job: Sendable {
        let id: UInt64
        let priority: RequestPriority
        let deadline: ContinuousClock.Instant?
        let run: @Sendable (ModbusConnection) -> Void
        let fail: @Sendable (any Error) -> Void
    }

    private struct Queue {
        var statistics = BusStatistics()
        var jobs: [Job] = []
        var nextID: UInt64 = 1
        var stopped = false
        var finished = false
    }

    public init(configuration: BusConfiguration, logger: Logger = Logger(label: "gateway.modbus")) {
        self.configuration = configuration
        var named = logger
        named[metadataKey: "bus"] = "\(configuration.name)"
        self.logger = named
        let logger = named
        self.queue = ConditionLock(Queue())
        let queue = self.queue
        let config = configuration
        startThread(name: "bus-\(configuration.name)") {
            Self.threadMain(queue: queue, configuration: config, logger: logger)
        }
    }

    deinit {
        queue.withLockSignalling { $0.stopped = true }
    }

    private static func threadMain(queue: ConditionLock<Queue>, configuration: BusConfiguration, logger: Logger) {
        let connection = ModbusConnection(configuration: configuration, logger: logger)
        while true {
            let next: Job? = queue.wait { q -> Job?? in
                if q.stopped { return .some(nil) }
                guard !q.jobs.isEmpty else { return nil }
                // Highest priority first; FIFO within a priority (ids grow).
                var best = 0
                for i in q.jobs.indices.dropFirst() where q.jobs[i].priority > q.jobs[best].priority {
                    best = i
                }
                return .some(q.jobs.remove(at: best))
            }
            guard let job = next else { break }
            let started = ContinuousClock.now
            if let deadline = job.deadline, started > deadline {
                queue.withLock { $0.statistics.busyRefusals += 1 }
                job.fail(ModbusError.busBusy)
                continue
            }
            job.run(connection)
            let took = ContinuousClock.now - started
            queue.withLock { q in
                q.statistics.requests = connection.transactions
                q.statistics.errors = connection.failures
                q.statistics.busyNanoseconds += took.nanoseconds
            }
        }
        connection.close()
        let rest = queue.withLockSignalling { q in
            q.finished = true
            defer { q.jobs.removeAll() }
            return q.jobs
        }
        for job in rest { job.fail(ModbusError.closed) }
    }

    /// What the bus has done since it was made.
    public var statistics: BusStatistics { queue.withLock { $0.statistics } }

    /// Requests waiting in the queue (not counting the one running).
    public var queuedCount: Int { queue.withLock { $0.jobs.count } }

    /// Stops the bus thread after the running transaction; queued requests fail with ``ModbusError/closed``.
    public func close() {
        queue.withLockSignalling { $0.stopped = true }
    }

    /// A request's queue id once queued, and whether its task was cancelled (a lock word, not a
    /// pthread mutex and condition: one is made per request).
    private final class Ticket: Sendable {
        let state = Mutex<(id: UInt64?, cancelled: Bool)>((nil, false))
    }

    /// Runs `body` on the bus thread with exclusive use of the connection.
    func submit<T: Sendable>(priority: RequestPriority, deadline: ContinuousClock.Instant?,
                             _ body: @escaping @Sendable (ModbusConnection) throws(ModbusError) -> T) async throws -> T {
        // The request's queue id once queued, and whether its task was cancelled: a task
        // cancelled before its request is queued must not have it run (the handler below runs
        // at once then, before there is anything to remove).
        let ticket = Ticket()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
                let accepted = queue.withLockSignalling { q -> Bool? in
                    guard !q.stopped else { return false }
                    // Under the queue's lock: the cancel handler takes it too before removing.
                    let cancelled = ticket.state.withLock { t -> Bool in
                        if t.cancelled { return true }
                        t.id = q.nextID
                        return false
                    }
                    if cancelled { return nil }
                    let id = q.nextID
                    q.nextID += 1
                    q.jobs.append(Job(id: id, priority: priority, deadline: deadline, run: { conn in
                        do throws(ModbusError) {
                            cont.resume(returning: try body(conn))
                        } catch {
                            cont.resume(throwing: error)
                        }
                    }, fail: { cont.resume(throwing: $0) }))
                    return true
                }
                switch accepted {
                case .some(true): break
                case .some(false): cont.resume(throwing: ModbusError.closed)
                case .none: cont.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            // Remove the request if it has not started; a running transaction finishes.
            let removed = queue.withLock { q -> Job? in
                guard let id = ticket.state.withLock({ t -> UInt64? in t.cancelled = true; return t.id }),
                      let i = q.jobs.firstIndex(where: { $0.id == id }) else { return nil }
                return q.jobs.remove(at: i)
            }
            removed?.fail(CancellationError())
        }
    }

    // MARK: Reads

    /// Reads `count` items of `kind` from `unit` starting at `address` (FC 1, 2, 3 or 4).
    public func read(_ kind: RegisterKind, unit: Int, address: Int, count: Int,
                     priority: RequestPriority = .normal, deadline: ContinuousClock.Instant? = nil) async throws -> ReadResult {
        try Self.checkRange(address: address, count: count, max: kind.maxReadCount)
        let op: ModbusOperation = kind.isBit ? .readBits(kind, address: address, count: count) : .readRegisters(kind, address: address, count: count)
        return try await submit(priority: priority, deadline: deadline) { (conn) throws(ModbusError) -> ReadResult in
            switch try conn.perform(unit: unit, op) {
            case .bits(let b): .bits(b)
            case .registers(let r): .registers(r)
            case .done: .registers([])
            }
        }
    }

    public func readCoils(unit: Int, address: Int, count: Int) async throws -> [Bool] {
        guard case .bits(let b) = try await read(.coil, unit: unit, address: address, count: count) else { return [] }
        return b
    }

    public func readDiscreteInputs(unit: Int, address: Int, count: Int) async throws -> [Bool] {
        guard case .bits(let b) = try await read(.discrete, unit: unit, address: address, count: count) else { return [] }
        return b
    }

    public func readHoldingRegisters(unit: Int, address: Int, count: Int) async throws -> [UInt16] {
        guard case .registers(let r) = try await read(.holding, unit: unit, address: address, count: count) else { return [] }
        return r
    }

    public func readInputRegisters(unit: Int, address: Int, count: Int) async throws -> [UInt16] {
        guard case .registers(let r) = try await read(.input, unit: unit, address: address, count: count) else { return [] }
        return r
    }

    // MARK: Writes

    /// FC 5: writes one coil. Writes default to `.high` priority (ahead of queued polls).
    public func writeCoil(unit: Int, address: Int, value: Bool,
                          priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws {
        try Self.checkRange(address: address, count: 1, max: 1)
        try await submit(priority: priority, deadline: deadline) { (conn) throws(ModbusError) in
            _ = try conn.perform(unit: unit, .writeBit(address: address, value: value))
        }
    }

    /// FC 15: writes several coils.
    public func writeCoils(unit: Int, address: Int, values: [Bool],
                           priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws {
        try Self.checkRange(address: address, count: values.count, max: 1968)
        try await submit(priority: priority, deadline: deadline) { (conn) throws(ModbusError) in
            _ = try conn.perform(unit: unit, .writeBits(address: address, values: values))
        }
    }

    /// FC 6: writes one holding register.
    public func writeRegister(unit: Int, address: Int, value: UInt16,
                              priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws {
        try Self.checkRange(address: address, count: 1, max: 1)
        try await submit(priority: priority, deadline: deadline) { (conn) throws(ModbusError) in
            _ = try conn.perform(unit: unit, .writeRegister(address: address, value: value))
        }
    }

    /// FC 16: writes several holding registers.
    public func writeRegisters(unit: Int, address: Int, values: [UInt16],
                               priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws {
        try Self.checkRange(address: address, count: values.count, max: 123)
        try await submit(priority: priority, deadline: deadline) { (conn) throws(ModbusError) in
            _ = try conn.perform(unit: unit, .writeRegisters(address: address, values: values))
        }
    }

    /// FC 23: writes `values` at `writeAddress`, then reads `readCount` registers at `readAddress`, in one transaction.
    public func writeAndReadRegisters(unit: Int, writeAddress: Int, values: [UInt16], readAddress: Int, readCount: Int,
                                      priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws -> [UInt16] {
        try Self.checkRange(address: writeAddress, count: values.count, max: 121)
        try Self.checkRange(address: readAddress, count: readCount, max: 125)
        return try await submit(priority: priority, deadline: deadline) { (conn) throws(ModbusError) -> [UInt16] in
            guard case .registers(let r) = try conn.perform(unit: unit, .writeAndRead(writeAddress: writeAddress, values: values,
                                                                                       readAddress: readAddress, readCount: readCount)) else { return [] }
            return r
        }
    }

    static func checkRange(address: Int, count: Int, max: Int) throws(ModbusError) {
        guard (0...0xFFFF).contains(address) else { throw .invalidArgument("address \(address) is outside 0...65535") }
        guard (1...max).contains(count) else { throw .invalidArgument("count \(count) is outside 1...\(max)") }
        guard address + count <= 0x10000 else { throw .invalidArgument("address \(address) + count \(count) passes 65535") }
    }
}
