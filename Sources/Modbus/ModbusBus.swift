import CModbus
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

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
    /// Requests sent at once by the thread that made them, the bus thread reading only the answer
    /// (commands on an idle TCP bus; counted in ``requests`` too).
    public var sentAtOnce = 0
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
    private let transactions = MBAPTransactions()

    private struct Job: Sendable {
        let id: UInt64
        let priority: RequestPriority
        let deadline: ContinuousClock.Instant?
        /// Its request is already on the wire (``submit``'s early send): taken before any other
        /// job, and even once the bus is stopping, so that its answer is read.
        var inFlight = false
        /// Runs the transaction; returns what hands its outcome to the caller, which the bus
        /// thread calls once it has marked itself idle (``Queue/idleSocket``).
        let run: @Sendable (ModbusConnection) -> () -> Void
        let fail: @Sendable (any Error) -> Void
    }

    private struct Queue {
        var statistics = BusStatistics()
        var jobs: [Job] = []
        var nextID: UInt64 = 1
        var stopped = false
        var finished = false
        /// The connection's socket while the bus thread waits for work with a `tcp` connection
        /// open (``ModbusConnection/idleSocket``), else -1: a request may then be sent at once.
        var idleSocket: Int32 = -1
    }

    /// A request the thread that makes it may send itself, when the bus thread is idle: its
    /// frame, and how the bus thread then reads and checks the answer (transaction id, and
    /// whether the whole frame went out).
    struct EarlySend<T: Sendable>: Sendable {
        var frame: [UInt8]
        let confirm: @Sendable (ModbusConnection, UInt16, Bool) throws(ModbusError) -> T
    }

    public init(configuration: BusConfiguration, logger: Logger = Logger(label: "gateway.modbus")) {
        self.configuration = configuration
        var named = logger
        named[metadataKey: "bus"] = "\(configuration.name)"
        self.logger = named
        let logger = named
        self.queue = ConditionLock(Queue())
        let queue = self.queue, transactions = self.transactions
        let config = configuration
        startThread(name: "bus-\(configuration.name)") {
            Self.threadMain(queue: queue, configuration: config, transactions: transactions, logger: logger)
        }
    }

    deinit {
        queue.withLockSignalling { $0.stopped = true }
    }

    private static func threadMain(queue: ConditionLock<Queue>, configuration: BusConfiguration,
                                   transactions: MBAPTransactions, logger: Logger) {
        let connection = ModbusConnection(configuration: configuration, transactionIDs: transactions, logger: logger)
        while true {
            let next: Job? = queue.wait { q -> Job?? in
                if let i = q.jobs.firstIndex(where: \.inFlight) {
                    return .some(q.jobs.remove(at: i))
                }
                if q.stopped {
                    q.idleSocket = -1
                    return .some(nil)
                }
                guard !q.jobs.isEmpty else {
                    q.idleSocket = connection.idleSocket
                    return nil
                }
                q.idleSocket = -1
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
            let answer = job.run(connection)
            let took = ContinuousClock.now - started
            queue.withLock { q in
                q.statistics.requests = connection.transactions
                q.statistics.errors = connection.failures
                q.statistics.busyNanoseconds += took.nanoseconds
                // Idle before the caller learns the outcome: a request it makes at once (a
                // command's read-back after its write) can then be sent at once too.
                if q.jobs.isEmpty && !q.stopped { q.idleSocket = connection.idleSocket }
            }
            answer()
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
    ///
    /// `early`: when the bus thread waits idle with a `tcp` connection open, nothing is queued and
    /// the deadline has not passed, the calling thread sends the request itself, at once, and the
    /// bus thread only reads the answer (`early.confirm`), first of its jobs. A command then
    /// reaches the device without waiting for the bus thread to wake (about 0.1 ms on the machine
    /// of README "Footprint"). The send never blocks (`MSG_DONTWAIT`); when nothing went out, or
    /// the device has closed the idle connection, the request is queued as usual and the bus
    /// thread sends it (reconnecting first, or meeting any error itself).
    func submit<T: Sendable>(priority: RequestPriority, deadline: ContinuousClock.Instant?, early: EarlySend<T>? = nil,
                             _ body: @escaping @Sendable (ModbusConnection) throws(ModbusError) -> T) async throws -> T {
        // The request's queue id once queued, and whether its task was cancelled: a task
        // cancelled before its request is queued must not have it run (the handler below runs
        // at once then, before there is anything to remove). A request sent early has no id: it
        // is on the wire, and its answer is read whatever happens to the task.
        let ticket = Ticket()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
                let accepted = queue.withLockSignalling { q -> Bool? in
                    guard !q.stopped else { return false }
                    // Under the queue's lock: the cancel handler takes it too before removing.
                    if ticket.state.withLock({ $0.cancelled }) { return nil }
                    let id = q.nextID
                    q.nextID += 1
                    if var early, q.idleSocket >= 0, q.jobs.isEmpty, deadline.map({ ContinuousClock.now <= $0 }) ?? true,
                       !ModbusConnection.isSpent(q.idleSocket) {
                        let transaction = transactions.next()
                        MBAP.stamp(&early.frame, transaction: transaction)
                        let sent = early.frame.withUnsafeBytes {
                            Glibc.send(q.idleSocket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                        }
                        if sent > 0 {
                            q.idleSocket = -1
                            q.statistics.sentAtOnce += 1
                            let whole = sent == early.frame.count, confirm = early.confirm
                            q.jobs.append(Job(id: id, priority: .high, deadline: nil, inFlight: true, run: { conn in
                                let outcome = Result { () throws(ModbusError) in try confirm(conn, transaction, whole) }
                                return { cont.resume(with: outcome.mapError { $0 }) }
                            }, fail: { cont.resume(throwing: $0) }))
                            return true
                        }
                    }
                    ticket.state.withLock { $0.id = id }
                    q.jobs.append(Job(id: id, priority: priority, deadline: deadline, run: { conn in
                        let outcome = Result { () throws(ModbusError) in try body(conn) }
                        return { cont.resume(with: outcome.mapError { $0 }) }
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

    /// Runs `op` on `unit`: a `.high` request on a `tcp` bus may be sent at once (``submit``).
    private func perform(_ op: ModbusOperation, unit: Int, priority: RequestPriority,
                         deadline: ContinuousClock.Instant?) async throws -> ModbusAnswer {
        var early: EarlySend<ModbusAnswer>?
        // Other units are refused by the bus thread.
        if priority == .high, case .tcp = configuration.transport, MBAP.carries(unit: unit) {
            early = EarlySend(frame: MBAP.seal(transaction: 0, unit: unit, pdu: op.requestPDU)) { (conn, transaction, whole) throws(ModbusError) in
                try conn.confirm(op, transaction: transaction, sentWhole: whole)
            }
        }
        return try await submit(priority: priority, deadline: deadline, early: early) { (conn) throws(ModbusError) in
            try conn.perform(unit: unit, op)
        }
    }

    // MARK: Reads

    /// Reads `count` items of `kind` from `unit` starting at `address` (FC 1, 2, 3 or 4).
    public func read(_ kind: RegisterKind, unit: Int, address: Int, count: Int,
                     priority: RequestPriority = .normal, deadline: ContinuousClock.Instant? = nil) async throws -> ReadResult {
        try Self.checkRange(address: address, count: count, max: kind.maxReadCount)
        let op: ModbusOperation = kind.isBit ? .readBits(kind, address: address, count: count) : .readRegisters(kind, address: address, count: count)
        switch try await perform(op, unit: unit, priority: priority, deadline: deadline) {
        case .bits(let b): return .bits(b)
        case .registers(let r): return .registers(r)
        case .done: return .registers([])
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
        _ = try await perform(.writeBit(address: address, value: value), unit: unit, priority: priority, deadline: deadline)
    }

    /// FC 15: writes several coils.
    public func writeCoils(unit: Int, address: Int, values: [Bool],
                           priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws {
        try Self.checkRange(address: address, count: values.count, max: 1968)
        _ = try await perform(.writeBits(address: address, values: values), unit: unit, priority: priority, deadline: deadline)
    }

    /// FC 6: writes one holding register.
    public func writeRegister(unit: Int, address: Int, value: UInt16,
                              priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws {
        try Self.checkRange(address: address, count: 1, max: 1)
        _ = try await perform(.writeRegister(address: address, value: value), unit: unit, priority: priority, deadline: deadline)
    }

    /// FC 16: writes several holding registers.
    public func writeRegisters(unit: Int, address: Int, values: [UInt16],
                               priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws {
        try Self.checkRange(address: address, count: values.count, max: 123)
        _ = try await perform(.writeRegisters(address: address, values: values), unit: unit, priority: priority, deadline: deadline)
    }

    /// FC 23: writes `values` at `writeAddress`, then reads `readCount` registers at `readAddress`, in one transaction.
    public func writeAndReadRegisters(unit: Int, writeAddress: Int, values: [UInt16], readAddress: Int, readCount: Int,
                                      priority: RequestPriority = .high, deadline: ContinuousClock.Instant? = nil) async throws -> [UInt16] {
        try Self.checkRange(address: writeAddress, count: values.count, max: 121)
        try Self.checkRange(address: readAddress, count: readCount, max: 125)
        guard case .registers(let r) = try await perform(.writeAndRead(writeAddress: writeAddress, values: values,
                                                                        readAddress: readAddress, readCount: readCount),
                                                          unit: unit, priority: priority, deadline: deadline) else { return [] }
        return r
    }

    static func checkRange(address: Int, count: Int, max: Int) throws(ModbusError) {
        guard (0...0xFFFF).contains(address) else { throw .invalidArgument("address \(address) is outside 0...65535") }
        guard (1...max).contains(count) else { throw .invalidArgument("count \(count) is outside 1...\(max)") }
        guard address + count <= 0x10000 else { throw .invalidArgument("address \(address) + count \(count) passes 65535") }
    }
}
