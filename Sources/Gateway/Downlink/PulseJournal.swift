import Dispatch
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The pulses that are on (or may be: a write whose answer was lost), kept in a file so that a
/// pulse cut short by a crash of the gateway (kill -9, out of memory, a power cut) is switched
/// off at the next start instead of leaving a door unlocked.
///
/// One line per pulse: `<device>/<point>` (names are topic-safe, so never contain `/` or a
/// space) and where its off goes, as the pulse started: `bus=plc unit=1 coil=0 width=1
/// multiple=0` (or `holding=<address>`; ``PulseTarget``). So the off is written where the on
/// went even after a reload moved or removed the point (``PulseReaper``). A line of an earlier
/// release has the name only; it is switched off where the point is now. An entry is written
/// *before* the write that switches a pulse on and removed after the write that switches it
/// off. The file is replaced atomically: a temporary file is written and flushed to the
/// storage device (`fdatasync`), then renamed over the journal; the directory is flushed
/// afterwards. All of it runs on the journal's queue; the command awaits the file's flush, not
/// the directory's. A power cut within that last flush (milliseconds) leaves the
/// previous journal, whole: the one case not covered.
final class PulseJournal: Sendable {
    /// nil: no journal (the state directory is missing or not writable; said once at start).
    let path: String?
    private let entries: Mutex<Set<String>>
    private let logger: Logger
    /// Where the file is written and flushed.
    private let flushQueue = DispatchQueue(label: "gateway.pulse-journal")
    private let failing = Atomic<Bool>(false)

    /// Opens the journal in `directory` and returns it with the pulses an earlier run left on
    /// (every line it holds). `pulses`: true when the configuration has pulse points (without
    /// them and without lines left, a directory that is not writable is not worth a warning).
    static func open(directory: String, hasPulses: Bool, logger: Logger) -> (journal: PulseJournal, leftOn: Set<String>) {
        let path = directory + "/pulses"
        var leftOn: Set<String> = []
        if let f = fopen(path, "r") {
            var line = [CChar](repeating: 0, count: 512)
            while fgets(&line, 512, f) != nil {
                let s = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                let entry = s.trimmingSuffix { $0.isNewline }
                if !entry.isEmpty { leftOn.insert(String(entry)) }
            }
            fclose(f)
        } else if case let e = errno, e != ENOENT {
            logger.warning("pulse journal \(path) cannot be read (\(StateFile.describe(e))): pulses an earlier run left on are not known")
        }
        // Probe: the directory must take a new file, or there is no journal. Without pulse
        // points it is kept quietly (a reload may add some; nothing is written until then).
        guard hasPulses || !leftOn.isEmpty || access(directory, W_OK | X_OK) == 0 else {
            return (PulseJournal(path: nil, entries: [], logger: logger), leftOn)
        }
        guard access(directory, W_OK | X_OK) == 0 else {
            let e = errno
            logger.warning("no pulse journal: \(directory) is not a writable directory (\(StateFile.describe(e))); a pulse cut short by a crash will not be switched off at the next start (set [gateway] state_dir)")
            return (PulseJournal(path: nil, entries: leftOn, logger: logger), leftOn)
        }
        return (PulseJournal(path: path, entries: leftOn, logger: logger), leftOn)
    }

    private init(path: String?, entries: Set<String>, logger: Logger) {
        self.path = path
        self.entries = Mutex(entries)
        self.logger = logger
    }

    static func key(device: String, point: String) -> String { "\(device)/\(point)" }

    /// Records a pulse (its journal line, ``PulseTarget/line(device:point:)``) as on; returns
    /// once the file says so. True when it was not recorded before (no pulse running).
    @discardableResult
    func markOn(_ line: String) async -> Bool {
        await update { $0.insert(line).inserted }
    }

    /// Records a pulse as off (and an earlier release's line for the same point, `legacy`);
    /// returns once the file says so.
    func markOff(_ line: String, legacy: String? = nil) async {
        _ = await update { set in
            let removed = set.remove(line) != nil
            let old = legacy.map { set.remove($0) != nil } ?? false
            return removed || old
        }
    }

    var current: Set<String> { entries.withLock { $0 } }

    /// Changes the set and, when it changed, rewrites the file, on the journal's queue: the
    /// `fdatasync` (milliseconds on an SD card) blocks that queue, never the caller's thread (a
    /// command runs on the MQTT client's loop). One queue: files are written in the order of the
    /// changes.
    private func update(_ change: @escaping @Sendable (inout Set<String>) -> Bool) async -> Bool {
        await flushQueue.run {
            self.entries.withLock { set in
                let changed = change(&set)
                if changed, let path = self.path { self.write(set, to: path) }
                return changed
            }
        }
    }

    private func write(_ set: Set<String>, to path: String) {
        // Replaced whole and flushed before the rename: a power cut leaves the old journal or
        // the new one, never a renamed file without its content.
        let err = StateFile.write(Array(set.sorted().map { $0 + "\n" }.joined().utf8), to: path)
        if err != 0 {
            // Said once per episode; the command goes ahead (refusing unlocks because the SD card
            // is full would be worse), only crash recovery is lost.
            if !failing.exchange(true, ordering: .relaxed) {
                logger.error("pulse journal \(path) cannot be written (\(StateFile.describe(err))): a pulse cut short by a crash will not be switched off at the next start")
            }
            return
        }
        if failing.exchange(false, ordering: .relaxed) { logger.notice("pulse journal \(path) writable again") }
        // The rename reaches the storage with the directory's flush, in the background (until
        // then a power cut leaves the previous journal, whole).
        flushQueue.async { StateFile.syncDirectory(of: path) }
    }
}

extension StringProtocol {
    fileprivate func trimmingSuffix(while drop: (Character) -> Bool) -> SubSequence {
        var end = endIndex
        while end > startIndex, drop(self[index(before: end)]) { end = index(before: end) }
        return self[startIndex..<end]
    }
}
