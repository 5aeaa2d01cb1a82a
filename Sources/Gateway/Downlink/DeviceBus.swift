import Modbus

/// What a Modbus device's commands go through: one read or one write, with a priority and a
/// deadline (a request not started by then is refused, `busBusy`). ``ModbusBus`` is the real one
/// (one thread per bus, libmodbus); in-process tests script one.
protocol DeviceBus: PollingBus {
    /// How long one request may wait for its answer.
    var responseTimeout: Duration { get }
    /// Ends the bus: queued requests fail.
    func close()
    func read(_ kind: RegisterKind, unit: Int, address: Int, count: Int,
              priority: RequestPriority, deadline: ContinuousClock.Instant?) async throws -> ReadResult
    /// One write at high priority (``ModbusBus/write(_:unit:address:multiple:deadline:)``).
    func write(_ data: WritePlan.Data, unit: Int, address: Int, multiple: Bool, deadline: ContinuousClock.Instant) async throws
}

extension ModbusBus: DeviceBus {
    var responseTimeout: Duration { configuration.responseTimeout }
}
