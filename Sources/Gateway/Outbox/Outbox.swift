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
///   transaction, synced): a crash or a power cut loses at most that interval. A topic with
///   messages in the outbox sends its new ones there too, behind them, so per topic the order is
///   the order produced.
/// - What the client holds of ours when the connection is lost, or at a stop (queued, or sent
///   and not acknowledged), comes back (``MQTTClient/takeBack()``) and is kept ahead of every
///   kept message of its topic.
/// - A write that fails (a full disk, an I/O error) keeps the messages in memory, in order and
///   bounded like the file, and is tried again every interval; nothing overtakes what is kept.
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
        /// Messages kept in memory while the file cannot be written (a full disk): beyond it,
        /// superseded values go first, then the oldest, as in a full file.
        var memoryLimit = 10_000
        /// How long a stop waits for the broker to acknowledge what the client holds, before
        /// the rest is taken back and kept.
        var settleOnStop: Duration = .seconds(2)
        /// The first pause after a failed read or write while delivering; it doubles, to 30 s.
        var retryPause: Duration = .seconds(1)
    }

    /// The open file, touched only on `queue` (one block at a time, so never from two threads
    /// at once): that confinement is the whole of its safety, hence `@unchecked`.
    private final class FileBox: @unchecked Sendable {
        var file: OutboxFile?
    }

    private struct State: Sendable {
        /// Handed back by the client: older than every kept message of their topics, so they go
        /// into the file ahead of all it holds.
        var returned: [OutboxRecord] = []
        var buffer: [OutboxRecord] = []
        /// Per topic, messages in memory or the file not yet acknowledged by the broker.
        var pending: [String: Int] = [:]
        var flushScheduled = false
        /// A flush runs; the others wait here, in order (``flush(toDisk:)``).
        var flushing = false
        var flushWaiters: [CheckedContinuation<Void, Never>] = []
        var draining = false
        /// The drain starts again from the first record (some were written ahead of it).
        var rewind = false
        var connected = false
        /// The file holds messages: what waits in memory goes behind them.
        var onDisk = false
        var closed = false
        /// A file an earlier run left could not be read at start: which topics it holds is not
        /// known, so every topic waits behind it until it opens.
        var unknownBacklog = false
        /// The write error of the episode under way (nil while writes work): logged once.
        var failing: String?
        var writeErrors = 0
        /// Delivered records whose delete failed: never read again (tried again later).
        var undeleted: Set<Int64> = []
        var droppedTotal = 0
        var droppedThisOutage = 0
        /// What the file holds: read from it at start and after a trim, kept up to date by
        /// arithmetic otherwise (a full scan per batch would cost a 64 MiB backlog its square).
        var stored = (count: 0, bytes: 0, oldestTs: Int64?.none)

        /// True for the caller that is to schedule the next flush (one at a time).
        mutating func claimFlush() -> Bool {
            guard !flushScheduled else { return false }
            flushScheduled = true
            return true
        }

        mutating func release(_ topic: String, _ n: Int = 1) {
            pending[topic, default: 0] -= n
            if pending[topic, default: 0] <= 0 { pending[topic] = nil }
            // A dictionary keeps its capacity when emptied: the one of the start-up burst (every
            // topic of 1000 devices, about 0.4 MiB) would stay for good.
            if pending.isEmpty { pending = [:] }
        }
    }

    /// Bytes a record counts for in ``OutboxFile/stats()``: its topic and payload.
    private static func size(_ r: OutboxRecord) -> Int { r.topic.utf8.count + r.payload.count }

    let settings: Settings
    private let client: MQTTClient
    let logger: Logger
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

    /// At start: what the client will hand back is ours; a file an earlier run left is opened,
    /// and its topics wait behind it.
    func start() async {
        await client.onConnectionLost { [weak self] back in self?.handedBack(back) }
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
            // Kept as it is (a full disk, an I/O error): opened again at the next write or drain.
            state.withLock { s in
                s.onDisk = true
                s.unknownBacklog = true
            }
            logger.error("outbox: cannot read what an earlier run kept (\(e)); the file stays, tried again at the next write")
        }
    }

    // MARK: publishing

    /// A data message: to the broker now if it keeps up and the topic has nothing waiting,
    /// else into the outbox.
    func publish(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async {
        let properties = Self.properties(ts: ts)
        if isClear(topic), await client.enqueueIfKeepingUp(to: topic, payload: payload, qos: .atLeastOnce, retain: retain, properties: properties,
                                                           maximumQueued: settings.keepUpQueue, returnable: true, accept: { self.isClear(topic) }) {
            return
        }
        let schedule = state.withLock { s -> Bool in
            s.buffer.append(OutboxRecord(topic: topic, payload: payload, retain: retain, compactable: compactable, ts: ts))
            s.pending[topic, default: 0] += 1
            return s.claimFlush()
        }
        if schedule { scheduleFlush() }
    }

    /// Nothing of `topic` waits in memory or the file.
    private func isClear(_ topic: String) -> Bool { state.withLock { !$0.unknownBacklog && $0.pending[topic] == nil } }

    /// One timer task per sync interval while there is something to write.
    private func scheduleFlush() {
        Task {
            try? await Task.sleep(for: settings.sync)
            await self.flush()
        }
    }

    static func properties(ts: Int64) -> MQTTProperties {
        var p = MQTTProperties()
        p.userProperties = [MQTTUserProperty("ts", String(ts))]
        return p
    }

    /// The client lost its connection holding messages of ours (on its executor, before it can
    /// reconnect): they are kept ahead of everything of their topics.
    private func handedBack(_ messages: [MQTTMessage]) {
        let now = unixMilliseconds()
        let records = messages.map { m in
            // Compacted never (which were values is not known here): dropped only as the oldest.
            OutboxRecord(topic: m.topic, payload: m.payload, retain: m.retain, compactable: false,
                         ts: m.properties.userProperties.first { $0.name == "ts" }.flatMap { Int64($0.value) } ?? now)
        }
        let (schedule, closed) = state.withLock { s -> (Bool, Bool) in
            guard !s.closed else { return (false, true) }
            s.returned.append(contentsOf: records)
            for r in records { s.pending[r.topic, default: 0] += 1 }
            return (s.claimFlush(), false)
        }
        if closed {
            logger.error("outbox: \(records.count) messages handed back after the outbox closed: lost")
        } else {
            logger.info("outbox: \(records.count) messages the broker had not acknowledged are kept")
        }
        if schedule { scheduleFlush() }
    }

    /// Writes what waits in memory (one transaction), makes room if over the bound. False when
    /// the write failed (the messages still wait, in memory). One flush at a time (the timer's,
    /// the drain's, the stop's): a failed one puts its messages back ahead of what waits, which
    /// is right only if no other flush took newer ones meanwhile (two that overlapped put the
    /// newer ones first, and thinning then dropped them as the oldest).
    @discardableResult
    func flush(toDisk: Bool = false) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                guard s.flushing else {
                    s.flushing = true
                    return true
                }
                s.flushWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
        defer {
            let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
                guard !s.flushWaiters.isEmpty else {
                    s.flushing = false
                    return nil
                }
                return s.flushWaiters.removeFirst()
            }
            next?.resume()
        }
        return await flushAlone(toDisk: toDisk)
    }

    private func flushAlone(toDisk: Bool) async -> Bool {
        let (returned, records, direct) = state.withLock { s -> ([OutboxRecord], [OutboxRecord], Bool) in
            s.flushScheduled = false
            defer { s.returned = []; s.buffer = [] }
            return (s.returned, s.buffer, !toDisk && s.connected && !s.onDisk)
        }
        guard !returned.isEmpty || !records.isEmpty else { return true }
        // Connected again with nothing on disk (at start, before the first connect, or a short
        // drop): they go to the broker, in order, without touching the disk.
        if direct {
            let all = returned + records
            let messages = all.map { (topic: $0.topic, payload: $0.payload, retain: $0.retain, properties: Self.properties(ts: $0.ts)) }
            await client.enqueue(messages, qos: .atLeastOnce, returnable: true)
            // Only now (they are in the client's queue, in order) may newer ones of these
            // topics go straight to the client.
            state.withLock { s in for r in all { s.release(r.topic) } }
            return true
        }
        let maxBytes = settings.maxBytes
        let result = await onQueue { box -> Result<(gone: [String: Int], stats: (count: Int, bytes: Int, oldestTs: Int64?)?), OutboxError> in
            Result { () throws(OutboxError) in
                let file = try self.openIfNeeded(box)
                var gone: [String: Int] = [:]
                do throws(OutboxError) {
                    do throws(OutboxError) {
                        try file.append(records, ahead: returned)
                    } catch where error.kind == .full {
                        // The disk is full: superseded values make room, and once more.
                        gone = try file.makeRoom()
                        try file.append(records, ahead: returned)
                    }
                } catch {
                    if error.kind != .full { box.file = nil }   // opened (and checked) again at the next try
                    throw error
                }
                gone.merge(try file.trim(maxBytes: maxBytes), uniquingKeysWith: +)
                // Counted again only when something was removed.
                return (gone, gone.isEmpty ? nil : try file.stats())
            }
        }
        switch result {
        case .success(let (gone, read)):
            let dropped = gone.values.reduce(0, +)
            let (firstDrop, recovered, stats) = state.withLock { s -> (Bool, String?, (count: Int, bytes: Int, oldestTs: Int64?)) in
                s.onDisk = true
                if !returned.isEmpty { s.rewind = true }
                for (t, n) in gone { s.release(t, n) }
                if let read {
                    s.stored = read
                } else {
                    let added = returned + records
                    s.stored.count += added.count
                    s.stored.bytes += added.reduce(0) { $0 + Self.size($1) }
                    s.stored.oldestTs = min(s.stored.oldestTs ?? .max, added.map(\.ts).min() ?? .max)
                }
                s.droppedTotal += dropped
                let first = dropped > 0 && s.droppedThisOutage == 0
                s.droppedThisOutage += dropped
                defer { s.failing = nil }
                return (first, s.failing, s.stored)
            }
            if let recovered { logger.notice("outbox: writing again (after: \(recovered))") }
            if firstDrop {
                logger.warning("outbox full: dropping the oldest messages (superseded values first); the count follows when the broker is back")
            }
            logger.debug("outbox: \(stats.count) messages on disk, \(stats.bytes) bytes")
            report()
            if state.withLock({ $0.connected }) { startDrain() }
            return true
        case .failure(let e):
            // Kept in memory, ahead of anything newer, and tried again next interval: nothing
            // overtakes them (they never go to the client while older ones wait in the file).
            let (first, dropped, schedule) = state.withLock { s -> (Bool, Int, Bool) in
                s.returned = returned + s.returned
                s.buffer = records + s.buffer
                let first = s.failing == nil
                if first { s.writeErrors += 1 }
                s.failing = "\(e)"
                let gone = Self.thin(&s.buffer, to: max(0, settings.memoryLimit - s.returned.count))
                for (t, n) in gone { s.release(t, n) }
                let dropped = gone.values.reduce(0, +)
                s.droppedTotal += dropped
                s.droppedThisOutage += dropped
                return (first, dropped, s.claimFlush())
            }
            if first {
                logger.error("outbox: cannot write (\(e)); messages wait in memory (at most \(settings.memoryLimit)) and the write is tried again every \(settings.sync)")
            }
            if dropped > 0 { logger.debug("outbox: \(dropped) messages dropped from memory while the file cannot be written") }
            report()
            if schedule && !toDisk { scheduleFlush() }
            return false
        }
    }

    /// Makes `records` at most `limit` long: older values of topics that have a newer one go
    /// first, then the oldest. Returns what went, per topic.
    static func thin(_ records: inout [OutboxRecord], to limit: Int) -> [String: Int] {
        guard records.count > limit else { return [:] }
        var gone: [String: Int] = [:]
        var newest: Set<String> = []
        var keep = [Bool](repeating: true, count: records.count)
        var excess = records.count - limit
        for i in records.indices.reversed() where records[i].compactable {
            if !newest.insert(records[i].topic).inserted, excess > 0 {
                keep[i] = false
                excess -= 1
            }
        }
        for i in records.indices where excess > 0 && keep[i] {
            keep[i] = false
            excess -= 1
        }
        var kept: [OutboxRecord] = []
        kept.reserveCapacity(limit)
        for (i, r) in records.enumerated() {
            if keep[i] { kept.append(r) } else { gone[r.topic, default: 0] += 1 }
        }
        records = kept
        return gone
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

    /// The gateway stops (its pollers have): the broker gets a moment to acknowledge what the
    /// client holds, the rest is taken back, and all that waits is written: a stop loses nothing.
    func close() async {
        if state.withLock({ $0.connected }) { await client.settle(timeout: settings.settleOnStop) }
        let back = await client.takeBack()
        if !back.isEmpty { handedBack(back) }
        let written = await flush(toDisk: true)
        let (dropped, lost) = state.withLock { s -> (Int, Int) in
            s.closed = true
            return (s.droppedThisOutage, s.returned.count + s.buffer.count)
        }
        if dropped > 0 { logger.warning("outbox: \(dropped) messages dropped since the broker went away (the outbox was full)") }
        if !written { logger.error("outbox: \(lost) messages could not be written at stop: lost") }
        await onQueue { box in
            box.file?.close()
            box.file = nil
        }
    }

    // MARK: draining

    private func startDrain() {
        let start = state.withLock { s -> Bool in
            guard s.connected, !s.draining, !s.pending.isEmpty || s.unknownBacklog else { return false }
            s.draining = true
            return true
        }
        guard start else { return }
        // One drain task at a time, while there is a backlog and a broker.
        Task { await self.drain() }
    }

    private func drain() async {
        var last = Int64.min
        var delivered = 0
        var failures = 0
        let began = ContinuousClock.now
        defer { state.withLock { $0.draining = false } }
        while state.withLock({ $0.connected && !$0.closed }) {
            // What waits in memory is newer than the file: it goes to the file first.
            let (waiting, rewind, undeleted) = state.withLock { s -> (Bool, Bool, Set<Int64>) in
                defer { s.rewind = false }
                return (!s.buffer.isEmpty || !s.returned.isEmpty, s.rewind, s.undeleted)
            }
            if rewind { last = .min }
            if waiting, !(await flush()) {
                failures += 1
                await backOff(failures)
            }
            if !undeleted.isEmpty, await onQueue({ box in (try? box.file?.delete(Array(undeleted))) != nil }) {
                state.withLock { s in s.undeleted.subtract(undeleted) }
            }
            let batch = settings.batch
            let after = last
            let read = await onQueue { box -> Result<[OutboxRecord], OutboxError> in
                Result { () throws(OutboxError) in
                    // No file (removed once empty), or the outbox closed: nothing to read.
                    guard !self.state.withLock({ $0.closed }), box.file != nil || access(self.settings.path, F_OK) == 0 else { return [] }
                    return try self.openIfNeeded(box).read(after: after, limit: batch)
                }
            }
            guard case .success(let all) = read else {
                // Tried again (the file opened afresh) with a growing pause: the topics wait
                // behind the file in the meantime, and flow again once it reads.
                if case .failure(let e) = read, failures == 0 { logger.error("outbox: cannot read the kept messages (\(e)); trying again") }
                await onQueue { box in box.file = nil }
                failures += 1
                await backOff(failures)
                continue
            }
            let skipped = state.withLock { $0.undeleted }
            let rows = skipped.isEmpty ? all : all.filter { !skipped.contains($0.seq) }
            if let first = rows.first { state.withLock { $0.stored.oldestTs = first.ts } }
            if all.isEmpty {
                await removeFileIfEmpty()
                if state.withLock({ $0.buffer.isEmpty && $0.returned.isEmpty }) {
                    if delivered > 0 {
                        logger.notice("outbox: \(delivered) kept messages delivered in \(ContinuousClock.now - began)")
                    }
                    return
                }
                continue
            }
            last = all[all.count - 1].seq
            if rows.isEmpty { continue }
            let started = ContinuousClock.now
            guard await deliver(rows) else { return }   // the broker went away again: the rows stay
            let seqs = rows.map(\.seq)
            let deleted = await onQueue { box in (try? box.file?.delete(seqs)) != nil }
            state.withLock { s in
                // Delivered either way; a row not deleted is skipped until its delete works.
                if !deleted { s.undeleted.formUnion(seqs) }
                for r in rows { s.release(r.topic) }
                s.stored.count = max(0, s.stored.count - rows.count)
                s.stored.bytes = max(0, s.stored.bytes - rows.reduce(0) { $0 + Self.size($1) })
                // The oldest left is the next batch's first (read below); none when empty.
                s.stored.oldestTs = s.stored.count == 0 ? nil : s.stored.oldestTs
            }
            if !deleted { logger.error("outbox: delivered messages could not be removed from the file; they are not sent again while the gateway runs") }
            report()
            delivered += rows.count
            failures = 0
            // Paced: at most ratePerSecond, so live data and the broker are not starved.
            let due = started + .milliseconds(rows.count * 1000 / max(1, settings.ratePerSecond))
            if due > .now { try? await Task.sleep(until: due, clock: .continuous) }
        }
    }

    /// A pause after the `n`th failure in a row: `retryPause`, doubling, at most 30 s.
    private func backOff(_ n: Int) async {
        try? await Task.sleep(for: min(.seconds(30), settings.retryPause * (1 << min(n - 1, 5))))
    }

    /// Hands `rows` to the client in order and waits until the broker acknowledged every one
    /// (false when one was not: the client stopped, refused it, or handed it back).
    private func deliver(_ rows: [OutboxRecord]) async -> Bool {
        let messages = rows.map { (topic: $0.topic, payload: $0.payload, retain: $0.retain, properties: Self.properties(ts: $0.ts)) }
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let tally = Mutex((left: rows.count, ok: true))
            // The client is an actor: the handing-over is a hop of its own; the continuation
            // resumes from the last acknowledgement's callback. Returnable: a lost connection
            // ends the batch at once (the rows are still in the file).
            Task {
                await client.enqueue(messages, qos: .atLeastOnce, returnable: true) { _, result in
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

    /// Removes the file once it holds nothing left to deliver (rows whose delete failed were
    /// delivered: removing the file is their delete, and frees a full disk).
    private func removeFileIfEmpty() async {
        let path = settings.path
        let delivered = state.withLock { $0.undeleted.count }
        let removed = await onQueue { box -> Bool in
            guard let file = box.file, let count = try? file.stats().count, count <= delivered else { return false }
            file.close()
            box.file = nil
            for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
            return true
        }
        if removed {
            state.withLock { s in
                s.stored = (0, 0, nil)
                s.onDisk = false
                s.undeleted = []
                // Nothing is kept but what waits in memory: no topic waits behind the file any
                // more, even if it was counted wrong (the file cut short under us).
                s.pending = [:]
                for r in s.returned + s.buffer { s.pending[r.topic, default: 0] += 1 }
            }
            report()
            logger.info("outbox empty: \(path) removed")
        }
    }

    // MARK: helpers

    /// Opens the file on first use. Only a file that fails SQLite's integrity check is moved
    /// aside (with its WAL, for a post-mortem) and a new one started: a full disk or an I/O
    /// error leaves it where it is, to be opened again at the next try.
    private func openIfNeeded(_ box: FileBox) throws(OutboxError) -> OutboxFile {
        if let f = box.file { return f }
        do {
            let f = try OutboxFile(path: settings.path)
            if state.withLock({ $0.unknownBacklog }) {
                // What the file left unread at start holds: its topics wait behind it.
                let counts = try f.countsByTopic()
                let stats = try f.stats()
                state.withLock { s in
                    for (t, n) in counts { s.pending[t, default: 0] += n }
                    s.stored = stats
                    s.unknownBacklog = false
                }
                logger.notice("outbox: \(stats.count) messages an earlier run kept are readable again")
            }
            box.file = f
            return f
        } catch where error.kind == .corrupt {
            let aside = settings.path + ".unreadable-\(unixMilliseconds())"
            guard rename(settings.path, aside) == 0 else { throw error }
            for suffix in ["-wal", "-shm"] { rename(settings.path + suffix, aside + suffix) }
            // What it held is not delivered: its topics flow again.
            let waiting = state.withLock { s -> Int in
                s.unknownBacklog = false
                s.pending = [:]
                for r in s.returned + s.buffer { s.pending[r.topic, default: 0] += 1 }
                s.stored = (0, 0, nil)
                s.undeleted = []
                return s.pending.count
            }
            logger.error("outbox: \(error); moved to \(aside) with its WAL, starting a new one (\(waiting) topics wait in memory)")
            let f = try OutboxFile(path: settings.path)
            box.file = f
            return f
        }
    }

    private func onQueue<T: Sendable>(_ body: @escaping @Sendable (FileBox) -> T) async -> T {
        let box = self.box
        return await queue.run { body(box) }
    }

    private func report() {
        guard let telemetry else { return }
        let (stored, dropped, errors) = state.withLock { ($0.stored, $0.droppedTotal, $0.writeErrors) }
        telemetry.outbox(count: stored.count, bytes: stored.bytes, dropped: dropped, oldestTs: stored.oldestTs, writeErrors: errors)
    }
}

/// The outbox as a feature: opened before the client connects, told when the broker comes and
/// goes, written to disk once every unit has stopped.
extension Outbox: GatewayFeature {
    func starting() async { await start() }
    func brokerConnected() async { connected() }
    func brokerLost(reason: MQTTDisconnectReason) async {
        disconnected()
        logger.info("data kept in the outbox (\(settings.path)) until the broker is back")
    }
    func stopped() async { await close() }
}
