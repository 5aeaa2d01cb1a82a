#if canImport(Glibc)
import Glibc
#endif

/// SIGHUP never ends the gateway. A closed SSH terminal, `systemctl reload` or a `kill -HUP` by
/// habit used to kill it at once, in the middle of a pulse: no "off", no `offline`, and systemd
/// counted it as a clean exit. It is ignored from the first instant; ``ConfigurationReloader``
/// then traps it and reloads the configuration. SIGPIPE is ignored too (a write to a closed
/// socket or pipe is an error return, not a death).
public enum HangupSignal {
    /// Call first thing at start, before any service runs, so that no SIGHUP can arrive while
    /// its default action (terminate) is still in place.
    public static func ignoreAtStart() {
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
    }
}
