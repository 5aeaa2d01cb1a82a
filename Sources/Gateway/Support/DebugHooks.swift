#if DEBUG
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Faults a test can switch on in a debug build (never compiled into a release build).
enum DebugHooks {
    /// `GATEWAY_DEBUG_STALL_POLLER_AFTER_S=N`: every bus poller hangs N seconds after start,
    /// as a poll loop stuck in a driver would (the watchdog test).
    static let pollerStall: Duration? = {
        guard let text = getenv("GATEWAY_DEBUG_STALL_POLLER_AFTER_S").map({ String(cString: $0) }), let s = Double(text) else { return nil }
        return .seconds(s)
    }()

    /// `GATEWAY_DEBUG_LIVENESS_GRACE_MS=N`: ``Liveness/grace`` shortened, so that the test of a
    /// hung loop does not wait 10 s.
    static let livenessGrace: Duration? = {
        guard let text = getenv("GATEWAY_DEBUG_LIVENESS_GRACE_MS").map({ String(cString: $0) }), let ms = Int(text) else { return nil }
        return .milliseconds(ms)
    }()

    /// `GATEWAY_DEBUG_CLOCK_SYNCED_FILE=path`: the system clock counts as synchronised while
    /// that file exists (the kernel of the build and CI machines says it never is), so a test
    /// can switch it on and off under a running gateway.
    static let clockSyncedFile: String? = getenv("GATEWAY_DEBUG_CLOCK_SYNCED_FILE").map { String(cString: $0) }

    /// In-process tests: this many reads of the outbox fail (an I/O error) before they work again.
    static let outboxReadFailures = Atomic<Int>(0)
}
#endif
