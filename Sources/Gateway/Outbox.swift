import Dispatch
import Logging
import MQTT
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Nothing lost while the broker is away: data messages (values, serial frames, events) that
/// cannot go to the broker now are kept in `<state_dir>/outbox` (``OutboxFile``, SQLite) and
/// delivered, in order per topic, once it is back, also after a restart or a power cut.
///
/// - While the broker is connected and keeping up (fewer than ``Settings/keepUpQueue`` messages
///   waiting in the client), a message goes straight to the client: nothing touches the disk.
/// - Otherwise it waits in memory and is written with the others every `outbox_sync_ms` (one
///   transaction): a crash loses at most that interval. A topic with messages in the outbox
///   sends its new ones there too, behind them, so per topic the order is the order produced.
/// - When the broker is back (and at start, for a file an earlier run left) the outbox drains:
///   batches of ``Settings/batch`` in order, each deleted once the broker acknowledged all of it,
///   at most ``Settings/ratePerSecond`` messages a second, so live data on other topics keeps
///   flowing. Empty again, the file is closed and removed.
/// - Bounded by `outbox_max_mb`: when full, older values of topics that have a newer one go
///   first, then the oldest messages; counted, and logged once per outage.
/// - Every message carries when it was sampled: JSON payloads their `ts`, and with MQTT 5 a user
///   property `ts` (unix ms) on every data message.
///
/// SQLite blocks: it runs on one dispatch queue of its own, never on the two threads of Swift's
/// cooperative pool that the pollers and the command path share.
final class Outbox: Sendable {
    struct Settings: Sendable {
        var path: String
        var maxBytes: Int
        var sync: Duration
        var keepUpQueue = 1000
        var batch = 200
        /// Mosquitto keeps 1000 messages per slow subscriber by default and drops the rest: a
        /// backlog must not arrive faster than a modest subscriber reads.
        var ratePerSecond = 500
    }

    /// The open file, touched only on `queue` (one block at a time, so never from two threads
    /// at once): that confinement is the whole of its safety, hence `@unchecked`.
    private final class FileBox: @unchecked Sendable {
        var file: OutboxFile?
    }

    private struct State: Sendable {
        var buffer: [OutboxRecord] = []
        /// Per topic, messages in the buffer or the file not yet acknowledged by the broker.
        var pending: [String: Int] = [:]
        var flushScheduled = false
        var draining = false
        var connected = false
        /// The file holds messages (or is open): what waits in memory goes behind them.
        var onDisk = false
        /// No file could be opened (state_dir not writable): the client's memory queue only.
        var unusable = false
        var droppedTotal = 0
        var droppedThisOutage = 0
        /// What the file holds: read from it at start and after a trim, kept up to date by
        /// arithmetic otherwise (a full scan per batch would cost a 64 MiB backlog its square).
        var stored = (count: 0, bytes: 0, oldestTs: Int64?.none)
    }

    /// Bytes a record counts for in ``OutboxFile/stats()``: its topic and payload.
    private static func size(_ r: OutboxRecord) -> Int { r.topic.utf8.count + r.payload.count }

    let settings: Settings
    private let client: MQTTClient
    private let logger: Logger
    private let queue = DispatchQueue(label: "gateway.outbox")
    private let box = FileBox()
    private let state = Mutex(State())
    private let telemetry: GatewayTelemetry?

    init(settings: Settings, client: MQTTClient, telemetry: GatewayTelemetry?, logger: Logger) {
        self.settings = settings
        self.client = client
        self.telemetry = telemetry
        var l = logger
        l[metadataKey: "component"] = "outbox"
        self.logger = l
    }

    /// At start: a file an earlier run left is opened, and its topics wait behind it.
    func start() async {
        guard access(settings.path, F_OK) == 0 else { return }
        let found = await onQueue { box -> Result<([String: Int], (count: Int, bytes: Int, oldestTs: Int64?)), OutboxError> in
            Result { () throws(OutboxError) in
                let file = try self.openIfNeeded(box)
                return (try file.countsByTopic(), try file.stats())
            }
        }
        switch found {
        case .success(let (counts, stats)):
            let total = stats.count
            state.withLock { s in
                s.onDisk = true
                for (t, n) in counts { s.pending[t, default: 0] += n }
                s.stored = stats
            }
            logger.notice("outbox: \(total) messages an earlier run kept (\(settings.path)); delivered first, once the broker is reached")
        case .failure(let e):
            logger.error("outbox: \(e)")
        }
    }

    // MARK: publishing

