#if canImport(Glibc)
import Glibc
#endif

/// One gateway per state directory: `<state_dir>/gateway.lock`, held with `flock` for the life of
/// the process (the kernel lets go of it when the process ends, however it ends). A second
/// instance with the same state directory would share the pulse journal and, on the same site,
/// the RS-485 line and the MQTT client id; it is refused with the other instance's pid.
public final class InstanceLock: Sendable {
    public let path: String
    private let fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }

    public enum Outcome: Sendable {
        case held(InstanceLock)
        /// The directory cannot take the lock file (missing, not writable): no lock, said once.
        case unavailable(String)
    }

    /// Another gateway holds the lock: why, with its pid when the file names one.
    public struct Held: Error, CustomStringConvertible {
        public let description: String
    }

    /// Takes the lock, writing our pid into the file. Throws ``Held`` when another process holds it.
    public static func acquire(directory: String) throws(Held) -> Outcome {
        let path = directory + "/gateway.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            return .unavailable("cannot open \(path): \(String(cString: strerror(errno))); a second gateway with this state_dir would not be noticed")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, 31, 0)
            close(fd)
            let pid = n > 0 ? String(decoding: buf[..<n], as: UTF8.self).filter(\.isNumber) : ""
            if e == EWOULDBLOCK {
                throw Held(description: "another gateway\(pid.isEmpty ? "" : " (pid \(pid))") is running with state_dir \(directory) (lock \(path)); stop it first, or give this one its own state_dir")
            }
            return .unavailable("cannot lock \(path): \(String(cString: strerror(e)))")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return .held(InstanceLock(path: path, fd: fd))
    }
}
