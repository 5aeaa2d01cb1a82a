import NIOCore

/// What arrives on the connection: channel events, packets, deliveries to ``MQTTClient/messages``.
extension MQTTClient {
    func handle(_ event: ChannelEvent, connection id: Int) {
        guard lifecycle.isCurrent(id) else { return }
        if channel == nil && state == .connecting { return earlyEvents.append(event) }
        switch event {
        case .packet(let packet):
            handle(packet)
        case .oversized(let head):
            droppedIncomingCount += 1
            logger.warning("MQTT: dropped an incoming message of \(head.size) bytes on \(head.topic.debugDescription)\(head.retain ? " (retained)" : ""): larger than the maximum packet size of \(configuration.maximumPacketSize) bytes (\(droppedIncomingCount) dropped so far)")
            keepAlive?.packetReceived(at: .now)
            switch head.qos {
            case .atMostOnce: break
            case .atLeastOnce: acknowledge(.puback(AckPacket(packetIdentifier: head.packetIdentifier ?? 0)))
            case .exactlyOnce:
                // Acknowledged as received; its PUBREL is answered as for any QoS 2 message.
                incomingQoS2.insert(head.packetIdentifier ?? 0)
                acknowledge(.pubrec(AckPacket(packetIdentifier: head.packetIdentifier ?? 0)))
            }
        case .malformed(let error):
            logger.error("MQTT: malformed packet from the broker, closing: \(error)")
            lifecycle.closingOurselves(.malformedPacket("\(error)"))
            if let w = connAckWaiter {
                connAckWaiter = nil
                w.resume(throwing: MQTTError.protocolError("\(error)"))
            }
        case .closed(let reason):
            if let w = connAckWaiter {
                connAckWaiter = nil
                let r = reason?.description ?? "connection closed by the broker before CONNACK"
                if case .transport(_, tls: true) = reason { w.resume(throwing: MQTTError.tls(r)) } else { w.resume(throwing: MQTTError.connectFailed(r)) }
            }
            connectionClosed(id: id, reason: reason)
        }
    }

    /// Connection `id` closed; `reason` nil: the reason given when it was closed, or a plain close by the broker.
    func connectionClosed(id: Int, reason: MQTTDisconnectReason?) {
        guard channel != nil || state == .connected || state == .shutdown,
              let closed = lifecycle.closed(id, reason: reason, now: .now) else { return }
        channel = nil
        acksDue.removeAll()   // they belong to the connection that closed
        keepAliveTimer?.cancel()
        keepAliveTimer = nil
        keepAlive = nil
        for (_, r) in requests { r.resume(throwing: MQTTError.connectionLost(closed.reason.description)) }
        requests.removeAll()
        restoreIDs.removeAll()
        pendingConnectedEvent = nil
        if let handBack {
            let back = takeBack()
            if !back.isEmpty { handBack(back) }
        }
        if closed.wasConnected {
            logger.warning("MQTT connection lost: \(closed.reason)")
            eventSink.yield(.disconnected(reason: closed.reason))
        }
        let waiters = disconnectWaiters
        disconnectWaiters.removeAll()
        for w in waiters { w.resume() }
        notifyIfDrained(force: true)
    }

