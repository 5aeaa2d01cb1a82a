import DequeModule
import NIOCore
import Synchronization

/// What leaves: the bounded queue, the in-flight window, PUBLISH, and subscriptions.
extension MQTTClient {
    func write(_ packet: MQTTPacket, flush: Bool = false) {
        guard let channel else { return }
        keepAlive?.packetSent(at: .now)
        if flush {
            channel.writeAndFlush(packet, promise: nil)
        } else {
            channel.write(packet, promise: nil)
        }
    }

    /// A packet identifier not in use by a publish in flight, a request or a subscription being
    /// restored, or nil when every one is (``MQTTPublishSession/allocateID(alsoInUse:)``).
    func allocatePacketID() -> UInt16? {
        session.allocateID(alsoInUse: idHeldByRequest)
    }

    /// An id a SUBSCRIBE/UNSUBSCRIBE waits on (the session knows only its publishes).
    func idHeldByRequest(_ id: UInt16) -> Bool { requests[id] != nil || restoreIDs.contains(id) }

    var inFlightWindow: Int { max(1, min(serverReceiveMaximum, configuration.maximumInFlight, 65_000)) }

    /// Sends queued messages while connected and the in-flight window has room.
    func drainQueue() {
        while state == .connected,
              let out = session.next(window: inFlightWindow, maximumQoS: serverMaximumQoS, now: .now, alsoInUse: idHeldByRequest) {
            publishedCount[Int(out.packet.qos.rawValue)] += 1
            write(.publish(out.packet))
            out.completeOnWrite?.resume()
        }
        session.shrinkIfDrained()
    }

