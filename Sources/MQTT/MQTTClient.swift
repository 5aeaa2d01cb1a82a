import DequeModule
import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// An MQTT 3.1.1 / 5.0 client on SwiftNIO.
///
/// - `connect()` connects once (and keeps reconnecting afterwards when ``MQTTConfiguration/reconnect``
///   is set); `start()` runs the reconnect loop from the first attempt without waiting.
/// - `publish` returns when the broker acknowledged the message (QoS 1: PUBACK, QoS 2: PUBCOMP) or,
///   for QoS 0, when it was written. While disconnected, messages wait in a bounded queue (oldest
///   dropped and counted) and go out in order after reconnect.
/// - Incoming messages arrive on ``messages``; connection changes on ``events``.
public actor MQTTClient {
    /// The settings of the next connect (``reconfigure(_:)`` replaces them).
    public private(set) var configuration: MQTTConfiguration
    /// Every message received on any subscription, in arrival order.
    public nonisolated let messages: AsyncStream<MQTTMessage>
    /// Connection events.
    public nonisolated let events: AsyncStream<MQTTEvent>
    private let messageSink: AsyncStream<MQTTMessage>.Continuation
    private let eventSink: AsyncStream<MQTTEvent>.Continuation
    private let group: any EventLoopGroup
    private var logger: Logger

    private enum State: Equatable { case idle, connecting, connected, shutdown }
    private var state: State = .idle

    // Current connection.
    private var channel: (any Channel)?
    private var connectionID = 0
    private var readerTask: Task<Void, Never>?
    private var keepAliveTask: Task<Void, Never>?
    private var keepAlive: KeepAliveStateMachine?
    private var connAckWaiter: CheckedContinuation<ConnAckPacket, any Error>?
    private var disconnectWaiters: [CheckedContinuation<Void, Never>] = []
    /// Waiters for "nothing queued or in flight" (graceful disconnect), resumed by `notifyIfDrained`.
    private var drainWaiters: [CheckedContinuation<Void, Never>] = []
    private var lastCloseReason = ""
    private var takenOverByReason = false
    private var connectedAt: ContinuousClock.Instant?
    private var quickDrops = 0
    /// The current connection is being closed by us (malformed packet, protocol error, dead
    /// keepalive): not a drop by the broker, so not a sign of a twin with our client id.
    private var closingOurselves = false

    /// The protocol version in use (after a 5.0 -> 3.1.1 fallback, 3.1.1).
    public private(set) var version: MQTTVersion
    /// Client identifier assigned by a 5.0 broker (when ours was empty).
    public private(set) var assignedClientIdentifier: String?
    /// Keepalive in effect (the broker's server keep alive when it sent one).
    public private(set) var effectiveKeepAlive: UInt16
    private var serverReceiveMaximum = 65_535
    private var serverMaximumPacketSize = Int.max
    private var serverMaximumQoS: QoS = .exactlyOnce
    private var serverRetainAvailable = true
    private var inboundAliases: [UInt16: String] = [:]

    // Session state (kept across reconnects).
    private struct Outbound {
        enum Stage { case awaitingPubAck, awaitingPubRec, awaitingPubComp }
        var packet: PublishPacket
        var stage: Stage
        var continuation: PublishCompletion?
        var sentAt: ContinuousClock.Instant
    }
    private struct Pending {
        var packet: PublishPacket
        var continuation: PublishCompletion?
    }
    private var outbound: [UInt16: Outbound] = [:]
    private var outboundOrder: Deque<UInt16> = []
    private var queue: Deque<Pending> = []
    /// The first `aheadCount` messages of `queue` were put ahead of the rest (``publish(to:payload:qos:retain:properties:ahead:)``).
    private var aheadCount = 0
    /// The most messages `queue` held since it was last empty: a burst (every value at start,
    /// a backlog after a reconnect) leaves its storage behind, given back once drained.
    private var queuePeak = 0
    private var incomingQoS2: Set<UInt16> = []
    private var nextPacketID: UInt16 = 1
    private var subscriptions: [String: Subscription] = [:]
    private var subscriptionOrder: [String] = []
    private var requests: [UInt16: CheckedContinuation<SubAckPacket, any Error>] = [:]
    /// SUBSCRIBEs sent to restore subscriptions; `.connected` is announced once they are all answered.
    private var restoreIDs: Set<UInt16> = []
    private var pendingConnectedEvent: MQTTEvent?
    /// PUBLISH packets written since start, by QoS (0, 1, 2; a resend after a reconnect is not counted again).
    public private(set) var publishedCount = [0, 0, 0]
    /// Messages dropped from the full queue since start.
    public private(set) var droppedCount = 0
    /// Incoming messages dropped: larger than the maximum packet size (3.1.1), or the reader of
    /// ``messages`` too far behind.
    public private(set) var droppedIncomingCount = 0
    private var supervisor: Task<Void, Never>?
    /// The connection was closed to connect with new settings: the next attempt goes at once.
    private var reconnectAtOnce = false
    /// Counts ``reconfigure(_:)`` calls; a connection made with an older count is replaced.
    private var configurationGeneration = 0
    private var connectionGeneration = 0

    public init(configuration: MQTTConfiguration, eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "gateway.mqtt")) {
        self.configuration = configuration
        self.group = eventLoopGroup
        self.logger = logger
        self.version = configuration.version
        self.effectiveKeepAlive = configuration.keepAlive
        (messages, messageSink) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .bufferingOldest(max(1, configuration.incomingLimit)))
        (events, eventSink) = AsyncStream.makeStream(of: MQTTEvent.self, bufferingPolicy: .bufferingNewest(1000))
    }

    deinit {
        messageSink.finish()
        eventSink.finish()
    }

    public var isConnected: Bool { state == .connected }
    /// QoS 1/2 publishes sent and not yet acknowledged.
    public var inFlightCount: Int { outbound.count }
    /// Messages waiting to be sent.
    public var queuedCount: Int { queue.count }

    // MARK: - Lifecycle

    /// Connects once; throws the reason when it fails (e.g. ``MQTTError/connectionRefused(_:reasonString:)``).
    /// After a successful connect the client reconnects by itself when the connection drops.
    @discardableResult
    public func connect() async throws -> ConnAckPacket {
        guard state == .idle else { throw MQTTError.invalidArgument("connect() called while \(state)") }
        let ack = try await establish()
        startSupervisor(connected: true)
        return ack
    }

    /// Starts connecting in the background and keeps the connection up until ``disconnect(timeout:)``.
    public func start() {
        guard state == .idle, supervisor == nil else { return }
        startSupervisor(connected: false)
    }

    /// Graceful: waits (at most `timeout`) for queued and in-flight messages to be acknowledged,
    /// sends DISCONNECT (the broker discards the will) and closes. No reconnect afterwards.
    public func disconnect(timeout: Duration = .seconds(2)) async {
        if state == .connected && (!outbound.isEmpty || !queue.isEmpty) {
            let timer = Task { [weak self] in
                try? await Task.sleep(for: timeout)
                await self?.notifyIfDrained(force: true)
            }
            await withCheckedContinuation { drainWaiters.append($0) }
            timer.cancel()
        }
        await shutdown(sendDisconnect: true)
    }

    /// Closes the socket without DISCONNECT (the broker publishes the will). No reconnect afterwards.
    public func closeAbruptly() async {
        await shutdown(sendDisconnect: false)
    }

    /// New settings (a configuration reload), used from the next connect on. When connected, the
    /// session ends with a normal DISCONNECT (the broker discards the will, so nobody sees an
    /// `offline` blink) and the client connects again at once with the new settings; queued and
    /// unacknowledged messages go out on the new connection as after any reconnect. The streams'
    /// sizes (`incomingLimit`) stay as they were made.
    public func reconfigure(_ new: MQTTConfiguration) {
        configuration = new   // version and keepalive follow at the next connect
        configurationGeneration += 1
        guard state == .connected else { return }   // a connect under way is replaced once it is up
        replaceConnection()
    }

    /// Ends the session cleanly and connects again at once (with the current settings).
    private func replaceConnection() {
        guard state == .connected, let channel else { return }
        reconnectAtOnce = true
        lastCloseReason = "reconnecting with a new configuration"
        closingOurselves = true
        write(.disconnect(ReasonPacket()), flush: true)
        channel.close(promise: nil)
    }

    /// Resumes graceful-disconnect waiters once nothing is queued or in flight (or on `force`:
    /// timeout, connection lost).
    private func notifyIfDrained(force: Bool = false) {
        guard !drainWaiters.isEmpty, force || (outbound.isEmpty && queue.isEmpty) else { return }
        let waiters = drainWaiters
        drainWaiters.removeAll()
        for w in waiters { w.resume() }
    }

    private func shutdown(sendDisconnect: Bool) async {
        guard state != .shutdown else { return }
        let wasConnected = state == .connected
        state = .shutdown
        supervisor?.cancel()
        supervisor = nil
        if let ch = channel {
            if sendDisconnect && wasConnected {
                try? await ch.writeAndFlush(MQTTPacket.disconnect(ReasonPacket())).get()
            }
            try? await ch.close()
        }
        connectionClosed(id: connectionID, reason: "client shut down")
        for p in queue { p.continuation?.resume(throwing: MQTTError.shutdown) }
        queue.removeAll()
        aheadCount = 0
        for id in outboundOrder { outbound[id]?.continuation?.resume(throwing: MQTTError.shutdown) }
        outbound.removeAll()
        outboundOrder.removeAll()
        messageSink.finish()
        eventSink.finish()
    }

    private func startSupervisor(connected: Bool) {
        supervisor = Task { await self.supervise(connected: connected) }
    }

    private func supervise(connected initiallyConnected: Bool) async {
        var connected = initiallyConnected
        var backoff = Backoff(policy: configuration.reconnect ?? .default)
        var firstAttempt = !initiallyConnected
        while state != .shutdown && !Task.isCancelled {
            if connected {
                await waitUntilDisconnected()
                connected = false
                if state == .shutdown || configuration.reconnect == nil { break }
            }
            if reconnectAtOnce {
                reconnectAtOnce = false
            } else if !firstAttempt {
                var delay = backoff.nextDelay(random: Double.random(in: 0..<1))
                if takenOverByReason || quickDrops >= 3 {
                    delay = configuration.reconnect?.maximumDelay ?? delay
                    eventSink.yield(.sessionTakenOver)
                    logger.error("another client is using client id '\(configuration.clientIdentifier)' and the broker keeps switching between us: backing off \(delay) before reconnecting")
                }
                eventSink.yield(.reconnecting(attempt: backoff.attempt, delay: delay))
                try? await Task.sleep(for: delay)
                if state == .shutdown || Task.isCancelled { break }
            }
            firstAttempt = false
            do {
                _ = try await establish()
                backoff.reset()
                connected = true
            } catch let error as MQTTError where error.isPermanent {
                // Bad credentials, banned, id refused: retrying at once cannot help and would
                // hammer the broker. Said plainly each time; then the longest backoff.
                logger.error("MQTT connect to \(configuration.host):\(configuration.port) refused: \(error); this needs a configuration change (retrying every \(configuration.reconnect?.maximumDelay ?? .seconds(30)))")
                backoff.exhaust()
            } catch {
                if backoff.attempt <= 1 || backoff.attempt % 20 == 0 {
                    logger.warning("MQTT connect to \(configuration.host):\(configuration.port) failed: \(error); retrying")
                }
            }
        }
    }

    private func waitUntilDisconnected() async {
        guard state == .connected else { return }
        await withCheckedContinuation { disconnectWaiters.append($0) }
    }

    // MARK: - Connecting

    private func establish() async throws -> ConnAckPacket {
        do {
            return try await establish(version: configuration.version)
        } catch MQTTError.connectionRefused(.unsupportedProtocolVersion, _) where configuration.version == .v5 && configuration.fallbackToV3 {
            logger.notice("broker refused MQTT 5.0; falling back to 3.1.1")
            return try await establish(version: .v3_1_1)
        }
    }

    private func establish(version: MQTTVersion) async throws -> ConnAckPacket {
        guard state != .shutdown else { throw MQTTError.shutdown }
        state = .connecting
        connectionID += 1
        let id = connectionID
        self.version = version
        let (stream, sink) = AsyncStream.makeStream(of: ChannelEvent.self)
        let config = configuration
        connectionGeneration = configurationGeneration
        let sslContext: NIOSSLContext?
        if let tls = config.tls {
            do {
                sslContext = try Self.makeSSLContext(tls)
            } catch {
                state = .idle
                throw MQTTError.tls("cannot load TLS settings: \(error)")
            }
        } else {
            sslContext = nil
        }
        let host = config.host
        let bootstrap = ClientBootstrap(group: group)
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
        let ch: any Channel
        do {
            ch = try await bootstrap.connect(host: config.host, port: config.port).get()
        } catch {
            if state == .connecting { state = .idle }
            throw MQTTError.connectFailed("\(config.host):\(config.port): \(error)")
        }
        guard state == .connecting, connectionID == id else {
            try? await ch.close()
            throw MQTTError.shutdown
        }
        channel = ch
        inboundAliases = [:]
        readerTask = Task { [weak self] in
            for await event in stream {
                await self?.handle(event, connection: id)
            }
        }
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
        let timeout = Task { [weak self] in
            try? await Task.sleep(for: config.connectTimeout)
            await self?.connAckTimedOut(connection: id)
        }
        defer { timeout.cancel() }
        let ack: ConnAckPacket
        do {
            ack = try await withCheckedThrowingContinuation { connAckWaiter = $0 }
        } catch {
            try? await ch.close()
            if state == .connecting { state = .idle }
            throw error
        }
        guard ack.reasonCode == .success else {
            try? await ch.close()
            if state == .connecting { state = .idle }
            throw MQTTError.connectionRefused(ack.reasonCode, reasonString: ack.properties.reasonString)
        }
        // The connection may have closed between the CONNACK and now (a packet right after the
        // CONNACK that we refused): it is not connected, and the supervisor tries again.
        guard state == .connecting, connectionID == id, channel != nil else {
            if state == .connecting { state = .idle }
            throw MQTTError.connectFailed("the connection closed right after CONNACK")
        }
        connected(ack, connection: id)
        return ack
    }

    private func connAckTimedOut(connection id: Int) {
        guard id == connectionID, let w = connAckWaiter else { return }
        connAckWaiter = nil
        w.resume(throwing: MQTTError.timeout("no CONNACK within \(configuration.connectTimeout)"))
    }

    private func connected(_ ack: ConnAckPacket, connection id: Int) {
        state = .connected
        takenOverByReason = false
        connectedAt = .now
        let p = ack.properties
        serverReceiveMaximum = Int(p.receiveMaximum ?? 65_535)
        serverMaximumPacketSize = p.maximumPacketSize.map { Int($0) } ?? Int.max
        serverMaximumQoS = p.maximumQoS.flatMap { QoS(rawValue: $0) } ?? .exactlyOnce
        serverRetainAvailable = (p.retainAvailable ?? 1) == 1
        if let assigned = p.assignedClientIdentifier { assignedClientIdentifier = assigned }
        effectiveKeepAlive = p.serverKeepAlive ?? configuration.keepAlive
        startKeepAlive(connection: id)

        if ack.sessionPresent {
            // Resend what the broker has not acknowledged, in order, with the same ids.
            for pid in outboundOrder {
                guard let o = outbound[pid] else { continue }
                switch o.stage {
                case .awaitingPubAck, .awaitingPubRec:
                    var again = o.packet
                    again.dup = true
                    write(.publish(again))
                case .awaitingPubComp:
                    write(.pubrel(AckPacket(packetIdentifier: pid)))
                }
            }
        } else {
            // The broker has no session: messages past PUBREC were delivered; the others go again as new.
            incomingQoS2.removeAll()
            var again: [Pending] = []
            for pid in outboundOrder {
                guard let o = outbound[pid] else { continue }
                if o.stage == .awaitingPubComp {
                    o.continuation?.resume()
                } else {
                    var packet = o.packet
                    packet.dup = false
                    packet.packetIdentifier = nil
                    again.append(Pending(packet: packet, continuation: o.continuation))
                }
            }
            outbound.removeAll()
            outboundOrder.removeAll()
            queue.insert(contentsOf: again, at: aheadCount)
            queuePeak = max(queuePeak, queue.count)
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
        logger.info("MQTT connected to \(configuration.host):\(configuration.port) (\(version), session present: \(ack.sessionPresent))")
        let event = MQTTEvent.connected(sessionPresent: ack.sessionPresent, version: version)
        if restoreIDs.isEmpty {
            eventSink.yield(event)
        } else {
            pendingConnectedEvent = event   // announced when the restored subscriptions are acknowledged
        }
        if connectionGeneration != configurationGeneration {
            // Settings changed while this connection was being made: replace it.
            logger.info("MQTT settings changed while connecting: reconnecting with them")
            replaceConnection()
        }
    }

    private func startKeepAlive(connection id: Int) {
        keepAliveTask?.cancel()
        guard effectiveKeepAlive > 0 else { keepAlive = nil; return }
        keepAlive = KeepAliveStateMachine(interval: .seconds(Int(effectiveKeepAlive)), now: .now)
        keepAliveTask = Task { [weak self] in
            while !Task.isCancelled {
                guard let action = await self?.keepAliveStep(connection: id) else { return }
                switch action {
                case .wait(let until):
                    try? await Task.sleep(until: until, clock: .continuous)
                case .sendPing, .closeDead:
                    continue
                }
            }
        }
    }

    private func keepAliveStep(connection id: Int) -> KeepAliveStateMachine.Action? {
        guard id == connectionID, state == .connected, var ka = keepAlive else { return nil }
        let action = ka.next(now: .now)
        keepAlive = ka
        switch action {
        case .sendPing:
            channel?.writeAndFlush(MQTTPacket.pingreq, promise: nil)
        case .closeDead:
            logger.warning("MQTT broker did not answer PINGREQ in time: connection considered dead")
            lastCloseReason = "keepalive timeout (no PINGRESP)"
            closingOurselves = true
            channel?.close(promise: nil)
            return nil
        case .wait:
            break
        }
        return action
    }

    // MARK: - Inbound

    private func handle(_ event: ChannelEvent, connection id: Int) {
        guard id == connectionID else { return }
        switch event {
        case .packet(let packet):
            handle(packet)
        case .oversized(let head):
            droppedIncomingCount += 1
            logger.warning("MQTT: dropped an incoming message of \(head.size) bytes on \(head.topic.debugDescription)\(head.retain ? " (retained)" : ""): larger than the maximum packet size of \(configuration.maximumPacketSize) bytes (\(droppedIncomingCount) dropped so far)")
            keepAlive?.pingResponseReceived()
            switch head.qos {
            case .atMostOnce: break
            case .atLeastOnce: write(.puback(AckPacket(packetIdentifier: head.packetIdentifier ?? 0)), flush: true)
            case .exactlyOnce:
                // Acknowledged as received; its PUBREL is answered as for any QoS 2 message.
                incomingQoS2.insert(head.packetIdentifier ?? 0)
                write(.pubrec(AckPacket(packetIdentifier: head.packetIdentifier ?? 0)), flush: true)
            }
        case .malformed(let error):
            logger.error("MQTT: malformed packet from the broker, closing: \(error)")
            lastCloseReason = "malformed packet: \(error)"
            closingOurselves = true
            if let w = connAckWaiter {
                connAckWaiter = nil
                w.resume(throwing: MQTTError.protocolError("\(error)"))
            }
        case .closed(let reason, let tls):
            if let w = connAckWaiter {
                connAckWaiter = nil
                let r = reason ?? "connection closed by the broker before CONNACK"
                w.resume(throwing: tls ? MQTTError.tls(r) : MQTTError.connectFailed(r))
            }
            connectionClosed(id: id, reason: reason ?? (lastCloseReason.isEmpty ? "closed by the broker" : lastCloseReason))
        }
    }

    private func connectionClosed(id: Int, reason: String) {
        guard id == connectionID, channel != nil || state == .connected || state == .shutdown else { return }
        let wasConnected = state == .connected
        channel = nil
        keepAliveTask?.cancel()
        keepAliveTask = nil
        keepAlive = nil
        if state != .shutdown { state = .idle }
        for (_, r) in requests { r.resume(throwing: MQTTError.connectionLost(reason)) }
        requests.removeAll()
        restoreIDs.removeAll()
        pendingConnectedEvent = nil
        if wasConnected {
            // Only the broker dropping us right after a connect hints at a twin with our client id.
            if !closingOurselves, let at = connectedAt, ContinuousClock.now - at < .seconds(2) { quickDrops += 1 } else { quickDrops = 0 }
            logger.warning("MQTT connection lost: \(reason)")
            eventSink.yield(.disconnected(reason: reason))
        }
        lastCloseReason = ""
        closingOurselves = false
        let waiters = disconnectWaiters
        disconnectWaiters.removeAll()
        for w in waiters { w.resume() }
        notifyIfDrained(force: true)
    }

    private func handle(_ packet: MQTTPacket) {
        keepAlive?.pingResponseReceived()   // any packet proves the link; PINGRESP clears the ping
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
                write(.puback(AckPacket(packetIdentifier: p.packetIdentifier ?? 0)), flush: true)
            case .exactlyOnce:
                let pid = p.packetIdentifier ?? 0
                if !incomingQoS2.contains(pid) {
                    incomingQoS2.insert(pid)
                    deliver(message)
                }
                write(.pubrec(AckPacket(packetIdentifier: pid)), flush: true)
            }
        case .pubrel(let a):
            incomingQoS2.remove(a.packetIdentifier)
            write(.pubcomp(AckPacket(packetIdentifier: a.packetIdentifier)), flush: true)
        case .puback(let a):
            guard let o = outbound[a.packetIdentifier], o.stage == .awaitingPubAck else {
                logger.debug("MQTT: ignoring PUBACK for unknown packet id \(a.packetIdentifier)")
                return
            }
            complete(a.packetIdentifier, a)
        case .pubrec(let a):
            guard var o = outbound[a.packetIdentifier], o.stage != .awaitingPubAck else {
                logger.debug("MQTT: ignoring PUBREC for unknown packet id \(a.packetIdentifier)")
                return
            }
            if a.reasonCode.isFailure { return complete(a.packetIdentifier, a) }
            o.stage = .awaitingPubComp
            outbound[a.packetIdentifier] = o
            write(.pubrel(AckPacket(packetIdentifier: a.packetIdentifier)), flush: true)
        case .pubcomp(let a):
            guard let o = outbound[a.packetIdentifier], o.stage == .awaitingPubComp else {
                logger.debug("MQTT: ignoring PUBCOMP for unknown packet id \(a.packetIdentifier)")
                return
            }
            complete(a.packetIdentifier, a)
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
            lastCloseReason = "broker sent DISCONNECT: \(d.reasonCode)\(d.properties.reasonString.map { " - \($0)" } ?? "")"
            if d.reasonCode == .sessionTakenOver { takenOverByReason = true }
            logger.warning("MQTT: \(lastCloseReason)")
        case .auth:
            protocolError("AUTH is not supported by this client")
        case .connect, .subscribe, .unsubscribe, .pingreq:
            protocolError("the broker sent a client packet (\(packet.name))")
        }
    }

    /// Hands a message to the reader of ``messages``; when it is ``MQTTConfiguration/incomingLimit``
    /// messages behind, the message is dropped and counted (logged at the first and every 1000th).
    private func deliver(_ message: MQTTMessage) {
        if case .dropped = messageSink.yield(message) {
            droppedIncomingCount += 1
            if droppedIncomingCount == 1 || droppedIncomingCount % 1000 == 0 {
                logger.warning("MQTT: the reader is \(configuration.incomingLimit) messages behind: dropped an incoming message on \(message.topic.debugDescription) (\(droppedIncomingCount) dropped so far)")
            }
        }
    }

    private func complete(_ pid: UInt16, _ ack: AckPacket) {
        guard let o = outbound.removeValue(forKey: pid) else { return }
        if let i = outboundOrder.firstIndex(of: pid) { outboundOrder.remove(at: i) }
        configuration.onAcknowledged?(.now - o.sentAt)
        if ack.reasonCode.isFailure {
            o.continuation?.resume(throwing: MQTTError.publishRefused(ack.reasonCode, reasonString: ack.properties.reasonString))
        } else {
            o.continuation?.resume()
        }
        drainQueue()
        channel?.flush()
        notifyIfDrained()
    }

    private func protocolError(_ text: String, code: ReasonCode = .protocolError) {
        logger.error("MQTT protocol error from the broker: \(text)")
        lastCloseReason = "protocol error: \(text)"
        closingOurselves = true
        if version == .v5 { write(.disconnect(ReasonPacket(reasonCode: code)), flush: true) }
        channel?.close(promise: nil)
    }

    // MARK: - Outbound

    private func write(_ packet: MQTTPacket, flush: Bool = false) {
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
    private func allocatePacketID() -> UInt16? {
        for _ in 0..<65_535 {
            let id = nextPacketID
            nextPacketID = nextPacketID == 65_535 ? 1 : nextPacketID + 1
            if outbound[id] == nil && requests[id] == nil && !restoreIDs.contains(id) { return id }
        }
        return nil
    }

    private var inFlightWindow: Int { max(1, min(serverReceiveMaximum, configuration.maximumInFlight, 65_000)) }

    /// Sends queued messages while connected and the in-flight window has room.
    private func drainQueue() {
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
    private func send(_ pending: Pending, packetIdentifier: UInt16?) {
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
    public func publish(to topic: String, payload: [UInt8], qos: QoS = .atMostOnce, retain: Bool = false,
                        properties: MQTTProperties = .init(), ahead: Bool = false) async throws {
        let packet = try makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            enqueue(Pending(packet: packet, continuation: .waiter(cont)), ahead: ahead)
        }
    }

    /// Publishes without waiting for the acknowledgement (fire and forget, still queued and resent).
    public func enqueue(to topic: String, payload: [UInt8], qos: QoS = .atMostOnce, retain: Bool = false,
                        properties: MQTTProperties = .init()) throws {
        let packet = try makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
        enqueue(Pending(packet: packet, continuation: nil))
    }

    /// Publishes each message in order without waiting; `completed` is called once per message
    /// with its outcome (acknowledged, or why not), in no set order. For a sender that keeps its
    /// own copy until the broker has it (the outbox).
    public func enqueue(_ messages: [(topic: String, payload: [UInt8], retain: Bool, properties: MQTTProperties)], qos: QoS,
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
    public func enqueueIfKeepingUp(to topic: String, payload: [UInt8], qos: QoS, retain: Bool, properties: MQTTProperties = .init(),
                                   maximumQueued: Int) -> Bool {
        guard state == .connected, queue.count < maximumQueued,
              let packet = try? makePublish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties) else { return false }
        enqueue(Pending(packet: packet, continuation: nil))
        return true
    }

    public func publish(to topic: String, string: String, qos: QoS = .atMostOnce, retain: Bool = false,
                        properties: MQTTProperties = .init()) async throws {
        try await publish(to: topic, payload: Array(string.utf8), qos: qos, retain: retain, properties: properties)
    }

    private func makePublish(topic: String, payload: [UInt8], qos: QoS, retain: Bool, properties: MQTTProperties) throws -> PublishPacket {
        guard state != .shutdown else { throw MQTTError.shutdown }
        guard Topic.isValidName(topic) else { throw MQTTError.invalidArgument("topic '\(topic)' is not a valid topic name") }
        guard properties.topicAlias == nil, properties.subscriptionIdentifiers.isEmpty else {
            throw MQTTError.invalidArgument("topic alias and subscription identifiers are not for the client to send")
        }
        if let rt = properties.responseTopic, !Topic.isValidName(rt) { throw MQTTError.invalidArgument("response topic '\(rt)' is not valid") }
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

    private func enqueue(_ pending: Pending, ahead: Bool = false) {
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
    public func subscribe(_ subscriptions: [Subscription], timeout: Duration = .seconds(10)) async throws -> [ReasonCode] {
        guard !subscriptions.isEmpty else { throw MQTTError.invalidArgument("nothing to subscribe to") }
        for s in subscriptions where !Topic.isValidFilter(s.filter) {
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
    public func unsubscribe(_ filters: [String], timeout: Duration = .seconds(10)) async throws -> [ReasonCode] {
        guard !filters.isEmpty else { throw MQTTError.invalidArgument("nothing to unsubscribe from") }
        for f in filters where !Topic.isValidFilter(f) { throw MQTTError.invalidArgument("topic filter '\(f)' is not valid") }
        for f in filters { subscriptions[f] = nil }
        subscriptionOrder.removeAll { filters.contains($0) }
        guard state == .connected else { throw MQTTError.notConnected }
        guard let pid = allocatePacketID() else { throw MQTTError.invalidArgument("every packet identifier is in use: too many requests at once") }
        return try await request(pid, .unsubscribe(UnsubscribePacket(packetIdentifier: pid, filters: filters)), timeout: timeout).reasonCodes
    }

    private func request(_ pid: UInt16, _ packet: MQTTPacket, timeout: Duration) async throws -> SubAckPacket {
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

    private func requestTimedOut(_ pid: UInt16) {
        requests.removeValue(forKey: pid)?.resume(throwing: MQTTError.timeout("no answer to packet id \(pid)"))
    }

    // MARK: - TLS

    static func makeSSLContext(_ tls: TLSOptions) throws -> NIOSSLContext {
        var c = TLSConfiguration.makeClientConfiguration()
        c.minimumTLSVersion = .tlsv12
        if let ca = tls.caFile { c.trustRoots = .file(ca) }
        if let cert = tls.certificateFile {
            c.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
        }
        if let key = tls.keyFile { c.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)) }
        if !tls.verifyHostname { c.certificateVerification = .noHostnameVerification }
        return try NIOSSLContext(configuration: c)
    }

    static func isIPAddress(_ host: String) -> Bool {
        host.contains(":") || host.split(separator: ".").count == 4 && host.split(separator: ".").allSatisfy { UInt8($0) != nil }
    }
}

/// How the sender of a queued message learns its fate: an awaiting ``MQTTClient/publish(to:payload:qos:retain:properties:ahead:)``
/// or a callback (``MQTTClient/enqueue(_:qos:completed:)``).
enum PublishCompletion: Sendable {
    case waiter(CheckedContinuation<Void, any Error>)
    case callback(@Sendable (Result<Void, any Error>) -> Void)

    func resume() {
        switch self {
        case .waiter(let c): c.resume()
        case .callback(let f): f(.success(()))
        }
    }

    func resume(throwing error: any Error) {
        switch self {
        case .waiter(let c): c.resume(throwing: error)
        case .callback(let f): f(.failure(error))
        }
    }
}
