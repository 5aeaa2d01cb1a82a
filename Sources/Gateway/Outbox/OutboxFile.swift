import CSQLite

#if canImport(Glibc)
import Glibc
#endif

/// One message kept in the outbox.
struct OutboxRecord: Sendable, Equatable {
    var seq: Int64 = 0
    var topic: String
    var payload: [UInt8]
    var retain: Bool
    /// A retained value: when space runs short, an older value of the same topic may go (the
    /// newest one of every topic stays longest). Events and frames are never compacted.
    var compactable: Bool
    /// When it was sampled (unix ms).
    var ts: Int64
}

struct OutboxError: Error, CustomStringConvertible {
    enum Kind: Sendable {
        /// No space left (`SQLITE_FULL`: the disk, or the file system's quota).
        case full
        /// Not a usable database: SQLite says it is corrupt, or its integrity check failed. The
        /// only case in which the file is moved aside.
        case corrupt
        /// Anything else: I/O errors, permissions, a missing directory. Tried again later.
        case other
    }
    var kind: Kind = .other
    let description: String

    init(_ kind: Kind = .other, description: String) {
        self.kind = kind
        self.description = description
    }

    init(description: String) { self.init(.other, description: description) }
}

/// The outbox on disk: one SQLite database (`<state_dir>/outbox`) in WAL mode with
/// `synchronous = FULL`: every commit syncs the WAL before it returns, so a commit survives a
/// power cut, not only a crash of the process (with `NORMAL` the WAL is synced only at
/// checkpoints). A torn last write is a WAL frame whose checksum fails, which SQLite leaves out
/// when it opens the file: the transactions before it are read as they were. The WAL is bounded
/// (`journal_size_limit`). A file that fails its integrity check is moved aside by the caller.
///
/// Not thread-safe: it is used from the outbox's one queue only (``Outbox``).
final class OutboxFile {
    private var db: OpaquePointer?
    let path: String

    /// Opens (or creates) the file. `pageCacheKiB` bounds SQLite's page cache.
    init(path: String, pageCacheKiB: Int = 256) throws(OutboxError) {
        self.path = path
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK, let handle else {
            let why = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(handle)
            throw OutboxError(Self.kind(rc), description: "cannot open \(path): \(why)")
        }
        db = handle
        do throws(OutboxError) {
            try exec("PRAGMA journal_mode = WAL")
            try exec("PRAGMA synchronous = FULL")
            try exec("PRAGMA cache_size = -\(pageCacheKiB)")
            // A checkpoint every 256 pages (1 MiB), and the WAL cut back to 1 MiB after one.
            try exec("PRAGMA wal_autocheckpoint = 256")
            try exec("PRAGMA journal_size_limit = 1048576")
            try exec("""
                CREATE TABLE IF NOT EXISTS outbox (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    topic TEXT NOT NULL,
                    payload BLOB NOT NULL,
                    retain INTEGER NOT NULL,
                    compactable INTEGER NOT NULL,
                    ts INTEGER NOT NULL)
                """)
            guard try scalarText("PRAGMA quick_check") == "ok" else { throw OutboxError(.corrupt, description: "\(path) failed its integrity check") }
        } catch {
            if error.kind == .corrupt {
                // Closing the last connection deletes the WAL: it is kept, to go aside with the file.
                var keep: Int32 = 1
                sqlite3_file_control(db, "main", SQLITE_FCNTL_PERSIST_WAL, &keep)
            }
            sqlite3_close(db)
            db = nil
            throw error
        }
    }

    deinit { sqlite3_close(db) }

    func close() {
        sqlite3_close(db)
        db = nil
    }

    // MARK: records

