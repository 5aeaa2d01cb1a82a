import DequeModule

/// The outgoing half of an MQTT session as a value: messages waiting to be sent (bounded: the
/// oldest is dropped, never one put ahead), messages in flight with their stage, and the packet
/// identifiers. No I/O and no clock: ``MQTTClient`` feeds it what happens (a message to send, an
/// acknowledgement, a new connection) and writes and completes what it hands back; tests drive
/// it directly.
struct MQTTPublishSession {
    enum Stage { case awaitingPubAck, awaitingPubRec, awaitingPubComp }

    struct InFlight {
        var packet: PublishPacket
        var stage: Stage
        var completion: PublishCompletion?
        var sentAt: ContinuousClock.Instant
        var returnable = false
    }

    struct Waiting {
        var packet: PublishPacket
        var completion: PublishCompletion?
        /// The sender takes it back when the connection is lost or the client stops
        /// (``takeBack()``), to keep it somewhere safer than memory (the gateway's outbox).
        var returnable = false
    }

    /// A PUBLISH to write now; `completeOnWrite`: a QoS 0 message's sender, done once it is written.
    struct Outgoing {
        var packet: PublishPacket
        var completeOnWrite: PublishCompletion?
    }

    enum PubRecOutcome {
        /// Unknown id or wrong stage: ignore it.
        case unknown
        /// Write PUBREL; the message now waits for PUBCOMP.
        case release
        /// The broker refused the message: it is no longer in flight.
        case refused(InFlight)
    }

    /// At most this many messages wait (`MQTTConfiguration.queueLimit`).
    var queueLimit: Int
    private(set) var queue: Deque<Waiting> = []
    /// The first `aheadCount` messages of `queue` were put ahead of the rest.
    private(set) var aheadCount = 0
    /// The most messages `queue` held since it was last empty: a burst (every value at start, a
    /// backlog after a reconnect) leaves its storage behind, given back once drained.
    private var queuePeak = 0
    private(set) var inFlight: [UInt16: InFlight] = [:]
    /// In-flight ids in the order they were sent (resent in that order).
    private var order: Deque<UInt16> = []
    private var nextPacketID: UInt16 = 1

    init(queueLimit: Int) { self.queueLimit = queueLimit }

    var isIdle: Bool { queue.isEmpty && inFlight.isEmpty }

    /// Queues a message (`ahead`: before every message not put ahead). Returns the message dropped
    /// to make room, if the queue was full: the oldest one not put ahead.
    mutating func add(_ message: Waiting, ahead: Bool) -> Waiting? {
        var dropped: Waiting?
        if queue.count >= queueLimit, aheadCount < queue.count {
            dropped = queue.remove(at: aheadCount)
        }
        if ahead {
            queue.insert(message, at: aheadCount)
            aheadCount += 1
        } else {
            queue.append(message)
        }
        queuePeak = max(queuePeak, queue.count)
        return dropped
    }

    /// A packet identifier not in use (1...65535, round robin) by a publish in flight or by
    /// `alsoInUse` (subscribe requests), or nil when every one is: an id in use is never handed out twice.
    mutating func allocateID(alsoInUse: (UInt16) -> Bool) -> UInt16? {
        for _ in 0..<65_535 {
            let id = nextPacketID
            nextPacketID = nextPacketID == 65_535 ? 1 : nextPacketID + 1
            if inFlight[id] == nil && !alsoInUse(id) { return id }
        }
        return nil
    }

    /// The next message to write, or nil when none is waiting or the in-flight `window` is full.
    /// A QoS 1/2 message (capped at the broker's `maximumQoS`) gets an id and goes in flight at `now`.
    mutating func next(window: Int, maximumQoS: MQTTQoS, now: ContinuousClock.Instant, alsoInUse: (UInt16) -> Bool) -> Outgoing? {
        guard let first = queue.first else { return nil }
        var packet = first.packet
        if packet.qos > maximumQoS { packet.qos = maximumQoS }
        var pid: UInt16?
        if packet.qos != .atMostOnce {
            guard inFlight.count < window, let free = allocateID(alsoInUse: alsoInUse) else { return nil }
            pid = free
        }
        queue.removeFirst()
        if aheadCount > 0 { aheadCount -= 1 }
        guard let pid else {
            return Outgoing(packet: packet, completeOnWrite: first.completion)
        }
        packet.packetIdentifier = pid
        inFlight[pid] = InFlight(packet: packet, stage: packet.qos == .atLeastOnce ? .awaitingPubAck : .awaitingPubRec,
                                 completion: first.completion, sentAt: now, returnable: first.returnable)
        order.append(pid)
        return Outgoing(packet: packet, completeOnWrite: nil)
    }