    /// Publishes a message. Returns when acknowledged (QoS 1/2) or written (QoS 0).
    /// While disconnected the message waits in the bounded queue. `ahead`: it goes before every
    /// message already queued (after earlier `ahead` ones), and is never the one dropped from a
    /// full queue: a last word (`offline` at stop) does not wait behind a telemetry backlog.
    ///
    /// Nonisolated: the caller does not hop onto the client's executor and back. The message is
    /// handed to the client's loop (at once when called there, as the gateway's own tasks are),
    /// and the acknowledgement resumes the caller on its own executor: one job on the loop per
    /// message instead of two, and none at all for a caller already on the loop.
    public nonisolated func publish(to topic: String, payload: [UInt8], qos: MQTTQoS = .atMostOnce, retain: Bool = false,
                                    properties: MQTTProperties = .init(), ahead: Bool = false) async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            onLoop { client in
                do {
                    let packet = try client.makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
                    client.enqueue(MQTTPublishSession.Waiting(packet: packet, completion: .waiter(cont)), ahead: ahead)
                } catch {
                    cont.resume(throwing: error)
                }
            }
        }
    }

    /// Runs `body` on the actor: at once when called on its loop (nothing else of the actor can
    /// run there meanwhile: the loop is its serial executor), else as a task queued on the loop,
    /// in the order of the calls.
    nonisolated func onLoop(_ body: @escaping @Sendable (isolated MQTTClient) -> Void) {
        if eventLoop.inEventLoop {
            assumeIsolated { body($0) }
        } else {
            eventLoop.execute { self.assumeIsolated { body($0) } }
        }
    }

    /// Publishes `messages` in this order, all queued in one step (``publish(to:payload:qos:retain:properties:ahead:)``'s
    /// `ahead` applies to each), and returns when every one is acknowledged or has failed: one
    /// result per message, in the same order. Separate `publish` calls from concurrent tasks
    /// leave in whatever order the tasks run.
    public func publishInOrder(_ messages: [(topic: String, payload: [UInt8])], qos: MQTTQoS, retain: Bool = false,
                               ahead: Bool = false) async -> [Result<Void, any Error>] {
        guard !messages.isEmpty else { return [] }
        return await withCheckedContinuation { (cont: CheckedContinuation<[Result<Void, any Error>], Never>) in
            // Completions come on this actor's loop, one at a time; the lock only makes the
            // shared tally Sendable.
            let tally = Mutex<(left: Int, results: [Result<Void, any Error>])>((messages.count, Array(repeating: .success(()), count: messages.count)))
            @Sendable func done(_ i: Int, _ r: Result<Void, any Error>) {
                let all = tally.withLock { t -> [Result<Void, any Error>]? in
                    t.results[i] = r
                    t.left -= 1
                    return t.left == 0 ? t.results : nil
                }
                if let all { cont.resume(returning: all) }
            }
            for (i, m) in messages.enumerated() {
                do {
                    let packet = try makePublish(topic: m.topic, payload: m.payload, qos: qos, retain: retain, properties: MQTTProperties())
                    enqueue(MQTTPublishSession.Waiting(packet: packet, completion: .callback { done(i, $0) }), ahead: ahead)
                } catch {
                    done(i, .failure(error))
                }
            }
        }
    }

    /// Publishes without waiting for the acknowledgement (fire and forget, still queued and resent).
    public func enqueue(to topic: String, payload: [UInt8], qos: MQTTQoS = .atMostOnce, retain: Bool = false,
                        properties: MQTTProperties = .init()) throws {
        let packet = try makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
        enqueue(MQTTPublishSession.Waiting(packet: packet, completion: nil))
    }

    /// Publishes each message in order without waiting; `completed`, when given, is called once
    /// per message with its outcome (acknowledged, or why not), in no set order: for a sender that
    /// keeps its own copy until the broker has it (the outbox's backlog). `returnable`: see
    /// ``takeBack()``.
    public func enqueue(_ messages: [(topic: String, payload: [UInt8], retain: Bool, properties: MQTTProperties)], qos: MQTTQoS,
                        returnable: Bool = false, completed: (@Sendable (Int, Result<Void, any Error>) -> Void)? = nil) {
        for (i, m) in messages.enumerated() {
            do {
                let packet = try makePublish(topic: m.topic, payload: m.payload, qos: qos, retain: m.retain, properties: m.properties)
                enqueue(MQTTPublishSession.Waiting(packet: packet, completion: completed.map { f in .callback { f(i, $0) } }, returnable: returnable))
            } catch {
                completed?(i, .failure(error))
            }
        }
    }

    /// Publishes without waiting when connected, the queue is short (fewer than `maximumQueued`
    /// waiting) and `accept` says yes (asked on the client's executor, so that nothing the client
    /// does in between, such as handing messages back, can come between the answer and the
    /// queueing); false, and nothing queued, otherwise. `returnable`: see ``takeBack()``.
    public func enqueueIfKeepingUp(to topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool, properties: MQTTProperties = .init(),
                                   maximumQueued: Int, returnable: Bool = false, accept: @Sendable () -> Bool = { true }) -> Bool {
        guard state == .connected, session.queue.count < maximumQueued, accept(),
              let packet = try? makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties) else { return false }
        enqueue(MQTTPublishSession.Waiting(packet: packet, completion: nil, returnable: returnable))
        return true
    }

    /// Takes back every message published as `returnable` that the broker has not acknowledged:
    /// in flight (in the order sent) and queued, oldest first. Returned are those published
    /// without a completion, for the caller to keep (they are no longer the client's); the
    /// senders of the others are told ``MQTTError/takenBack``. A message in flight may still have
    /// reached the broker: kept and sent again, it can arrive twice (at least once).
    ///
    /// Called by the client itself when a connection is lost, for the handler given to
    /// ``onConnectionLost(handBack:)``, before the `disconnected` event and before any reconnect.
    public func takeBack() -> [MQTTMessage] {
        let (packets, senders) = session.takeBack()
        for s in senders { s.resume(throwing: MQTTError.takenBack) }
        notifyIfDrained()
        return packets.map { MQTTMessage(topic: $0.topic, payload: $0.payload, qos: $0.qos, retain: $0.retain, properties: $0.properties) }
    }

    /// `handBack` receives the returnable messages (``takeBack()``) whenever a connection closes
    /// with some held, on the client's executor, before anything else happens to the session.
    public func onConnectionLost(handBack: @escaping @Sendable ([MQTTMessage]) -> Void) {
        self.handBack = handBack
    }

    /// Waits (at most `timeout`) until nothing is queued or in flight, while connected.
    public func settle(timeout: Duration) async {
        guard state == .connected && !session.isIdle else { return }
        let timer = after(timeout) { $0.notifyIfDrained(force: true) }
        await withCheckedContinuation { drainWaiters.append($0) }
        timer.cancel()
    }

    public nonisolated func publish(to topic: String, string: String, qos: MQTTQoS = .atMostOnce, retain: Bool = false,
                        properties: MQTTProperties = .init()) async throws {
        try await publish(to: topic, payload: Array(string.utf8), qos: qos, retain: retain, properties: properties)
    }

    func makePublish(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool, properties: MQTTProperties) throws -> PublishPacket {
        guard state != .shutdown else { throw MQTTError.shutdown }
        guard MQTTTopic.isValidName(topic) else { throw MQTTError.invalidArgument("topic '\(topic)' is not a valid topic name") }
        guard properties.topicAlias == nil, properties.subscriptionIdentifiers.isEmpty else {
            throw MQTTError.invalidArgument("topic alias and subscription identifiers are not for the client to send")
        }
        if let rt = properties.responseTopic, !MQTTTopic.isValidName(rt) { throw MQTTError.invalidArgument("response topic '\(rt)' is not valid") }
        if retain && !serverRetainAvailable { throw MQTTError.invalidArgument("the broker does not support retained messages") }
        let packet = PublishPacket(topic: topic, payload: payload, qos: qos, retain: retain,
                                   properties: version == .v5 ? properties : MQTTProperties())
        // Measured (by encoding) only when the broker announced a maximum: not on every publish.
        if serverMaximumPacketSize < Int.max {
            let size = MQTTPacketCodec.encodedSize(.publish(PublishPacket(topic: topic, payload: payload, qos: qos, retain: retain,
                                                                          packetIdentifier: 1, properties: packet.properties)), version: version)
            if size > serverMaximumPacketSize { throw MQTTError.packetTooLarge(size: size, maximum: serverMaximumPacketSize) }
        }
        return packet
    }

    func enqueue(_ message: MQTTPublishSession.Waiting, ahead: Bool = false) {
        if let oldest = session.add(message, ahead: ahead) {
            droppedCount += 1
            oldest.completion?.resume(throwing: MQTTError.droppedFromQueue)
            if droppedCount == 1 || droppedCount % 1000 == 0 {
                logger.warning("MQTT queue full (\(configuration.queueLimit)): dropped \(droppedCount) oldest messages so far")
                eventSink.yield(.messagesDropped(total: droppedCount))
            }
        }
        if state == .connected {
            drainQueue()
            flushSoon()
            notifyIfDrained()
        }
    }

    /// Writes the acknowledgements due (``acksDue``) and flushes, once the loop has run the
    /// tasks already queued on it: publishes (and acknowledgements that free the window) that
    /// arrive together leave in one write, not one system call each. The loop runs that flush
    /// right after them, before it waits again.
    func flushSoon() {
        guard !flushScheduled, channel != nil else { return }
        flushScheduled = true
        eventLoop.execute { [weak self] in
            // Tasks on the loop run on this actor's executor.
            self?.assumeIsolated { client in
                client.flushScheduled = false
                if !client.acksDue.isEmpty {
                    for ack in client.acksDue { client.write(ack) }
                    client.acksDue.removeAll(keepingCapacity: true)
                }
                client.channel?.flush()
            }
        }
    }

    // MARK: - Subscriptions

    /// Subscribes; returns one reason code per filter (granted QoS or a failure such as
    /// `notAuthorized`). Granted subscriptions are restored after a reconnect without a session.
    @discardableResult
    public func subscribe(_ subscriptions: [MQTTSubscription], timeout: Duration = .seconds(10)) async throws -> [MQTTReasonCode] {
        guard !subscriptions.isEmpty else { throw MQTTError.invalidArgument("nothing to subscribe to") }
        for s in subscriptions where !MQTTTopic.isValidFilter(s.filter) {
            throw MQTTError.invalidArgument("topic filter '\(s.filter)' is not valid")
        }
        guard state == .connected else { throw MQTTError.notConnected }
        guard let pid = allocatePacketID() else { throw MQTTError.invalidArgument("every packet identifier is in use: too many requests at once") }
        let ack = try await request(pid, .subscribe(SubscribePacket(packetIdentifier: pid, subscriptions: subscriptions)), timeout: timeout)
        guard ack.reasonCodes.count == subscriptions.count else {
            throw MQTTError.protocolError("SUBACK has \(ack.reasonCodes.count) codes for \(subscriptions.count) filters")
        }
        for (s, code) in zip(subscriptions, ack.reasonCodes) where !code.isFailure {
            if self.subscriptions[s.filter] == nil { subscriptionOrder.append(s.filter) }
            self.subscriptions[s.filter] = s
        }
        return ack.reasonCodes
    }

    /// Unsubscribes; returns the 5.0 reason codes (empty on 3.1.1).
    @discardableResult
    public func unsubscribe(_ filters: [String], timeout: Duration = .seconds(10)) async throws -> [MQTTReasonCode] {
        guard !filters.isEmpty else { throw MQTTError.invalidArgument("nothing to unsubscribe from") }
        for f in filters where !MQTTTopic.isValidFilter(f) { throw MQTTError.invalidArgument("topic filter '\(f)' is not valid") }
        for f in filters { subscriptions[f] = nil }
        subscriptionOrder.removeAll { filters.contains($0) }
        guard state == .connected else { throw MQTTError.notConnected }
        guard let pid = allocatePacketID() else { throw MQTTError.invalidArgument("every packet identifier is in use: too many requests at once") }
        return try await request(pid, .unsubscribe(UnsubscribePacket(packetIdentifier: pid, filters: filters)), timeout: timeout).reasonCodes
    }

    func request(_ pid: UInt16, _ packet: MQTTPacket, timeout: Duration) async throws -> SubAckPacket {
        let timer = after(timeout) { $0.requestTimedOut(pid) }
        defer { timer.cancel() }
        return try await withCheckedThrowingContinuation { cont in
            requests[pid] = cont
            write(packet, flush: true)
        }
    }

    func requestTimedOut(_ pid: UInt16) {
        requests.removeValue(forKey: pid)?.resume(throwing: MQTTError.timeout("no answer to packet id \(pid)"))
    }
}
