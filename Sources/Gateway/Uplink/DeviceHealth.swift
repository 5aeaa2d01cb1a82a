/// Online/offline of one device from its polls, as a pure state machine.
///
/// Starts unknown; the first good poll makes it `online`; `offlineAfter` consecutive failed polls
/// make it `offline`. Each call says whether the state changed (publish and log only then).
public struct DeviceHealth: Sendable, Equatable {
    public enum State: String, Sendable, Equatable {
        case unknown, online, offline
    }

    public let offlineAfter: Int
    public private(set) var state: State = .unknown
    public private(set) var consecutiveFailures = 0

    public init(offlineAfter: Int) { self.offlineAfter = max(1, offlineAfter) }

    /// Records a good poll; returns the new state when it changed.
    public mutating func pollSucceeded() -> State? {
        consecutiveFailures = 0
        guard state != .online else { return nil }
        state = .online
        return state
    }

    /// Offline now, whatever the count (a serial port that closed); returns the new state when it changed.
    public mutating func markOffline() -> State? {
        consecutiveFailures = max(consecutiveFailures, offlineAfter)
        guard state != .offline else { return nil }
        state = .offline
        return state
    }

    /// Records a failed poll; returns the new state when it changed.
    public mutating func pollFailed() -> State? {
        consecutiveFailures += 1
        guard consecutiveFailures >= offlineAfter, state != .offline else { return nil }
        state = .offline
        return state
    }
}

/// A drift-free periodic schedule: tick k is at `start + k * period`. A late tick is not made up;
/// the schedule skips to the next future tick and counts the overrun.
public struct PollSchedule: Sendable {
    public let period: Duration
    public private(set) var next: ContinuousClock.Instant
    /// Ticks skipped because a poll took longer than the period.
    public private(set) var overruns = 0
    /// True while the latest poll overran (to log once per episode).
    public private(set) var inOverrun = false

    public init(period: Duration, start: ContinuousClock.Instant) {
        self.period = period
        self.next = start
    }

    /// The next tick is at `instant`, and the ticks after it every `period` from there (an
    /// offline device's probe; the first poll after it comes back).
    public mutating func restart(at instant: ContinuousClock.Instant) {
        next = instant
        inOverrun = false
    }

    /// Call after a poll that was due at `next` finished at `now`. Returns true when an overrun
    /// episode starts (log it), false otherwise.
    public mutating func advance(now: ContinuousClock.Instant) -> Bool {
        next = next + period
        var skipped = 0
        while next <= now {
            next = next + period
            skipped += 1
        }
        overruns += skipped
        let started = skipped > 0 && !inOverrun
        inOverrun = skipped > 0
        return started
    }
}

/// How often an offline device is probed: its poll period at first, then doubling up to `cap`
/// (`offline_poll_ms`), so that a dead unit on a shared line costs one timeout per probe, not one
/// per period. Reset when the device answers again.
public struct OfflineBackoff: Sendable, Equatable {
    public let period: Duration
    public let cap: Duration
    private var current: Duration?

    public init(period: Duration, cap: Duration) {
        self.period = period
        self.cap = max(cap, period)
    }

    /// The delay before the next probe: `period`, `2 * period`, `4 * period`... at most `cap`.
    public mutating func next() -> Duration {
        let delay = current.map { min($0 * 2, cap) } ?? min(period, cap)
        current = delay
        return delay
    }

    public mutating func reset() { current = nil }
}
