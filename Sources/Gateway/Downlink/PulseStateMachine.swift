/// One device's pulses (`pulse_ms` points): which are on, and which scheduled end is the current
/// one. Takes events and the time, returns what to do; the ``DeviceCommander`` does it (timers,
/// writes). A new "on" replaces the end scheduled before: each end carries a generation, and an
/// end whose generation is no longer the point's is ignored.
struct PulseStateMachine: Sendable {
    /// Why a pulse is being switched off.
    enum End: Sendable, Equatable {
        case over              // its pulse_ms has passed
        case leftOnEarlier     // in the journal at start: an earlier run did not end it
        case retry             // an earlier off was not taken by the device
    }

    enum Action: Sendable, Equatable {
        /// Submit an end job for `point` with `generation` at `at` (replacing the point's timer).
        case scheduleOff(point: Int, generation: Int, at: ContinuousClock.Instant, why: End)
        /// Submit an end job now (no timer).
        case offNow(point: Int, generation: Int, why: End)
        /// Write the off now, with this many attempts.
        case writeOff(point: Int, attempts: Int, why: End)
        /// Cancel the point's timer: the pulse is over by a command.
        case cancelTimer(point: Int)
        case none
    }

    /// An off the device did not take is tried again after this, for as long as the gateway runs.
    static let offRetry = Duration.seconds(5)

    /// Point -> generation of its current end.
    private var pending: [Int: Int] = [:]
    private var generation = 0

    /// Points with a pulse on.
    var on: [Int] { pending.keys.sorted() }

    private mutating func next(_ point: Int) -> Int {
        generation += 1
        pending[point] = generation
        return generation
    }

    /// At start: `points` were left on by an earlier run (the journal says so). Their ends go first.
    mutating func leftOn(_ points: [Int]) -> [Action] {
        points.map { .offNow(point: $0, generation: next($0), why: .leftOnEarlier) }
    }

    /// The point was written on (or the write's outcome is unknown: it may be on): it ends after `pulse`.
    mutating func switchedOn(_ point: Int, pulse: Duration, now: ContinuousClock.Instant) -> Action {
        .scheduleOff(point: point, generation: next(point), at: now + pulse, why: .over)
    }

    /// A command wrote the point off: its pulse is over.
    mutating func switchedOff(_ point: Int) -> Action {
        pending.removeValue(forKey: point) == nil ? .none : .cancelTimer(point: point)
    }

    /// An end job ran: write the off if it is the point's current end (a retry gets one attempt,
    /// the first off five), else nothing.
    mutating func endDue(_ point: Int, generation g: Int, why: End) -> Action {
        guard pending[point] == g else { return .none }
        pending[point] = nil
        return .writeOff(point: point, attempts: why == .retry ? 1 : 5, why: why)
    }

    /// The off was not taken (device unreachable): the off is the safe state, so try again later.
    /// A new "on" command replaces this retry with its own pulse.
    mutating func offFailed(_ point: Int, now: ContinuousClock.Instant) -> Action {
        .scheduleOff(point: point, generation: next(point), at: now + Self.offRetry, why: .retry)
    }

    /// Stopping: every pulse still on, to be switched off; nothing is pending after.
    mutating func stop() -> [Int] {
        defer { pending = [:] }
        return on
    }
}
