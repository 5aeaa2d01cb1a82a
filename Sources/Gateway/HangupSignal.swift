import Logging
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// SIGHUP never ends the gateway. A closed SSH terminal, `systemctl reload` or a `kill -HUP` by
/// habit used to kill it at once, in the middle of a pulse: no "off", no `offline`, and systemd
/// counted it as a clean exit. Configuration reload does not exist yet, so a SIGHUP is logged and
/// the gateway carries on. SIGPIPE is ignored too (a write to a closed socket or pipe is an error
/// return, not a death).
public struct HangupSignal: Service {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    /// Call first thing at start, before any service runs, so that no SIGHUP can arrive while
    /// its default action (terminate) is still in place.
    public static func ignoreAtStart() {
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
    }

    public func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        for await _ in hangups.cancelOnGracefulShutdown() {
            logger.notice("SIGHUP received: configuration reload is not supported yet; carrying on with the running configuration")
        }
    }
}
