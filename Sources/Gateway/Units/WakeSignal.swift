import Synchronization

/// Wakes the tasks waiting for something to happen: a serial device's reply, the first MQTT
/// connect. A generation counter, so a push between reading it and waiting is not lost; every
/// wait is bounded by a deadline and ends when its task is cancelled. A `Mutex` with parked
/// continuations rather than a stream: any number of waiters, and nothing kept while none waits.
final class WakeSignal: Sendable {
    private enum Waiter {
        case starting
        case parked(CheckedContinuation<Void, Never>)
        /// Gave up (its deadline or cancellation) before it was parked.
        case abandoned
    }
    private let state = Mutex<(generation: Int, nextID: Int, waiters: [Int: Waiter])>((0, 0, [:]))

    var generation: Int { state.withLock { $0.generation } }
    /// Waiters not yet returned (none once every wait has).
    var waiting: Int { state.withLock { $0.waiters.count } }

    /// It happened (again): every parked waiter wakes.
    func push() {
        let woken = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.generation += 1
            var woken: [CheckedContinuation<Void, Never>] = []
            for (id, w) in s.waiters { if case .parked(let c) = w { woken.append(c); s.waiters[id] = nil } }
            return woken
        }
        for c in woken { c.resume() }
    }

    /// True when the generation moved past `generation` (at once if it already had); false at
    /// `deadline` or when the waiting task is cancelled.
    func wait(after generation: Int, until deadline: ContinuousClock.Instant) async -> Bool {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            s.waiters[s.nextID] = .starting
            return s.nextID
        }
        // The deadline as a timer task that wakes this waiter; cancelled on return.
        let timer = Task { [weak self] in
            guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
            self?.giveUp(id)
        }
        defer { timer.cancel() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let parked = state.withLock { s -> Bool in
                    guard case .starting? = s.waiters[id], s.generation == generation, !Task.isCancelled else {
                        s.waiters[id] = nil
                        return false
                    }
                    s.waiters[id] = .parked(c)
                    return true
                }
                if !parked { c.resume() }
            }
        } onCancel: {
            giveUp(id)
        }
        return self.generation != generation
    }

    /// Waiter `id` stops waiting: woken if parked, else marked so that it does not park.
    private func giveUp(_ id: Int) {
        let parked = state.withLock { s -> CheckedContinuation<Void, Never>? in
            switch s.waiters[id] {
            case .parked(let c)?:
                s.waiters[id] = nil
                return c
            case .starting?:
                s.waiters[id] = .abandoned
                return nil
            case .abandoned?, nil:
                return nil
            }
        }
        parked?.resume()
    }
}
