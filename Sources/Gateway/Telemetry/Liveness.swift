import Synchronization

/// Whether the gateway's loops still make progress: each bus poller, each serial line and the
/// command dispatcher says, every time it goes round, by when it will come round again. A loop
/// past that time is stalled. `/healthz` and the systemd watchdog ask ``stalled(now:)``.
///
/// A loop waiting for something that may never come (the dispatcher waiting for a command)
/// is idle, not stalled. The bounds are generous (the longest legitimate wait plus
/// ``grace``): this catches a loop that hangs, not one that is slow.
public final class Liveness: Sendable {
    struct Loop: Sendable {
        let name: String
        /// It must come round by then; nil while it waits for outside work.
        var due: ContinuousClock.Instant?
    }

    /// Added to every bound: 10 s.
    public static var grace: Duration {
        #if DEBUG
        DebugHooks.livenessGrace ?? .seconds(10)
        #else
        .seconds(10)
        #endif
    }

    private let loops = Mutex<[Loop]>([])

    public init() {}

    /// One loop's handle: it says when it will come round again, or that it waits for work.
    public struct Handle: Sendable {
        let liveness: Liveness
        let id: Int
        /// It will come round within `within` (plus ``grace``).
        public func expect(within: Duration) { liveness.expect(id, within: within) }
        /// It waits for outside work (no bound).
        public func idle() { liveness.idle(id) }
    }

    /// A new loop, idle until it first says when it is due. A loop restarted under the same
    /// name (a bus poller after a reload) takes its earlier slot.
    public func register(_ name: String) -> Handle {
        let id = loops.withLock { l in
            if let i = l.firstIndex(where: { $0.name == name }) {
                l[i].due = nil
                return i
            }
            l.append(Loop(name: name, due: nil))
            return l.count - 1
        }
        return Handle(liveness: self, id: id)
    }

    /// Loop `id` will come round within `within` (plus ``grace``).
    func expect(_ id: Int, within: Duration) {
        let due = ContinuousClock.now + within + Self.grace
        loops.withLock { $0[id].due = due }
    }

    /// Loop `id` waits for outside work (no bound).
    func idle(_ id: Int) {
        loops.withLock { $0[id].due = nil }
    }

    /// The loops that are past their bound, with how long.
    public func stalled(now: ContinuousClock.Instant = .now) -> [(name: String, late: Duration)] {
        loops.withLock { l in
            l.compactMap { loop in
                guard let due = loop.due, now > due else { return nil }
                return (loop.name, now - due)
            }
        }
    }
}