    /// Appends `records` in one transaction, after `ahead`, which go before every record already
    /// kept (messages the client handed back: older than every kept one of their topics).
    func append(_ records: [OutboxRecord], ahead: [OutboxRecord] = []) throws(OutboxError) {
        guard !records.isEmpty || !ahead.isEmpty else { return }
        try exec("BEGIN IMMEDIATE")
        do throws(OutboxError) {
            // Sequence numbers below the smallest kept (negative ones are fine for SQLite).
            var first = ahead.isEmpty ? 0 : Int64(try scalarInt("SELECT COALESCE(MIN(seq), 1) FROM outbox")) - Int64(ahead.count)
            let stmt = try prepare("INSERT INTO outbox (seq, topic, payload, retain, compactable, ts) VALUES (?, ?, ?, ?, ?, ?)")
            defer { sqlite3_finalize(stmt) }
            func insert(_ r: OutboxRecord, seq: Int64?) throws(OutboxError) {
                sqlite3_reset(stmt)
                if let seq { sqlite3_bind_int64(stmt, 1, seq) } else { sqlite3_bind_null(stmt, 1) }
                sqlite3_bind_text(stmt, 2, r.topic, -1, csqlite_transient())
                _ = r.payload.withUnsafeBytes { sqlite3_bind_blob(stmt, 3, $0.baseAddress, Int32($0.count), csqlite_transient()) }
                sqlite3_bind_int(stmt, 4, r.retain ? 1 : 0)
                sqlite3_bind_int(stmt, 5, r.compactable ? 1 : 0)
                sqlite3_bind_int64(stmt, 6, r.ts)
                guard sqlite3_step(stmt) == SQLITE_DONE else { throw failure("insert") }
            }
            for r in ahead {
                try insert(r, seq: first)
                first += 1
            }
            for r in records { try insert(r, seq: nil) }
            try exec("COMMIT")
        } catch {
            try? exec("ROLLBACK")
            throw error
        }
    }