    /// A data message: to the broker now if it keeps up and the topic has nothing waiting,
    /// else into the outbox.
    func publish(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async {
        let properties = Self.properties(ts: ts)
        let behind = state.withLock { $0.pending[topic, default: 0] > 0 }
        if !behind, await client.enqueueIfKeepingUp(to: topic, payload: payload, qos: .atLeastOnce, retain: retain,
                                                    properties: properties, maximumQueued: settings.keepUpQueue) {
            return
        }
        if state.withLock({ $0.unusable }) {
            // No file (state_dir not writable): the client's memory queue, as without an outbox.
            try? await client.enqueue(to: topic, payload: payload, qos: .atLeastOnce, retain: retain, properties: properties)
            return
        }
        let schedule = state.withLock { s -> Bool in
            s.buffer.append(OutboxRecord(topic: topic, payload: payload, retain: retain, compactable: compactable, ts: ts))
            s.pending[topic, default: 0] += 1
            guard !s.flushScheduled else { return false }
            s.flushScheduled = true
            return true
        }
        if schedule {
            // One timer task per sync interval while there is something to write.
            Task {
                try? await Task.sleep(for: settings.sync)
                await self.flush()
            }
        }
    }

    static func properties(ts: Int64) -> MQTTProperties {
        var p = MQTTProperties()
        p.userProperties = [MQTTUserProperty("ts", String(ts))]
        return p
    }

    /// Writes what waits in memory (one transaction), makes room if over the bound.
    func flush() async {
        let records = state.withLock { s -> [OutboxRecord] in
            s.flushScheduled = false
            defer { s.buffer = [] }
            return s.buffer
        }
        guard !records.isEmpty else { return }
        // Connected again with nothing on disk (at start, before the first connect, or a short
        // drop): they go to the broker, in order, without touching the disk.
        if state.withLock({ $0.connected && !$0.onDisk }) {
            let messages = records.map { (topic: $0.topic, payload: $0.payload, retain: $0.retain, properties: Self.properties(ts: $0.ts)) }
            await client.enqueue(messages, qos: .atLeastOnce) { _, _ in }
            // Only now (they are in the client's queue, in order) may newer ones of these
            // topics go straight to the client.
            state.withLock { s in
                for r in records {
                    s.pending[r.topic, default: 0] -= 1
                    if s.pending[r.topic, default: 0] <= 0 { s.pending[r.topic] = nil }
                }
            }
            return
        }
        state.withLock { $0.onDisk = true }
        let maxBytes = settings.maxBytes
        let result = await onQueue { box -> Result<(gone: [String: Int], stats: (count: Int, bytes: Int, oldestTs: Int64?)?), OutboxError> in
            Result { () throws(OutboxError) in
                let file = try self.openIfNeeded(box)
                try file.append(records)
                let gone = try file.trim(maxBytes: maxBytes)
                // Counted again only when the trim removed something.
                return (gone, gone.isEmpty ? nil : try file.stats())
            }
        }
        switch result {
        case .success(let (gone, read)):
            let dropped = gone.values.reduce(0, +)
            let (firstDrop, stats) = state.withLock { s -> (Bool, (count: Int, bytes: Int, oldestTs: Int64?)) in
                for (t, n) in gone {
                    s.pending[t, default: 0] -= n
                    if s.pending[t, default: 0] <= 0 { s.pending[t] = nil }
                }
                if let read {
                    s.stored = read
                } else {
                    s.stored.count += records.count
                    s.stored.bytes += records.reduce(0) { $0 + Self.size($1) }
                    s.stored.oldestTs = s.stored.oldestTs ?? records.first?.ts
                }
                s.droppedTotal += dropped
                let first = dropped > 0 && s.droppedThisOutage == 0
                s.droppedThisOutage += dropped
                return (first, s.stored)
            }
            if firstDrop {
                logger.warning("outbox full (\(settings.maxBytes / 1024) KiB): dropping the oldest messages (superseded values first); the count follows when the broker is back")
            }
            logger.debug("outbox: \(stats.count) messages on disk, \(stats.bytes) bytes")
            report()
        case .failure(let e):
            // Not written: they go to the client's memory queue instead (bounded, as before).
            logger.error("outbox: cannot write (\(e)); \(records.count) messages go to the memory queue instead")
            state.withLock { s in
                for r in records {
                    s.pending[r.topic, default: 0] -= 1
                    if s.pending[r.topic, default: 0] <= 0 { s.pending[r.topic] = nil }
                }
            }
            for r in records {
                try? await client.enqueue(to: r.topic, payload: r.payload, qos: .atLeastOnce, retain: r.retain, properties: Self.properties(ts: r.ts))
            }
        }
        if state.withLock({ $0.connected }) { startDrain() }
    }

    // MARK: connection

    func connected() {
        let dropped = state.withLock { s -> Int in
            s.connected = true
            defer { s.droppedThisOutage = 0 }
            return s.droppedThisOutage
        }
        if dropped > 0 { logger.warning("outbox: \(dropped) messages were dropped during the outage (the outbox was full)") }
        startDrain()
    }

    func disconnected() {
        state.withLock { $0.connected = false }
    }

    /// The gateway stops: what waits in memory is written (a graceful stop loses nothing).
    func close() async {
        await flush()
        let dropped = state.withLock { $0.droppedThisOutage }
        if dropped > 0 { logger.warning("outbox: \(dropped) messages dropped since the broker went away (the outbox was full)") }
        await onQueue { box in
            box.file?.close()
            box.file = nil
        }
    }

    // MARK: draining

    private func startDrain() {
        let start = state.withLock { s -> Bool in
            guard s.connected, !s.draining, !s.pending.isEmpty else { return false }
            s.draining = true
            return true
        }
        guard start else { return }
        // One drain task at a time, while there is a backlog and a broker.
        Task { await self.drain() }
    }

    private func drain() async {
        var last: Int64 = 0
        var delivered = 0
        let began = ContinuousClock.now
        defer { state.withLock { $0.draining = false } }
        while state.withLock({ $0.connected }) {
            // What waits in memory is newer than the file: it goes to the file first.
            if state.withLock({ !$0.buffer.isEmpty }) { await flush() }
            let batch = settings.batch
            let after = last
            let rows = await onQueue { box in (try? box.file?.read(after: after, limit: batch)) ?? [] }
            if let first = rows.first { state.withLock { $0.stored.oldestTs = first.ts } }
            if rows.isEmpty {
                if state.withLock({ $0.buffer.isEmpty }) {
                    await removeFileIfEmpty()
                    if delivered > 0 {
                        logger.notice("outbox: \(delivered) kept messages delivered in \(ContinuousClock.now - began)")
                    }
                    return
                }
                continue
            }
            let started = ContinuousClock.now
            guard await deliver(rows) else { return }   // the broker went away again: the rows stay
            let seqs = rows.map(\.seq)
            _ = await onQueue { box in (try? box.file?.delete(seqs)) != nil }
            state.withLock { s in
                for r in rows {
                    s.pending[r.topic, default: 0] -= 1
                    if s.pending[r.topic, default: 0] <= 0 { s.pending[r.topic] = nil }
                }
                s.stored.count = max(0, s.stored.count - rows.count)
                s.stored.bytes = max(0, s.stored.bytes - rows.reduce(0) { $0 + Self.size($1) })
                // The oldest left is the next batch's first (read below); none when empty.
                s.stored.oldestTs = s.stored.count == 0 ? nil : s.stored.oldestTs
            }
            report()
            delivered += rows.count
            last = rows[rows.count - 1].seq
            // Paced: at most ratePerSecond, so live data and the broker are not starved.
            let due = started + .milliseconds(rows.count * 1000 / max(1, settings.ratePerSecond))
            if due > .now { try? await Task.sleep(until: due, clock: .continuous) }
        }
    }

    /// Hands `rows` to the client in order and waits until the broker acknowledged every one
    /// (false when one was not: the client stopped, or refused it).
    private func deliver(_ rows: [OutboxRecord]) async -> Bool {
        let messages = rows.map { (topic: $0.topic, payload: $0.payload, retain: $0.retain, properties: Self.properties(ts: $0.ts)) }
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let tally = Mutex((left: rows.count, ok: true))
            // The client is an actor: the handing-over is a hop of its own; the continuation
            // resumes from the last acknowledgement's callback.
            Task {
                await client.enqueue(messages, qos: .atLeastOnce) { _, result in
                    let done = tally.withLock { t -> Bool? in
                        if case .failure = result { t.ok = false }
                        t.left -= 1
                        return t.left == 0 ? t.ok : nil
                    }
                    if let done { c.resume(returning: done) }
                }
            }
        }
    }

