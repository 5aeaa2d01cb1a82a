import GatewayConfig
#if canImport(Glibc)
import CMalloc
import Glibc
#endif

/// Gives back the pages of the gateway's executable and shared libraries that start-up touched
/// and the steady state does not need (`[gateway] drop_startup_pages`, on by default).
///
/// Why: the kernel maps a file's pages in runs around every page fault (fault-around, 64 KiB)
/// and reads ahead around misses, so of the release binary's 14 MiB of code, of which about
/// 3.7 MiB of pages ever run, 8 MiB showed in the resident set; libc's code likewise. Unmapping
/// the code once start-up is over, and evicting the binary's pages that no process maps from the
/// page cache, leaves the steady state to map back only what it runs (plus the kernel's rounding
/// around it). Measured with `Benchmarks/uplink_bench.py`: README "Footprint".
///
/// Only file content is ever dropped: a private file mapping is unmapped (`MADV_DONTNEED`) only
/// if it is not writable and holds no anonymous (copied-on-write) page, so each of its pages
/// equals the file and is read again when next touched (a minor fault, or a read from storage if
/// evicted). Writable mappings (`.data`, the relocated `.data.rel.ro`) are left alone. These
/// mappings get `MADV_RANDOM`, so touching a page again does not read its neighbours. Only the
/// executable's own pages are evicted from the page cache; the libraries' stay cached for other
/// processes. Finally glibc's free heap pages (start-up's parsing and planning) go back
/// (`malloc_trim`).
public enum CodePages {
    /// How long after start the gateway gives its start-up pages back.
    public static let startupGrace: Duration = .seconds(5)

    public struct Outcome: Sendable, CustomStringConvertible {
        /// Mappings of the executable and shared libraries found, and how many of them were unmapped.
        public var mappings = 0, dropped = 0
        /// VmRSS before and after, KiB.
        public var residentBefore = 0, residentAfter = 0
        public var description: String {
            "\(mappings) mappings of the executable and libraries, \(dropped) dropped; resident \(residentBefore) -> \(residentAfter) KiB"
        }
    }

    private struct Mapping { var start: UInt; var end: UInt; var droppable: Bool; var anonymousKiB: Int? = nil }

    /// Drops what it can; nil where there is no /proc (not Linux).
    public static func trim() -> Outcome? {
        #if canImport(Glibc)
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let exe = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let smaps = ConfigLoader.readFile("/proc/self/smaps").map({ String(decoding: $0, as: UTF8.self) }) else { return nil }
        var out = Outcome()
        out.residentBefore = residentKiB() ?? 0
        var mappings: [Mapping] = []
        var current: Mapping?
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 5,
               let dash = first.firstIndex(of: "-"),
               let a = UInt(first[..<dash], radix: 16), let b = UInt(first[first.index(after: dash)...], radix: 16) {
                if let c = current { mappings.append(c) }
                let path = fields.count >= 6 ? fields[5...].joined(separator: " ") : ""
                // The executable and shared libraries (`/usr/lib/.../libc.so.6`); private, not writable.
                let perms = fields[1]
                let ours = path == exe || (path.hasPrefix("/") && path.contains(".so"))
                current = ours ? Mapping(start: a, end: b, droppable: !perms.contains("w") && perms.hasSuffix("p")) : nil
            } else if fields.first == "Anonymous:", fields.count >= 2, current != nil {
                current!.anonymousKiB = Int(fields[1])
            }
        }
        if let c = current { mappings.append(c) }
        for m in mappings {
            let p = UnsafeMutableRawPointer(bitPattern: m.start)
            let length = Int(m.end - m.start)
            out.mappings += 1
            _ = madvise(p, length, MADV_RANDOM)           // no read-around when touched again
            if m.droppable && m.anonymousKiB == 0 {   // only file content: nothing to lose
                if madvise(p, length, MADV_DONTNEED) == 0 { out.dropped += 1 }
            }
        }
        // The binary's cached pages that no process maps any more: out of the page cache, so the
        // next faults do not map their neighbours back in.
        let fd = open(exe, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
            close(fd)
        }
        // The heap's free pages (start-up's parsing, planning, first connect) back to the kernel.
        _ = malloc_trim(0)
        out.residentAfter = residentKiB() ?? 0
        return out
        #else
        return nil
        #endif
    }

    /// VmRSS of this process in KiB.
    private static func residentKiB() -> Int? {
        #if canImport(Glibc)
        guard let status = ConfigLoader.readFile("/proc/self/status").map({ String(decoding: $0, as: UTF8.self) }) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
        }
        #endif
        return nil
    }
}
