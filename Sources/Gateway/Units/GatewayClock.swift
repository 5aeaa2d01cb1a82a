/// Where the gateway's timers take their time from: the system's monotonic clock when it runs
/// (``SystemClock``), a clock a test moves by hand (TestSupport's `TestClock`) in-process. The
/// instants are `ContinuousClock` instants either way, so a deadline handed to a bus means the
/// same in both.
protocol GatewayClock: Sendable {
    var now: ContinuousClock.Instant { get }
    /// Returns at `deadline` or later; throws `CancellationError` when the task is cancelled.
    func sleep(until deadline: ContinuousClock.Instant) async throws
}

/// The system's monotonic clock.
struct SystemClock: GatewayClock {
    var now: ContinuousClock.Instant { .now }
    func sleep(until deadline: ContinuousClock.Instant) async throws {
        try await Task.sleep(until: deadline, clock: .continuous)
    }
}