    private func removeFileIfEmpty() async {
        let path = settings.path
        let removed = await onQueue { box -> Bool in
            guard let file = box.file, (try? file.stats().count) == 0 else { return false }
            file.close()
            box.file = nil
            for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
            return true
        }
        if removed {
            state.withLock { s in
                s.stored = (0, 0, nil)
                s.onDisk = false
            }
            report()
            logger.info("outbox empty: \(path) removed")
        }
    }

    // MARK: helpers

    /// Opens the file on first use; a file that is not a usable database is moved aside.
    private func openIfNeeded(_ box: FileBox) throws(OutboxError) -> OutboxFile {
        if let f = box.file { return f }
        do {
            let f = try OutboxFile(path: settings.path)
            box.file = f
            return f
        } catch {
            // Moved aside (kept for a post-mortem), and a new one started.
            let aside = settings.path + ".unreadable-\(unixMilliseconds())"
            if access(settings.path, F_OK) == 0, rename(settings.path, aside) == 0 {
                unlink(settings.path + "-wal")
                unlink(settings.path + "-shm")
                logger.error("outbox: \(error); moved to \(aside), starting a new one")
                if let f = try? OutboxFile(path: settings.path) {
                    box.file = f
                    return f
                }
            }
            state.withLock { $0.unusable = true }
            logger.error("outbox: \(error); messages kept in memory only (the client's bounded queue)")
            throw error
        }
    }

    private func onQueue<T: Sendable>(_ body: @escaping @Sendable (FileBox) -> T) async -> T {
        let box = self.box
        return await queue.run { body(box) }
    }

    private func report() {
        guard let telemetry else { return }
        let (stored, dropped) = state.withLock { ($0.stored, $0.droppedTotal) }
        telemetry.outbox(count: stored.count, bytes: stored.bytes, dropped: dropped, oldestTs: stored.oldestTs)
    }
}