    /// Gives back the queue's storage after a burst, once it is empty.
    mutating func shrinkIfDrained() {
        if queue.isEmpty && queuePeak > 64 {
            queue = []
            queuePeak = 0
        }
    }

    /// PUBACK: the message, no longer in flight; nil for an unknown id or one not awaiting PUBACK.
    mutating func pubAck(_ pid: UInt16) -> InFlight? {
        guard inFlight[pid]?.stage == .awaitingPubAck else { return nil }
        return remove(pid)
    }

    mutating func pubRec(_ pid: UInt16, refused: Bool) -> PubRecOutcome {
        guard let o = inFlight[pid], o.stage != .awaitingPubAck else { return .unknown }
        if refused, let o = remove(pid) { return .refused(o) }
        inFlight[pid]?.stage = .awaitingPubComp
        return .release
    }

    /// PUBCOMP: the message, done; nil for an unknown id or one not awaiting PUBCOMP.
    mutating func pubComp(_ pid: UInt16) -> InFlight? {
        guard inFlight[pid]?.stage == .awaitingPubComp else { return nil }
        return remove(pid)
    }

    private mutating func remove(_ pid: UInt16) -> InFlight? {
        guard let o = inFlight.removeValue(forKey: pid) else { return nil }
        if let i = order.firstIndex(of: pid) { order.remove(at: i) }
        return o
    }

    /// A new connection on which the broker kept the session: what it has not acknowledged, in
    /// order and with the same ids (PUBLISH marked DUP, or PUBREL past PUBREC).
    func resend() -> [MQTTPacket] {
        order.compactMap { pid -> MQTTPacket? in
            guard let o = inFlight[pid] else { return nil }
            switch o.stage {
            case .awaitingPubAck, .awaitingPubRec:
                var again = o.packet
                again.dup = true
                return .publish(again)
            case .awaitingPubComp:
                return .pubrel(AckPacket(packetIdentifier: pid))
            }
        }
    }

    /// A new connection without a session: messages past PUBREC were delivered (their senders are
    /// returned, to be told so); the others queue again as new, ahead of what waited behind them.
    mutating func restartWithoutSession() -> [PublishCompletion] {
        var delivered: [PublishCompletion] = []
        var again: [Waiting] = []
        for pid in order {
            guard let o = inFlight[pid] else { continue }
            if o.stage == .awaitingPubComp {
                if let c = o.completion { delivered.append(c) }
            } else {
                var packet = o.packet
                packet.dup = false
                packet.packetIdentifier = nil
                again.append(Waiting(packet: packet, completion: o.completion, returnable: o.returnable))
            }
        }
        inFlight.removeAll()
        order.removeAll()
        queue.insert(contentsOf: again, at: aheadCount)
        queuePeak = max(queuePeak, queue.count)
        return delivered
    }

    /// Removes every returnable message not yet acknowledged, oldest first (in flight in the order
    /// sent, then queued; a QoS 2 message past PUBREC was delivered and stays). Those without a
    /// completion are returned, ready to publish again; the senders of the others, which keep
    /// their own copy, are returned to be told.
    mutating func takeBack() -> (messages: [PublishPacket], senders: [PublishCompletion]) {
        var messages: [PublishPacket] = []
        var senders: [PublishCompletion] = []
        func take(_ packet: PublishPacket, _ completion: PublishCompletion?) {
            if let completion {
                senders.append(completion)
            } else {
                var p = packet
                p.dup = false
                p.packetIdentifier = nil
                messages.append(p)
            }
        }
        for pid in order {
            guard let o = inFlight[pid], o.returnable, o.stage != .awaitingPubComp else { continue }
            take(o.packet, o.completion)
            _ = remove(pid)
        }
        guard queue.contains(where: \.returnable) else { return (messages, senders) }
        var kept: Deque<Waiting> = []
        var keptAhead = 0
        for (i, w) in queue.enumerated() {
            if w.returnable {
                take(w.packet, w.completion)
            } else {
                kept.append(w)
                if i < aheadCount { keptAhead += 1 }
            }
        }
        queue = kept
        aheadCount = keptAhead
        return (messages, senders)
    }

    /// The client shuts down: every sender still waiting, queued or in flight; the session is empty after.
    mutating func removeAll() -> [PublishCompletion] {
        let waiting = queue.compactMap(\.completion) + order.compactMap { inFlight[$0]?.completion }
        queue.removeAll()
        aheadCount = 0
        inFlight.removeAll()
        order.removeAll()
        return waiting
    }
}
