import NIOCore
import NIOPosix
import NIOSSL

/// Connecting: the TCP/TLS channel, CONNECT and CONNACK (with the 5.0 -> 3.1.1 fallback),
/// what a new session restores, and the keepalive timer.
extension MQTTClient {
    func establish() async throws -> ConnAckPacket {
        do {
            return try await establish(version: configuration.version)
        } catch MQTTError.connectionRefused(.unsupportedProtocolVersion, _) where configuration.version == .v5 && configuration.fallbackToV3 {
            logger.notice("broker refused MQTT 5.0; falling back to 3.1.1")
            return try await establish(version: .v3_1_1)
        }
    }

    func establish(version: MQTTVersion) async throws -> ConnAckPacket {
        guard let id = lifecycle.beginAttempt() else { throw MQTTError.shutdown }
        self.version = version
        let loop = eventLoop
        // The channel lives on this actor's loop. A packet is handled at once, in the handler's
        // `channelRead`: NIO reads only when its selector says the socket is readable (TLS
        // included: NIOSSLHandler hands on plaintext from its own read callbacks), never inside
        // one of the actor's calls, so the actor is not re-entered, and one task on the loop per
        // packet is saved (a command reaches its device that much sooner). A close can come from
        // within the actor's own call (it closes the channel, NIO says inactive at once): that
        // event, and a malformed packet's, are tasks on the loop that run after it, in order.
        let sink: @Sendable (ChannelEvent) -> Void = { [weak self] event in
            switch event {
            case .packet, .oversized:
                self?.assumeIsolated { $0.handle(event, connection: id) }
            case .malformed, .closed:
                let client = self
                loop.execute { client?.assumeIsolated { $0.handle(event, connection: id) } }
            }
        }
        earlyEvents = []
        let config = configuration
        let sslContext: NIOSSLContext?
        if let tls = config.tls {
            do {
                sslContext = try Self.makeSSLContext(tls)
            } catch {
                lifecycle.attemptFailed()
                throw MQTTError.tls("cannot load TLS settings: \(error)")
            }
        } else {
            sslContext = nil
        }
        let node = server
        let host = node.host
        var bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.milliseconds(config.connectTimeout.milliseconds))
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        let sni = Self.isIPAddress(host) ? nil : host
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: sni))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        MQTTChannelHandler(version: version, maximumPacketSize: config.maximumPacketSize, events: sink))
                }
            }
        #if os(Linux)
        bootstrap = bootstrap.channelOption(.tcpOption(Self.tcpUserTimeout), value: Self.userTimeoutMilliseconds(keepAlive: config.keepAlive))
        #endif
        let ch: any Channel
        do {
            ch = try await bootstrap.connect(host: node.host, port: node.port).get()
        } catch {
            lifecycle.attemptFailed()
            throw MQTTError.connectFailed("\(node): \(Self.plainWords(error))")
        }
        guard state == .connecting, lifecycle.isCurrent(id) else {
            try? await ch.close()
            throw MQTTError.shutdown
        }
        channel = ch
        inboundAliases = [:]
        // CONNECT, then wait for CONNACK within the connect timeout.
        var props = MQTTProperties()
        if version == .v5 {
            props.sessionExpiryInterval = config.sessionExpiry == 0 ? nil : config.sessionExpiry
            props.receiveMaximum = config.receiveMaximum
            props.maximumPacketSize = UInt32(config.maximumPacketSize)
            props.topicAliasMaximum = config.topicAliasMaximum == 0 ? nil : config.topicAliasMaximum
            props.userProperties = config.connectUserProperties
        }
        var will = config.will
        if version == .v3_1_1 { will?.properties = MQTTProperties() }
        let connect = ConnectPacket(clientIdentifier: config.clientIdentifier, cleanStart: config.cleanStart, keepAlive: config.keepAlive,
                                    username: config.username, password: config.password, will: will, properties: props)
        ch.writeAndFlush(MQTTPacket.connect(connect), promise: nil)
        let timeout = after(config.connectTimeout) { $0.connAckTimedOut(connection: id) }
        defer { timeout.cancel() }
        let ack: ConnAckPacket
        do {
            ack = try await withCheckedThrowingContinuation {
                connAckWaiter = $0
                // What came before the channel was ours (a failed TLS handshake): handled now.
                let early = earlyEvents
                earlyEvents = []
                for event in early { handle(event, connection: id) }
            }
        } catch {
            try? await ch.close()
            lifecycle.attemptFailed()
            throw error
        }
        guard ack.reasonCode == .success else {
            try? await ch.close()
            lifecycle.attemptFailed()
            throw MQTTError.connectionRefused(ack.reasonCode, reasonString: ack.properties.reasonString)
        }
        // The connection may have closed between the CONNACK and now (a packet right after the
        // CONNACK that we refused): it is not connected, and the supervisor tries again.
        guard state == .connecting, lifecycle.isCurrent(id), channel != nil else {
            lifecycle.attemptFailed()
            throw MQTTError.connectFailed("the connection closed right after CONNACK")
        }
        connected(ack, connection: id)
        return ack
    }

    func connAckTimedOut(connection id: Int) {
        guard lifecycle.isCurrent(id), let w = connAckWaiter else { return }
        connAckWaiter = nil
        w.resume(throwing: MQTTError.timeout("no CONNACK within \(configuration.connectTimeout)"))
    }

    func connected(_ ack: ConnAckPacket, connection id: Int) {
        let afterConnect = lifecycle.connected(now: .now)
        let p = ack.properties
        serverReceiveMaximum = Int(p.receiveMaximum ?? 65_535)
        serverMaximumPacketSize = p.maximumPacketSize.map { Int($0) } ?? Int.max
        serverMaximumQoS = p.maximumQoS.flatMap { MQTTQoS(rawValue: $0) } ?? .exactlyOnce
        serverRetainAvailable = (p.retainAvailable ?? 1) == 1
        if let assigned = p.assignedClientIdentifier { assignedClientIdentifier = assigned }
        effectiveKeepAlive = p.serverKeepAlive ?? configuration.keepAlive
        startKeepAlive(connection: id)

        if ack.sessionPresent {
            // Resend what the broker has not acknowledged, in order, with the same ids.
            for packet in session.resend() { write(packet) }
        } else {
            // The broker has no session: messages past PUBREC were delivered; the others go again as new.
            incomingQoS2.removeAll()
            for c in session.restartWithoutSession() { c.resume() }
            // Restore subscriptions.
            let subs = subscriptionOrder.compactMap { subscriptions[$0] }
            restoreIDs = []
            if !subs.isEmpty {
                for chunk in stride(from: 0, to: subs.count, by: 100).map({ Array(subs[$0..<min($0 + 100, subs.count)]) }) {
                    guard let pid = allocatePacketID() else {
                        logger.error("MQTT: every packet identifier is in use; subscriptions not restored")
                        break
                    }
                    restoreIDs.insert(pid)
                    write(.subscribe(SubscribePacket(packetIdentifier: pid, subscriptions: chunk)))
                }
            }
        }
        drainQueue()
        channel?.flush()
        logger.info("MQTT connected to \(server) (\(version), session present: \(ack.sessionPresent))")
        let event = MQTTEvent.connected(sessionPresent: ack.sessionPresent, version: version)
        if restoreIDs.isEmpty {
            eventSink.yield(event)
        } else {
            pendingConnectedEvent = event   // announced when the restored subscriptions are acknowledged
        }
        if afterConnect == .replace {
            // Settings changed while this connection was being made: replace it.
            logger.info("MQTT settings changed while connecting: reconnecting with them")
            replaceConnection()
        }
    }

    /// `TCP_USER_TIMEOUT`: data the broker's TCP has not acknowledged for this long closes the
    /// connection, as the keepalive would (1.5 x keepalive; 0, the system's default, without
    /// one).
    static let tcpUserTimeout = NIOBSDSocket.Option(rawValue: 18)   // TCP_USER_TIMEOUT (Linux's netinet/tcp.h)
    static func userTimeoutMilliseconds(keepAlive: UInt16) -> Int { Int(keepAlive) * 1500 }

    /// A broker's Server Keep Alive of 0 relieves us of sending within an interval, not of
    /// noticing a dead link: then our own keepalive times the pings (MQTT 5 lets a client ping
    /// at any time).
    func startKeepAlive(connection id: Int) {
        keepAliveTimer?.cancel()
        keepAliveTimer = nil
        let seconds = effectiveKeepAlive > 0 ? effectiveKeepAlive : configuration.keepAlive
        guard seconds > 0 else { keepAlive = nil; return }
        keepAlive = KeepAliveStateMachine(interval: .seconds(Int(seconds)), now: .now)
        keepAliveTick(connection: id)
    }

    /// Steps the keepalive state machine until it says wait, then comes back at that time.
    func keepAliveTick(connection id: Int) {
        while let action = keepAliveStep(connection: id) {
            guard case .wait(let until) = action else { continue }
            keepAliveTimer = after(max(.zero, until - .now)) { $0.keepAliveTick(connection: id) }
            return
        }
    }

    func keepAliveStep(connection id: Int) -> KeepAliveStateMachine.Action? {
        guard lifecycle.isCurrent(id), state == .connected, var ka = keepAlive else { return nil }
        let action = ka.next(now: .now)
        keepAlive = ka
        switch action {
        case .sendPing:
            channel?.writeAndFlush(MQTTPacket.pingreq, promise: nil)
        case .closeDead:
            logger.warning("MQTT broker did not answer PINGREQ in time: connection considered dead")
            lifecycle.closingOurselves(.keepaliveTimeout)
            channel?.close(promise: nil)
            return nil
        case .wait:
            break
        }
        return action
    }

    /// A connect failure as a user reads it (`connection refused`, `timed out after 10 s`,
    /// `cannot resolve host`), not NIO's internal description.
    static func plainWords(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError {
            if let failure = e.connectionErrors.first { return plainWords(failure.error) }
            if e.dnsAError != nil || e.dnsAAAAError != nil { return "cannot resolve host" }
            return "no address to connect to"
        }
        if let e = error as? IOError {
            return String(cString: strerror(e.errnoCode)).lowercased()
        }
        if case ChannelError.connectTimeout(let t) = error { return "timed out after \(Duration.nanoseconds(t.nanoseconds))" }
        return "\(error)"
    }
}
