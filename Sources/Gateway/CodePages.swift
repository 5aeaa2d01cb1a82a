import Logging
import Synchronization
import ServiceLifecycle
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
/// the code once start-up is over leaves the steady state to map back only what it runs (plus
/// the kernel's rounding around it, which the split below keeps to a piece). Measured with
/// `Benchmarks/uplink_bench.py`: README "Footprint".
///
/// Only file content is ever dropped: a private file mapping is unmapped (`MADV_DONTNEED`) only
/// if it is not writable and holds no anonymous (copied-on-write) page, so each of its pages
/// equals the file and is read again when next touched (a minor fault, or a read from storage if
/// evicted). Writable mappings (`.data`, the relocated `.data.rel.ro`) are left alone. These
/// mappings get `MADV_RANDOM`, so touching a page again does not read its neighbours; yet on the
/// 6.18 kernel we measure on, a fault in code reads ahead all the same (the binary's page cache
/// grew from 8 to 20 MiB within seconds of its code being unmapped, `MADV_RANDOM` set; the disk's
/// `read_ahead_kb` is 8 MiB), and fault-around then maps 64 KiB around every later fault. So
/// every mapping of the executable and libraries is first split into pieces of
/// ``faultWindowPages``: neither reaches past a mapping's edge. The files stay in the page cache
/// (see ``trim()``). Finally glibc's free heap pages (start-up's parsing and planning) go back
/// (`malloc_trim`).
public enum CodePages {
    /// How long after start the gateway gives its start-up pages back.
    public static let startupGrace: Duration = .seconds(5)

    public struct Outcome: Sendable, CustomStringConvertible {
        /// Mappings of the executable and shared libraries found, and how many of them were unmapped.
        public var mappings = 0, dropped = 0
        /// Resident pages of the executable's `.rodata` unmapped (KiB); see ``dropReadOnlyData(exe:)``.
        public var readOnlyDataKiB = 0
        /// Pieces the mappings were split into (``faultWindowPages``).
        public var pieces = 0
        /// VmRSS before and after, KiB.
        public var residentBefore = 0, residentAfter = 0
        public var description: String {
            "\(mappings) mappings of the executable and libraries, \(dropped) dropped, \(pieces) pieces, \(readOnlyDataKiB) KiB of .rodata; resident \(residentBefore) -> \(residentAfter) KiB"
        }
    }

    private struct Mapping { var start: UInt; var end: UInt; var droppable: Bool; var anonymousKiB: Int? = nil }

