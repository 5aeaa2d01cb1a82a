#if canImport(Glibc)
import Glibc
#endif

/// `sd_notify` without libsystemd: one datagram to the socket in `$NOTIFY_SOCKET` (a path, or an
/// abstract name starting with `@`). Made only when systemd asked for it (`Type=notify`).
public struct SystemdNotifier: Sendable {
    private let address: [UInt8]
    /// Half of `$WATCHDOG_USEC` when systemd's watchdog is on for this process (`WatchdogSec=`):
    /// how often to say `WATCHDOG=1`.
    public let watchdogInterval: Duration?

    /// From the environment; nil when `$NOTIFY_SOCKET` is not set (not started by systemd).
    public init?(environment: (String) -> String? = { getenv($0).map { String(cString: $0) } }) {
        guard let socket = environment("NOTIFY_SOCKET"), !socket.isEmpty,
              socket.hasPrefix("/") || socket.hasPrefix("@"), socket.utf8.count < 108 else { return nil }
        var bytes = Array(socket.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }   // abstract namespace
        address = bytes
        // WATCHDOG_PID, when set, names the process the watchdog is for.
        let pidMatches = environment("WATCHDOG_PID").map { Int32($0) == getpid() } ?? true
        if pidMatches, let usec = environment("WATCHDOG_USEC").flatMap({ Int64($0) }), usec > 0 {
            watchdogInterval = .microseconds(usec / 2)
        } else {
            watchdogInterval = nil
        }
    }

    /// Sends `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`); false when it could not be sent.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { path in
            for (i, b) in address.enumerated() { path[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + address.count)
        let bytes = Array((state.hasSuffix("\n") ? state : state + "\n").utf8)   // newline-separated assignments
        let sent = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                sendto(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL), sa, length)
            }
        }
        return sent == bytes.count
    }
}
