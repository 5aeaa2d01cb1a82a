import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The far end of a pty pair, opened raw by the test (stands in for the device).
public final class FarEnd: Sendable {
    public let fd: Int32
    public init(_ path: String) throws {
        fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { throw FixtureError("cannot open \(path): errno \(errno)") }
        var t = termios()
        tcgetattr(fd, &t)
        cfmakeraw(&t)
        tcsetattr(fd, TCSANOW, &t)
        // Non-blocking, so that a write to a line nobody reads waits only until its deadline.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }
    /// Writes everything, or returns false when the line took nothing for `timeout` or failed
    /// (blocking I/O runs on a thread of its own, never on Swift's cooperative pool).
    @discardableResult
    public func send(_ bytes: [UInt8], timeout: Duration = .seconds(30)) async -> Bool {
        let fd = self.fd
        return await offPool {
            var off = 0
            var deadline = ContinuousClock.now + timeout
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
                if n > 0 {
                    off += n
                    deadline = ContinuousClock.now + timeout   // progress: a slow reader is not a dead one
                } else if n < 0 && errno == EAGAIN {
                    guard ContinuousClock.now < deadline else { return false }
                    var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&p, 1, 100)
                } else if n < 0 && errno != EINTR {
                    return false
                }
            }
            return true
        }
    }
    @discardableResult
    public func send(_ s: String) async -> Bool { await send(Array(s.utf8)) }
    /// Reads until `count` bytes arrived (bounded by `timeout`).
    public func receive(_ count: Int, timeout: Duration = .seconds(5)) async -> [UInt8] {
        await offPool { self.receiveBlocking(count, timeout: timeout) }
    }

    private func receiveBlocking(_ count: Int, timeout: Duration) -> [UInt8] {
        var out: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        while out.count < count, ContinuousClock.now < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &buf, min(4096, count - out.count))
            if n > 0 { out += buf[0..<n] } else if n < 0 && errno != EAGAIN { break }
        }
        return out
    }
    /// Reads whatever arrives within `timeout` (bounded in size).
    public func drain(timeout: Duration = .milliseconds(200)) async -> [UInt8] { await receive(1 << 20, timeout: timeout) }
    deinit { close(fd) }
}


/// Runs blocking work on a thread of its own. Not on `DispatchQueue.global()`: on Linux its
/// worker threads count against the same per-CPU limit as Swift's cooperative pool, so a read that
/// blocks for seconds there stalled every task of the test process (timers fired seconds late).
func offPool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in
        Thread.detachNewThread { c.resume(returning: work()) }
    }
}
