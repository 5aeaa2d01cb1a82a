import DequeModule
import NIOCore

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

    /// A packet identifier not in use (1...65535, round robin), or nil when every one is: an id
    /// in use is never handed out twice.
    func allocatePacketID() -> UInt16? {
        for _ in 0..<65_535 {
            let id = nextPacketID
            nextPacketID = nextPacketID == 65_535 ? 1 : nextPacketID + 1
            if outbound[id] == nil && requests[id] == nil && !restoreIDs.contains(id) { return id }
        }
        return nil
    }

    var inFlightWindow: Int { max(1, min(serverReceiveMaximum, configuration.maximumInFlight, 65_000)) }

    /// Sends queued messages while connected and the in-flight window has room.
    func drainQueue() {
        while state == .connected, let first = queue.first {
            var pid: UInt16?
            if first.packet.qos != .atMostOnce && serverMaximumQoS != .atMostOnce {
                guard outbound.count < inFlightWindow, let free = allocatePacketID() else { break }
                pid = free
            }
            queue.removeFirst()
            if aheadCount > 0 { aheadCount -= 1 }
            send(first, packetIdentifier: pid)
        }
        if queue.isEmpty && queuePeak > 64 {
            queue = []
            queuePeak = 0
        }
    }

    /// `packetIdentifier`: a free id for a QoS 1/2 message (nil for QoS 0).
    func send(_ pending: Pending, packetIdentifier: UInt16?) {
        var packet = pending.packet
        if packet.qos > serverMaximumQoS { packet.qos = serverMaximumQoS }
        guard packet.qos != .atMostOnce, let pid = packetIdentifier else {
            packet.qos = .atMostOnce
            publishedCount[0] += 1
            write(.publish(packet))
            pending.continuation?.resume()
            return
        }
        packet.packetIdentifier = pid
        outbound[pid] = Outbound(packet: packet, stage: packet.qos == .atLeastOnce ? .awaitingPubAck : .awaitingPubRec,
                                 continuation: pending.continuation, sentAt: .now)
        outboundOrder.append(pid)
        publishedCount[Int(packet.qos.rawValue)] += 1
        write(.publish(packet))
    }

    /// Publishes a message. Returns when acknowledged (QoS 1/2) or written (QoS 0).
    /// While disconnected the message waits in the bounded queue. `ahead`: it goes before every
    /// message already queued (after earlier `ahead` ones), and is never the one dropped from a
    /// full queue: a last word (`offline` at stop) does not wait behind a telemetry backlog.
    public func publish(to topic: String, payload: [UInt8], qos: MQTTQoS = .atMostOnce, retain: Bool = false,
                        properties: MQTTProperties = .init(), ahead: Bool = false) async throws {
        let packet = try makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            enqueue(Pending(packet: packet, continuation: .waiter(cont)), ahead: ahead)
        }
    }

    /// Publishes without waiting for the acknowledgement (fire and forget, still queued and resent).
    public func enqueue(to topic: String, payload: [UInt8], qos: MQTTQoS = .atMostOnce, retain: Bool = false,
                        properties: MQTTProperties = .init()) throws {
        let packet = try makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
        enqueue(Pending(packet: packet, continuation: nil))
    }

    /// Publishes each message in order without waiting; `completed` is called once per message
    /// with its outcome (acknowledged, or why not), in no set order. For a sender that keeps its
    /// own copy until the broker has it (the outbox).
    public func enqueue(_ messages: [(topic: String, payload: [UInt8], retain: Bool, properties: MQTTProperties)], qos: MQTTQoS,
                        completed: @escaping @Sendable (Int, Result<Void, any Error>) -> Void) {
        for (i, m) in messages.enumerated() {
            do {
                let packet = try makePublish(topic: m.topic, payload: m.payload, qos: qos, retain: m.retain, properties: m.properties)
                enqueue(Pending(packet: packet, continuation: .callback { completed(i, $0) }))
            } catch {
                completed(i, .failure(error))
            }
        }
    }

    /// Publishes without waiting when connected and the queue is short (fewer than `maximumQueued`
    /// waiting); false, and nothing queued, otherwise.
    public func enqueueIfKeepingUp(to topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool, properties: MQTTProperties = .init(),
                                   maximumQueued: Int) -> Bool {
        guard state == .connected, queue.count < maximumQueued,
              let packet = try? makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties) else { return false }
        enqueue(Pending(packet: packet, continuation: nil))
        return true
    }

    public func publish(to topic: String, string: String, qos: MQTTQoS = .atMostOnce, retain: Bool = false,
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

    func enqueue(_ pending: Pending, ahead: Bool = false) {
        if queue.count >= configuration.queueLimit, aheadCount < queue.count {
            let oldest = queue.remove(at: aheadCount)
            droppedCount += 1
            oldest.continuation?.resume(throwing: MQTTError.droppedFromQueue)
            if droppedCount == 1 || droppedCount % 1000 == 0 {
                logger.warning("MQTT queue full (\(configuration.queueLimit)): dropped \(droppedCount) oldest messages so far")
                eventSink.yield(.messagesDropped(total: droppedCount))
            }
        }
        if ahead {
            queue.insert(pending, at: aheadCount)
            aheadCount += 1
        } else {
            queue.append(pending)
        }
        queuePeak = max(queuePeak, queue.count)
        if state == .connected {
            drainQueue()
            channel?.flush()
            notifyIfDrained()
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
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            await self?.requestTimedOut(pid)
        }
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