    /// Up to `limit` records after `seq`, oldest first.
    func read(after seq: Int64, limit: Int) throws(OutboxError) -> [OutboxRecord] {
        #if DEBUG
        if DebugHooks.outboxReadFailures.load(ordering: .relaxed) > 0 {
            DebugHooks.outboxReadFailures.subtract(1, ordering: .relaxed)
            throw OutboxError(description: "\(path): read: injected I/O error")
        }
        #endif
        let stmt = try prepare("SELECT seq, topic, payload, retain, compactable, ts FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")
        defer { sqlite3_finalize(stmt) }
        sqlite3_bind_int64(stmt, 1, seq)
        sqlite3_bind_int(stmt, 2, Int32(limit))
        var out: [OutboxRecord] = []
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw failure("read") }
            let topic = String(cString: sqlite3_column_text(stmt, 1))
            let n = Int(sqlite3_column_bytes(stmt, 2))
            let payload = n == 0 ? [] : Array(UnsafeRawBufferPointer(start: sqlite3_column_blob(stmt, 2), count: n))
            out.append(OutboxRecord(seq: sqlite3_column_int64(stmt, 0), topic: topic, payload: payload, retain: sqlite3_column_int(stmt, 3) != 0,
                                    compactable: sqlite3_column_int(stmt, 4) != 0, ts: sqlite3_column_int64(stmt, 5)))
        }
        return out
    }

    /// Removes the records with these sequence numbers (delivered).
    func delete(_ seqs: [Int64]) throws(OutboxError) {
        guard !seqs.isEmpty else { return }
        try exec("BEGIN IMMEDIATE")
        do throws(OutboxError) {
            let stmt = try prepare("DELETE FROM outbox WHERE seq = ?")
            defer { sqlite3_finalize(stmt) }
            for s in seqs {
                sqlite3_reset(stmt)
                sqlite3_bind_int64(stmt, 1, s)
                guard sqlite3_step(stmt) == SQLITE_DONE else { throw failure("delete") }
            }
            try exec("COMMIT")
        } catch {
            try? exec("ROLLBACK")
            throw error
        }
    }

    /// Records per topic (at start: which topics have a backlog).
    func countsByTopic() throws(OutboxError) -> [String: Int] {
        let stmt = try prepare("SELECT topic, COUNT(*) FROM outbox GROUP BY topic")
        defer { sqlite3_finalize(stmt) }
        var out: [String: Int] = [:]
        while sqlite3_step(stmt) == SQLITE_ROW {
            out[String(cString: sqlite3_column_text(stmt, 0))] = Int(sqlite3_column_int64(stmt, 1))
        }
        return out
    }

    /// Records, bytes of topics and payloads, and the oldest `ts`.
    func stats() throws(OutboxError) -> (count: Int, bytes: Int, oldestTs: Int64?) {
        let stmt = try prepare("SELECT COUNT(*), COALESCE(SUM(length(topic) + length(payload)), 0), MIN(ts) FROM outbox")
        defer { sqlite3_finalize(stmt) }
        guard sqlite3_step(stmt) == SQLITE_ROW else { throw failure("stats") }
        let oldest = sqlite3_column_type(stmt, 2) == SQLITE_NULL ? nil : sqlite3_column_int64(stmt, 2)
        return (Int(sqlite3_column_int64(stmt, 0)), Int(sqlite3_column_int64(stmt, 1)), oldest)
    }

    /// After a write failed for want of space: older values of topics that have a newer one go
    /// (the first step of the size bound; what is left to deliver is never dropped for a full
    /// disk here), and the WAL is checkpointed, so that the next write can reuse pages instead of
    /// growing the files. Returns what went.
    func makeRoom() throws(OutboxError) -> [String: Int] {
        let gone = try deleteCounting(Self.superseded)
        try exec("PRAGMA wal_checkpoint(RESTART)")
        return gone
    }

    /// Bytes the database uses (its pages in use; the file does not shrink).
    func usedBytes() throws(OutboxError) -> Int {
        let pages = try scalarInt("PRAGMA page_count") - (try scalarInt("PRAGMA freelist_count"))
        return pages * (try scalarInt("PRAGMA page_size"))
    }

    /// Makes room: first older values of topics that have a newer one, then the oldest records,
    /// until at most `maxBytes` are used. Returns what went, per topic.
    func trim(maxBytes: Int) throws(OutboxError) -> [String: Int] {
        var gone: [String: Int] = [:]
        guard try usedBytes() > maxBytes else { return gone }
        // Superseded values (the newest of each topic stays).
        gone.merge(try deleteCounting(Self.superseded), uniquingKeysWith: +)
        var rounds = 0
        while try usedBytes() > maxBytes, rounds < 1000 {
            rounds += 1
            let (count, _, _) = try stats()
            guard count > 0 else { break }
            // The oldest tenth (at least 16) at a time.
            gone.merge(try deleteCounting("seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT \(max(16, count / 10)))"), uniquingKeysWith: +)
        }
        return gone
    }

    /// Older values of topics that have a newer one.
    private static let superseded = "compactable = 1 AND seq NOT IN (SELECT MAX(seq) FROM outbox WHERE compactable = 1 GROUP BY topic)"

    private func deleteCounting(_ condition: String) throws(OutboxError) -> [String: Int] {
        try exec("BEGIN IMMEDIATE")
        do throws(OutboxError) {
            let stmt = try prepare("SELECT topic, COUNT(*) FROM outbox WHERE \(condition) GROUP BY topic")
            var gone: [String: Int] = [:]
            while sqlite3_step(stmt) == SQLITE_ROW {
                gone[String(cString: sqlite3_column_text(stmt, 0))] = Int(sqlite3_column_int64(stmt, 1))
            }
            sqlite3_finalize(stmt)
            try exec("DELETE FROM outbox WHERE \(condition)")
            try exec("COMMIT")
            return gone
        } catch {
            try? exec("ROLLBACK")
            throw error
        }
    }

    // MARK: SQLite

    private func exec(_ sql: String) throws(OutboxError) {
        var err: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(db, sql, nil, nil, &err) == SQLITE_OK else {
            let why = err.map { String(cString: $0) } ?? "error"
            sqlite3_free(err)
            throw OutboxError(Self.kind(sqlite3_errcode(db)), description: "\(path): \(why)")
        }
    }

    private func prepare(_ sql: String) throws(OutboxError) -> OpaquePointer? {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK else { throw failure("prepare") }
        return stmt
    }

    private func scalarInt(_ sql: String) throws(OutboxError) -> Int {
        let stmt = try prepare(sql)
        defer { sqlite3_finalize(stmt) }
        guard sqlite3_step(stmt) == SQLITE_ROW else { throw failure(sql) }
        return Int(sqlite3_column_int64(stmt, 0))
    }

    private func scalarText(_ sql: String) throws(OutboxError) -> String {
        let stmt = try prepare(sql)
        defer { sqlite3_finalize(stmt) }
        guard sqlite3_step(stmt) == SQLITE_ROW, let text = sqlite3_column_text(stmt, 0) else { throw failure(sql) }
        return String(cString: text)
    }

    private func failure(_ what: String) -> OutboxError {
        OutboxError(db.map { Self.kind(sqlite3_errcode($0)) } ?? .other,
                    description: "\(path): \(what): \(db.map { String(cString: sqlite3_errmsg($0)) } ?? "closed")")
    }

    private static func kind(_ code: Int32) -> OutboxError.Kind {
        switch code & 0xff {
        case SQLITE_FULL: .full
        case SQLITE_CORRUPT, SQLITE_NOTADB: .corrupt
        default: .other
        }
    }
}
