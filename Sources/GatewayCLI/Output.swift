#if canImport(Glibc)
import Glibc
#endif

/// Writes a line to stdout unbuffered (tests wait for lines such as "listening ...").
func emit(_ line: String) {
    var s = line
    s.append("\n")
    s.withCString { p in
        var left = strlen(p), off = 0
        while left > 0 {
            let n = write(STDOUT_FILENO, p + off, left)
            if n <= 0 { if errno == EINTR { continue }; return }
            left -= n; off += n
        }
    }
}

/// Writes a line to stderr.
func emitError(_ line: String) {
    var s = line
    s.append("\n")
    _ = s.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}
