#if canImport(Glibc)
import Glibc
#endif

/// Small files in `state_dir` (the pulse journal, the ids of signed commands, counters' last
/// readings), written one way: appended, or replaced whole (a temporary file renamed over the old
/// one, so a crash leaves the old file or the new one, never a mix). Blocking: callers run it on
/// a serial queue of their own, off the poll and command paths.
enum StateFile {
    /// Writes `bytes` to `path`, appended or replacing it; `sync`: flushed to the storage device
    /// (`fdatasync`) before it counts as written (and, replacing, before the rename: a power cut
    /// then leaves the old file or the new one with its content). 0, or the errno of the failure.
    static func write(_ bytes: [UInt8], to path: String, append: Bool = false, sync: Bool = true) -> Int32 {
        let target = append ? path : path + ".tmp"
        let fd = Glibc.open(target, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0o600)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n != bytes.count {
            let err = n < 0 ? errno : ENOSPC
            // A torn append leaves a partial last line; readers skip a line they cannot read,
            // and the next append starts on a line of its own.
            if append && n > 0 { _ = Glibc.write(fd, "\n", 1) }
            return err
        }
        if sync && fdatasync(fd) != 0 { return errno }
        if !append && rename(target, path) != 0 { return errno }
        return 0
    }

    /// Flushes the directory of `path`, so that a rename in it reaches the storage device.
    static func syncDirectory(of path: String) {
        let dir = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
        let d = Glibc.open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 { _ = fsync(d); close(d) }
    }

    /// An errno for the log: `No space left on device (errno 28)`.
    static func describe(_ e: Int32) -> String { String(cString: strerror(e)) + " (errno \(e))" }
}