    /// Drops what it can; nil where there is no /proc (not Linux).
    public static func trim() -> Outcome? {
        #if canImport(Glibc)
        guard let exe = PageMap.executable(), let smaps = ConfigLoader.readFile("/proc/self/smaps").map({ String(decoding: $0, as: UTF8.self) }) else { return nil }
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
            // Split before the drop: a fault right after it maps no more than a piece.
            out.pieces += split(m)
            if m.droppable && m.anonymousKiB == 0 {   // only file content: nothing to lose
                if madvise(p, length, MADV_DONTNEED) == 0 { out.dropped += 1 }
            }
        }
        out.readOnlyDataKiB = dropReadOnlyData(exe: exe)
        // The binary stays in the page cache: a fault maps no more than its piece anyway, and a
        // command's first touch of its code is then a minor fault, not a read from storage
        // (evicted, 221-353 reads in 300 commands after the give-back; kept, none, for 0.2-0.3 MiB).
        // The heap's free pages (start-up's parsing, planning, first connect) back to the kernel.
        _ = malloc_trim(0)
        out.residentAfter = residentKiB() ?? 0
        return out
        #else
        return nil
        #endif
    }

    /// The pages a fault maps at most, once a mapping is split. Measured with `uplink_bench.py`
    /// (README "Footprint"): at 100 devices the binary's resident code went from 6.2-7.1 MiB
    /// unsplit to 2.6-2.9 MiB in pieces of 4 pages and 2.1-2.2 MiB in pieces of 2; splitting the
    /// read-only data and writable mappings too took another 0.4-0.9 MiB off. Each piece is a
    /// mapping the kernel keeps, outside the resident set (about 250 bytes; README "Footprint").
    static let faultWindowPages: UInt = 2

    /// Splits a mapping into pieces of ``faultWindowPages``: every other piece is marked
    /// `MADV_NOHUGEPAGE` (a piece of two pages never holds a huge page anyway), so neighbours
    /// differ and the kernel keeps them apart. Returns the number of pieces (1 where the kernel
    /// has no transparent huge pages and refuses the flag).
    private static func split(_ m: Mapping) -> Int {
        #if canImport(Glibc)
        let piece = faultWindowPages * PageMap.pageSize
        var at = m.start + piece, pieces = 1
        while at < m.end, madvise(UnsafeMutableRawPointer(bitPattern: at), Int(min(piece, m.end - at)), MADV_NOHUGEPAGE) == 0 {
            pieces += at + piece < m.end ? 2 : 1
            at += 2 * piece
        }
        return pieces
        #else
        return 0
        #endif
    }

    /// The executable's `.rodata` lands in a writable segment (some inputs flag their `.rodata`
    /// writable, and the linker ORs the flags), so the mapping-level rule above skips it; yet it is
    /// constant data that nothing writes (the loader relocates `.data.rel.ro`, not `.rodata`), and
    /// 1.25 MiB of it was resident after start. Its resident pages that are still the file's
    /// (`/proc/self/pagemap`: present, file page) are unmapped; if any of its pages has been
    /// written (copied on write), nothing is dropped. Returns the KiB unmapped.
    private static func dropReadOnlyData(exe: String) -> Int {
        #if canImport(Glibc)
        guard let pages = readOnlyDataPages(exe: exe), pages.count < 1 << 20, let entries = PageMap.entries([pages])?.first else { return 0 }
        // A page present but not the file's has been written: then this is not constant data.
        guard !entries.contains(where: { $0 & PageMap.present != 0 && $0 & PageMap.filePage == 0 }) else { return 0 }
        return PageMap.unmap(from: pages.first, count: entries.count) { entries[$0] & PageMap.present != 0 } * Int(PageMap.pageSize / 1024)
        #else
        return 0
        #endif
    }

    /// The whole pages of `.rodata` (first page number, count); nil when there is none.
    static func readOnlyDataPages(exe: String) -> (first: UInt, count: Int)? {
        #if canImport(Glibc)
        guard let (start, end) = readOnlyDataRange(exe: exe) else { return nil }
        let first = (start + PageMap.pageSize - 1) / PageMap.pageSize, last = end / PageMap.pageSize
        return last > first ? (first, Int(last - first)) : nil
        #else
        return nil
        #endif
    }

    /// Where `.rodata` is mapped: its address from the executable's section headers (64-bit ELF)
    /// plus the load bias (the program headers' run-time address minus their `PT_PHDR` address).
    private static func readOnlyDataRange(exe: String) -> (UInt, UInt)? {
        #if canImport(Glibc)
        let fd = open(exe, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        func read(_ count: Int, at offset: UInt64) -> [UInt8]? {
            guard count > 0, count <= 1 << 22 else { return nil }
            var bytes = [UInt8](repeating: 0, count: count)
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            return n == count ? bytes : nil
        }
        func u16(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(b[o]) | UInt64(b[o + 1]) << 8 }
        func u32(_ b: [UInt8], _ o: Int) -> UInt64 { u16(b, o) | u16(b, o + 2) << 16 }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 { u32(b, o) | u32(b, o + 4) << 32 }
        // ELF64, little-endian (x86-64, arm64).
        guard let h = read(64, at: 0), h[0] == 0x7F, h[1] == 0x45, h[2] == 0x4C, h[3] == 0x46, h[4] == 2, h[5] == 1 else { return nil }
        let shoff = u64(h, 0x28), shentsize = Int(u16(h, 0x3A)), shnum = Int(u16(h, 0x3C)), shstrndx = Int(u16(h, 0x3E))
        guard shentsize == 64, shnum > 0, shstrndx < shnum, let sh = read(shnum * 64, at: shoff) else { return nil }
        let names = shstrndx * 64
        guard let strtab = read(Int(u64(sh, names + 32)), at: u64(sh, names + 24)) else { return nil }
        var section: (addr: UInt64, size: UInt64)?
        for i in 0..<shnum {
            let o = i * 64
            let name = Int(u32(sh, o))
            guard name < strtab.count else { continue }
            let tail = strtab[name...]
            if tail.starts(with: Array(".rodata".utf8) + [0]) { section = (u64(sh, o + 16), u64(sh, o + 32)); break }
        }
        guard let section, section.addr != 0, section.size > 0 else { return nil }
        // Load bias, from the program headers as mapped.
        let phdr = UInt(getauxval(UInt(AT_PHDR))), phnum = Int(getauxval(UInt(AT_PHNUM)))
        guard phdr != 0, let table = UnsafeRawPointer(bitPattern: phdr) else { return nil }
        for i in 0..<phnum {
            let entry = table + i * 56
            if entry.loadUnaligned(as: UInt32.self) == 6 {   // PT_PHDR
                let bias = phdr &- UInt(entry.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
                let start = bias &+ UInt(section.addr)
                return (start, start &+ UInt(section.size))
            }
        }
        return nil
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

/// Code and constant data that occasional work maps in (an HTTP request every few seconds:
/// accept, parse, render, answer, close), given back once that work has been over for
/// ``settle``, so that it does not stay resident between two scrapes. The pages of the
/// executable's code and constant data (never its writable data) that are present then and
/// were not at the baseline are unmapped; the baseline is what is present
/// ``rebaseline`` after a give-back (the rest of the gateway has mapped back what it runs by
/// then), and nothing before the first one (which so takes every file page, as at start-up). Pages
/// go with `MADV_DONTNEED` (read from `/proc/self/pagemap`, one 8-byte entry per page); a page that was
/// written (not the file's any more) is never touched. They stay in the page cache, so the next
/// request maps them back with minor faults. Pages the rest of the gateway mapped in meanwhile go
/// too, and come back the same way. Nil where there is no /proc.
public final class OccasionalWorkPages: Sendable {
    /// Quiet time after the last piece of work before its pages go (the connection's close and
    /// the task's end run after its answer).
    public static let settle: Duration = .milliseconds(250)
    /// When the pages present count as the steady state again after a give-back.
    public static let rebaseline: Duration = .milliseconds(2_500)

    /// Page runs (first page number, count) it may unmap pages in.
    let ranges: [(first: UInt, count: Int)]
    /// Work in progress, a count of begins (a give-back runs only if none came since it was
    /// scheduled), and the pages present when the current burst began.
    private let state = Mutex<(active: Int, generation: Int, baseline: [[UInt64]]?)>((0, 0, nil))

    public init?() {
        #if canImport(Glibc)
        guard let exe = PageMap.executable(), let mappings = PageMap.mappings(of: exe) else { return nil }
        // The read-only private mappings of the executable, and its `.rodata` (whole pages), which
        // sits in a writable segment. Not the rest of that segment: a page of `.data` that is still
        // the file's when pagemap is read may be written by another thread before the unmap, and
        // the unmap would throw that write away. Nothing writes `.rodata` or a read-only mapping.
        var ranges = mappings.filter { $0.isPrivate && !$0.writable }.map { m in
            (m.start / PageMap.pageSize, Int((m.end - m.start) / PageMap.pageSize))
        }
        if let rodata = CodePages.readOnlyDataPages(exe: exe) { ranges.append(rodata) }
        // Adjacent ones (the pieces of one mapping, see ``CodePages/faultWindowPages``) are one range.
        ranges = ranges.sorted { $0.0 < $1.0 }.reduce(into: []) { merged, r in
            if let last = merged.last, last.0 + UInt(last.1) == r.0 { merged[merged.count - 1].1 += r.1 } else { merged.append(r) }
        }
        guard !ranges.isEmpty, ranges.reduce(0, { $0 + $1.1 }) < 1 << 20 else { return nil }
        self.ranges = ranges
        #else
        return nil
        #endif
    }

    /// Work begins (calls nest).
    public func begin() {
        state.withLock { s in
            s.active += 1
            s.generation += 1
        }
    }

    /// Work ends; ``settle`` after the last one, what was mapped in since the last give-back goes.
    public func end() {
        let generation = state.withLock { s -> Int? in
            s.active = max(0, s.active - 1)
            return s.active == 0 ? s.generation : nil
        }
        guard let generation else { return }
        // A timer, not awaited: the HTTP listener calls this synchronously after a request; a
        // request that begins meanwhile makes it a no-op through the generation.
        Task {
            try? await Task.sleep(for: Self.settle)
            self.giveBack(ifStill: generation)
        }
    }

    private func giveBack(ifStill generation: Int) {
        state.withLock { s in
            guard s.active == 0, s.generation == generation, let after = presentPages() else { return }
            // No baseline yet (the first time): every file page of the executable goes.
            let before = s.baseline ?? after.map { [UInt64](repeating: 0, count: $0.count) }
            guard before.count == after.count else { return }
            #if canImport(Glibc)
            for (r, range) in ranges.enumerated() {
                let was = before[r], now = after[r]
                PageMap.unmap(from: range.first, count: now.count) { k in
                    now[k] & PageMap.present != 0 && now[k] & PageMap.filePage != 0 && was[k] & PageMap.present == 0
                }
            }
            #endif
        }
        // The new baseline once the rest of the gateway has mapped back what it runs (its polls):
        // pages present then are its steady state and are not taken from it again.
        Task {
            try? await Task.sleep(for: Self.rebaseline)
            state.withLock { s in
                if s.active == 0, s.generation == generation { s.baseline = presentPages() }
            }
        }
    }

    /// The pagemap entries of every range.
    private func presentPages() -> [[UInt64]]? {
        #if canImport(Glibc)
        PageMap.entries(ranges)
        #else
        nil
        #endif
    }
}

#if canImport(Glibc)
/// What both give-backs read and do: the executable's path, `/proc/self/pagemap` (one 8-byte
/// entry per page), and `MADV_DONTNEED` on runs of pages.
enum PageMap {
    static let present: UInt64 = 1 << 63, filePage: UInt64 = 1 << 61
    static let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))

    /// The mappings of `file` in `/proc/self/maps`, in address order; nil if it cannot be read.
    static func mappings(of file: String) -> [(start: UInt, end: UInt, writable: Bool, isPrivate: Bool)]? {
        guard let maps = ConfigLoader.readFile("/proc/self/maps").map({ String(decoding: $0, as: UTF8.self) }) else { return nil }
        return maps.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 6, f[5...].joined(separator: " ") == file, let dash = f[0].firstIndex(of: "-"),
                  let a = UInt(f[0][..<dash], radix: 16), let b = UInt(f[0][f[0].index(after: dash)...], radix: 16), b > a else { return nil }
            return (a, b, f[1].contains("w"), f[1].hasSuffix("p"))
        }
    }

    static func executable() -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
    }

    /// The entries of each range of pages (first page number, count); nil if one cannot be read.
    static func entries(_ ranges: [(first: UInt, count: Int)]) -> [[UInt64]]? {
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [[UInt64]] = []
        for r in ranges {
            var entries = [UInt64](repeating: 0, count: r.count)
            let want = r.count * 8
            guard entries.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, want, off_t(r.first * 8)) }) == want else { return nil }
            out.append(entries)
        }
        return out
    }

    /// Unmaps the runs of the `count` pages from page number `first` on where `drop` holds (its
    /// argument counts from `first`). Returns the number of pages unmapped.
    @discardableResult
    static func unmap(from first: UInt, count: Int, where drop: (Int) -> Bool) -> Int {
        var unmapped = 0, i = 0
        while i < count {
            guard drop(i) else { i += 1; continue }
            var j = i
            while j < count, drop(j) { j += 1 }
            if madvise(UnsafeMutableRawPointer(bitPattern: (first + UInt(i)) * pageSize), Int(UInt(j - i) * pageSize), MADV_DONTNEED) == 0 {
                unmapped += j - i
            }
            i = j
        }
        return unmapped
    }
}
#endif

/// Gives the start-up pages back once start-up is over (first connect, first polls: well within
/// 5 s); the steady state maps back what it runs. A service of its own that the CLI adds to the
/// service group when `[gateway] drop_startup_pages` is on (the default): process tuning is not
/// the runtime's business.
public struct StartupPagesService: Service {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public func run() async throws {
        do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: CodePages.startupGrace) } } catch { return }
        guard let outcome = CodePages.trim() else { return }
        logger.info("start-up pages given back: resident \(outcome.residentBefore) -> \(outcome.residentAfter) KiB",
                    metadata: ["mappings": "\(outcome.mappings)", "dropped": "\(outcome.dropped)",
                              "rodata_kib": "\(outcome.readOnlyDataKiB)", "pieces": "\(outcome.pieces)"])
    }
}
