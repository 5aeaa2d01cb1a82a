import Logging
import Synchronization

#if canImport(Glibc)
import CLinux
import Glibc
#endif

/// Whether the system clock can be trusted for a command's `ts` (`[gateway]
/// require_synced_clock`, on by default).
///
/// A Raspberry Pi has no battery-backed clock: it boots at the time fake-hwclock saved at the
/// last shutdown (or at 1970), and only NTP sets it right. Until then a signed command recorded
/// before a power cut can look fresh, and a correctly timed one looks stale or from the future.
/// So commands that are judged by their `ts` (signed ones, and every JSON command when
/// `command_max_age_ms` is set) are refused with "gateway clock not synchronised" until the
/// system says the clock is synchronised:
/// - the kernel's NTP state (`adjtimex`) is not `TIME_ERROR` (a time daemon that disciplines the
///   clock, chrony or ntpd, keeps it so; the kernel drops it about 9 hours after the last
///   update), or
/// - `/run/systemd/timesync/synchronized` exists: systemd-timesyncd (Raspberry Pi OS, Debian)
///   creates it at its first synchronisation after boot, and it stays until the next boot, also
///   through hours without a reachable time server.
///
/// The state is read at each such command (one system call and one `access`); a change is
/// logged once per episode.
final class ClockSync: Sendable {
    private let probe: @Sendable () -> Bool
    private let logger: Logger
    /// The state last seen: 0 unknown, 1 synchronised, 2 not.
    private let last = Atomic<Int>(0)

    /// `probe`: the seam for tests; the system's state by default.
    init(logger: Logger, probe: @escaping @Sendable () -> Bool = ClockSync.systemSynchronised) {
        self.logger = logger
        self.probe = probe
    }

    /// The system's state now (logged when it changes).
    var isSynchronised: Bool { synchronised(logging: true) }

    /// The system's state now; `logging`: say when it changes (not for a site that opted out).
    func synchronised(logging: Bool) -> Bool {
        let synced = probe()
        guard logging else { return synced }
        let state = synced ? 1 : 2
        let before = last.exchange(state, ordering: .relaxed)
        if before != state {
            if !synced {
                logger.warning("system clock not synchronised: signed commands and commands judged by command_max_age_ms are refused (\"gateway clock not synchronised\") until it is (NTP: systemd-timesyncd, chrony), unless require_synced_clock = false")
            } else if before == 2 {
                logger.notice("system clock synchronised: signed and timed commands are taken again")
            }
        }
        return synced
    }

    /// The kernel's NTP state, or systemd-timesyncd's flag file.
    @Sendable static func systemSynchronised() -> Bool {
        #if DEBUG
        if let file = DebugHooks.clockSyncedFile { return access(file, F_OK) == 0 }
        #endif
        if access("/run/systemd/timesync/synchronized", F_OK) == 0 { return true }
        #if canImport(Glibc)
        var tx = timex()
        return adjtimex(&tx) != TIME_ERROR
        #else
        return true
        #endif
    }
}
