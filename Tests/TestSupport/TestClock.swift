import Synchronization

/// A clock a test moves by hand, for in-process tests of what runs on timers (pulses, retries).
/// Its instants are `ContinuousClock` instants, starting at the real now; time moves only by
/// ``advance(by:)``, which wakes every sleeper whose deadline has come. A test awaits
/// ``sleepers(_:)`` to know a timer is set before it moves the clock: no real time passes.
///
/// The Gateway module's `GatewayClock` protocol is met by an extension in its test target
/// (TestSupport does not depend on Gateway).
public final class TestClock: Sendable {
    private struct Sleeper {
        let id: Int
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: ContinuousClock.Instant
        var nextID = 0
        var sleepers: [Sleeper] = []
        /// Tests waiting until at least this many sleepers are pending.
        var watchers: [(id: Int, count: Int, continuation: CheckedContinuation<Void, Never>)] = []

        mutating func readyWatchers() -> [CheckedContinuation<Void, Never>] {
            let n = sleepers.count
            let ready = watchers.filter { $0.count <= n }.map(\.continuation)
            watchers.removeAll { $0.count <= n }
            return ready
        }
    }

    private let state: Mutex<State>

    public init(now: ContinuousClock.Instant = .now) {
        state = Mutex(State(now: now))
    }

    public var now: ContinuousClock.Instant { state.withLock { $0.now } }

    /// How many sleepers wait now.
    public var pendingSleepers: Int { state.withLock { $0.sleepers.count } }

    /// Returns once ``advance(by:)`` reaches `deadline` (at once if it has), or throws
    /// `CancellationError` when the task is cancelled.
    public func sleep(until deadline: ContinuousClock.Instant) async throws {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                // Cancelled before it was parked: the cancellation handler found nothing to end.
                enum Step { case now, cancelled, parked([CheckedContinuation<Void, Never>]) }
                let step = state.withLock { s -> Step in
                    if deadline <= s.now { return .now }
                    if Task.isCancelled { return .cancelled }
                    s.sleepers.append(Sleeper(id: id, deadline: deadline, continuation: c))
                    return .parked(s.readyWatchers())
                }
                switch step {
                case .now: c.resume()
                case .cancelled: c.resume(throwing: CancellationError())
                case .parked(let watchers): for w in watchers { w.resume() }
                }
            }
        } onCancel: {
            let sleeper = state.withLock { s -> Sleeper? in
                guard let i = s.sleepers.firstIndex(where: { $0.id == id }) else { return nil }
                return s.sleepers.remove(at: i)
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves the clock on and wakes the sleepers whose deadline has come, earliest first.
    public func advance(by duration: Duration) {
        let due = state.withLock { s -> [Sleeper] in
            s.now += duration
            let now = s.now
            let due = s.sleepers.filter { $0.deadline <= now }.sorted { $0.deadline < $1.deadline }
            s.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for s in due { s.continuation.resume() }
    }

    /// Returns once at least `count` sleepers wait (a timer the code under test has set), or when
    /// the task is cancelled. Bound it with ``withTimeout(_:_:_:)``.
    public func sleepers(_ count: Int) async {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.sleepers.count >= count || Task.isCancelled { return true }
                    s.watchers.append((id, count, c))
                    return false
                }
                if ready { c.resume() }
            }
        } onCancel: {
            let watcher = state.withLock { s -> CheckedContinuation<Void, Never>? in
                guard let i = s.watchers.firstIndex(where: { $0.id == id }) else { return nil }
                return s.watchers.remove(at: i).continuation
            }
            watcher?.resume()
        }
    }
}

/// Runs `body`, failing with ``TimedOut`` if it has not finished within `limit` (real time): the
/// bound on every wait of an in-process test. `body` is cancelled then, and must end when it is.
public func withTimeout<T: Sendable>(_ limit: Duration = .seconds(10), _ what: String = "",
                                     _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TimedOut(what: what, limit: limit) }
        return value
    }
}

public struct TimedOut: Error, CustomStringConvertible {
    public let what: String
    public let limit: Duration
    public var description: String { "timed out after \(limit)\(what.isEmpty ? "" : ": \(what)")" }
}