    func handle(_ packet: MQTTPacket) {
        keepAlive?.packetReceived(at: .now)   // any packet proves the link; PINGRESP clears the ping
        switch packet {
        case .connack(let ack):
            guard let w = connAckWaiter else { return protocolError("unexpected CONNACK") }
            connAckWaiter = nil
            w.resume(returning: ack)
        case .publish(var p):
            if let alias = p.properties.topicAlias {
                guard alias <= configuration.topicAliasMaximum else { return protocolError("topic alias \(alias) above our maximum", code: .topicAliasInvalid) }
                if p.topic.isEmpty {
                    guard let t = inboundAliases[alias] else { return protocolError("unknown topic alias \(alias)", code: .protocolError) }
                    p.topic = t
                } else {
                    inboundAliases[alias] = p.topic
                }
            }
            let message = MQTTMessage(topic: p.topic, payload: p.payload, qos: p.qos, retain: p.retain, properties: p.properties)
            switch p.qos {
            case .atMostOnce:
                deliver(message)
            case .atLeastOnce:
                deliver(message)
                acknowledge(.puback(AckPacket(packetIdentifier: p.packetIdentifier ?? 0)))
            case .exactlyOnce:
                let pid = p.packetIdentifier ?? 0
                if !incomingQoS2.contains(pid) {
                    incomingQoS2.insert(pid)
                    deliver(message)
                }
                acknowledge(.pubrec(AckPacket(packetIdentifier: pid)))
            }
        case .pubrel(let a):
            incomingQoS2.remove(a.packetIdentifier)
            acknowledge(.pubcomp(AckPacket(packetIdentifier: a.packetIdentifier)))
        case .puback(let a):
            guard let o = session.pubAck(a.packetIdentifier) else {
                logger.debug("MQTT: ignoring PUBACK for unknown packet id \(a.packetIdentifier)")
                return
            }
            complete(o, a)
        case .pubrec(let a):
            switch session.pubRec(a.packetIdentifier, refused: a.reasonCode.isFailure) {
            case .unknown:
                logger.debug("MQTT: ignoring PUBREC for unknown packet id \(a.packetIdentifier)")
            case .refused(let o):
                complete(o, a)
            case .release:
                acknowledge(.pubrel(AckPacket(packetIdentifier: a.packetIdentifier)))
            }
        case .pubcomp(let a):
            guard let o = session.pubComp(a.packetIdentifier) else {
                logger.debug("MQTT: ignoring PUBCOMP for unknown packet id \(a.packetIdentifier)")
                return
            }
            complete(o, a)
        case .suback(let s), .unsuback(let s):
            if restoreIDs.remove(s.packetIdentifier) != nil {
                for code in s.reasonCodes where code.isFailure { logger.error("MQTT: restoring a subscription failed: \(code)") }
                if restoreIDs.isEmpty, let e = pendingConnectedEvent {
                    pendingConnectedEvent = nil
                    eventSink.yield(e)
                }
                return
            }
            requests.removeValue(forKey: s.packetIdentifier)?.resume(returning: s)
        case .pingresp:
            break
        case .disconnect(let d):
            let reason = MQTTDisconnectReason.brokerDisconnected(d.reasonCode, d.properties.reasonString)
            lifecycle.brokerDisconnected(reason)
            logger.warning("MQTT: \(reason)")
        case .auth:
            protocolError("AUTH is not supported by this client")
        case .connect, .subscribe, .unsubscribe, .pingreq:
            protocolError("the broker sent a client packet (\(packet.name))")
        }
    }

    /// Where incoming messages go instead of ``messages``: `handler` is called on the client's
    /// loop with each one as it is read, in arrival order, with no task or queue in between, and
    /// before its acknowledgement is flushed (that flush waits for the loop's next turn, so work
    /// the handler hands to another thread starts first). It must not block: the client waits
    /// for it. nil: back to ``messages``.
    public func onMessage(_ handler: (@Sendable (MQTTMessage) -> Void)?) {
        messageHandler = handler
    }

    /// Hands a message to the handler given to ``onMessage(_:)`` or else to the reader of
    /// ``messages``; when that reader is ``MQTTConfiguration/incomingLimit`` messages behind, the
    /// message is dropped and counted (logged at the first and every 1000th).
    func deliver(_ message: MQTTMessage) {
        if let messageHandler { return messageHandler(message) }
        if case .dropped = messageSink.yield(message) {
            droppedIncomingCount += 1
            if droppedIncomingCount == 1 || droppedIncomingCount % 1000 == 0 {
                logger.warning("MQTT: the reader is \(configuration.incomingLimit) messages behind: dropped an incoming message on \(message.topic.debugDescription) (\(droppedIncomingCount) dropped so far)")
            }
        }
    }

    /// Answers a packet read (PUBACK, PUBREC, PUBREL, PUBCOMP): encoded and written at the loop's
    /// next turn (``flushSoon()``), in the order the packets were read (MQTT 4.6), so that what a
    /// delivery set going (a command's device write) goes first, and the answers to packets read
    /// together leave in one write. A connection that closes first drops them: the broker sends
    /// its PUBLISH again, and the session its PUBREL.
    func acknowledge(_ ack: MQTTPacket) {
        acksDue.append(ack)
        flushSoon()
    }

    /// A message the broker acknowledged (or refused): its sender is told, and the window has room.
    func complete(_ o: MQTTPublishSession.InFlight, _ ack: AckPacket) {
        configuration.onAcknowledged?(.now - o.sentAt)
        if ack.reasonCode.isFailure {
            o.completion?.resume(throwing: MQTTError.publishRefused(ack.reasonCode, reasonString: ack.properties.reasonString))
        } else {
            o.completion?.resume()
        }
        drainQueue()
        flushSoon()
        notifyIfDrained()
    }

    func protocolError(_ text: String, code: MQTTReasonCode = .protocolError) {
        logger.error("MQTT protocol error from the broker: \(text)")
        lifecycle.closingOurselves(.protocolError(text))
        if version == .v5 { write(.disconnect(ReasonPacket(reasonCode: code)), flush: true) }
        channel?.close(promise: nil)
    }
}
