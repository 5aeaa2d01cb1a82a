import Dispatch
import GatewayConfig
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The ids of signed commands already seen, kept in `state_dir/command-ids` so that a signed
/// command recorded off the broker is refused after a restart too (a crash, the watchdog,
/// `systemctl restart`, a power cut), not only while the gateway keeps running.
///
/// One line per id, `<ts> <id>` (an id holds no control character, so no newline), and a line
/// `floor <ts>`: no command with a `ts` at or before it is accepted (see ``SignedCommands``).
/// An id is appended and the file flushed to the storage device (`fdatasync`) on the file's
/// queue; the command awaits that flush before its write reaches the device, as the pulse
/// journal's entry. When the file holds twice as many lines as ids still remembered, it is
/// rewritten with those only (a temporary file, flushed, renamed over it), so it stays bounded
/// by twice ``SignedCommands/capacity`` lines.
///
/// When the file cannot be written (no `state_dir`, a full or failing disk) commands go ahead,
/// as with the pulse journal, and the error is logged once per episode: then a restart forgets
/// the ids (README "Signed commands").
final class CommandIDFile: Sendable {
    let path: String
    private let queue = DispatchQueue(label: "gateway.command-ids")
    private let logger: Logger
    /// Whether the last write failed (logged once per episode).
    private let failing = Atomic<Bool>(false)
    /// Lines in the file now (ids and floor lines), for the rewrite rule.
    private let lines = Atomic<Int>(0)

    /// What an earlier run left: the ids with their `ts`, and the floor.
    struct Contents: Sendable {
        var ids: [String: Int64] = [:]
        var floor: Int64 = .min
    }

    /// Opens the file in `directory` and reads what an earlier run left; nil (said once) when
    /// the directory cannot take it.
    static func open(directory: String, logger: Logger) -> (file: CommandIDFile?, contents: Contents) {
        let path = directory + "/command-ids"
        var contents = Contents()
        var count = 0
        if let bytes = ConfigLoader.readFile(path) {
            for line in bytes.split(separator: UInt8(ascii: "\n")) {
                guard let space = line.firstIndex(of: UInt8(ascii: " ")) else { continue }
                let head = String(decoding: line[line.startIndex..<space], as: UTF8.self)
                let tail = String(decoding: line[line.index(after: space)...], as: UTF8.self)
                if head == "floor" {
                    if let f = Int64(tail) { contents.floor = max(contents.floor, f) }
                } else if let ts = Int64(head), !tail.isEmpty {
                    contents.ids[tail] = ts
                }
                count += 1
            }
        } else if case let e = errno, e != ENOENT {
            logger.error("signed commands: \(path) cannot be read (\(StateFile.describe(e))): ids seen before this start are not known")
        }
        guard access(directory, W_OK | X_OK) == 0 else {
            let e = errno
            logger.error("signed commands: \(directory) is not a writable directory (\(StateFile.describe(e))); the ids of signed commands are not kept across a restart, so a command recorded off the broker could be replayed within command_max_age_ms of a restart (set [gateway] state_dir)")
            return (nil, contents)
        }
        let file = CommandIDFile(path: path, logger: logger)
        file.lines.store(count, ordering: .relaxed)
        return (file, contents)
    }

    private init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
    }

    /// Appends a line (`<ts> <id>` or `floor <ts>`), flushed to storage, on the file's queue
    /// (in order with every other write).
    func append(_ line: String) {
        lines.add(1, ordering: .relaxed)
        let bytes = Array((line + "\n").utf8)
        queue.async { self.write(bytes, append: true) }
    }

    /// True when the file has so many lines that it should be rewritten with `live` ids only.
    func wantsRewrite(live: Int) -> Bool {
        lines.load(ordering: .relaxed) > max(2 * live, 1000)
    }

    /// Replaces the file with `contents` (after the appends already queued, which it includes).
    func rewrite(_ contents: Contents) {
        var text = contents.floor == .min ? "" : "floor \(contents.floor)\n"
        for (id, ts) in contents.ids { text += "\(ts) \(id)\n" }
        let count = contents.ids.count + (contents.floor == .min ? 0 : 1)
        lines.store(count, ordering: .relaxed)   // not rewritten again until it has grown anew
        let bytes = Array(text.utf8)
        queue.async { self.write(bytes, append: false) }
    }

    /// Returns once everything handed over so far is on storage (or failed, which is logged).
    func flushed() async {
        await queue.run {}
    }

    /// Appends to the file, or replaces it (then the directory is flushed too); on the queue only.
    private func write(_ bytes: [UInt8], append: Bool) {
        let err = StateFile.write(bytes, to: path, append: append)
        if err == 0 && !append { StateFile.syncDirectory(of: path) }
        if err != 0 {
            if !failing.exchange(true, ordering: .relaxed) {
                logger.error("signed commands: \(path) cannot be written (\(StateFile.describe(err))): the ids of signed commands are not kept across a restart until it can")
            }
        } else if failing.exchange(false, ordering: .relaxed) {
            logger.notice("signed commands: \(path) writable again")
        }
    }
}
