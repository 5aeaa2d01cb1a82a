import DequeModule
import Logging
import NIOCore
import NIOPosix
import NIOSSL

// The MQTT module: our MQTT 3.1.1 and 5.0 client on SwiftNIO. ``MQTTPacketCodec`` encodes and
// decodes every packet of both versions (NIOCore only, tested byte by byte); ``MQTTClient`` keeps
// one session up: reconnect with backoff, a bounded offline queue, QoS 1/2 with resends, restored
// subscriptions, keepalive (``KeepAliveStateMachine``), TLS.

/// An MQTT 3.1.1 / 5.0 client on SwiftNIO.
///
/// - `connect()` connects once (and keeps reconnecting afterwards when ``MQTTConfiguration/reconnect``
///   is set); `start()` runs the reconnect loop from the first attempt without waiting.
/// - `publish` returns when the broker acknowledged the message (QoS 1: PUBACK, QoS 2: PUBCOMP) or,
///   for QoS 0, when it was written. While disconnected, messages wait in a bounded queue (oldest
///   dropped and counted) and go out in order after reconnect.
/// - Incoming messages arrive on ``messages``; connection changes on ``events``.
///
/// The actor's code is split by concern: this file holds its state and lifecycle (connect,
/// start, disconnect, reconfigure); `+Reconnect` the supervisor task; `+Connect` the channel,
/// CONNECT/CONNACK and the keepalive timer; `+Inbound` packets from the broker; `+Outbound` the
/// queue, the in-flight window, PUBLISH and subscriptions; `+TLS` the `mqtts://` settings. The
/// decisions are value-type state machines the actor feeds with the time and whose answers it
/// carries out: ``KeepAliveStateMachine``, ``MQTTPublishSession`` (outgoing messages) and
/// ``MQTTConnectionLifecycle`` (phase, close reasons, twin detection, backoff).
///
/// The actor runs on its connections' event loop (``unownedExecutor``): channel events reach it
/// as tasks on that loop, in order, and its timers are the loop's scheduled tasks. Callers that
/// publish often run their own code on that loop (``taskExecutor``); from the cooperative pool,
/// each call would wake the loop and then the pool again.
public actor MQTTClient {
    /// The settings of the next connect (``reconfigure(_:)`` replaces them).
    public internal(set) var configuration: MQTTConfiguration
    /// Every message received on any subscription, in arrival order.
    public nonisolated let messages: AsyncStream<MQTTMessage>
    /// Connection events.
    public nonisolated let events: AsyncStream<MQTTEvent>
    let messageSink: AsyncStream<MQTTMessage>.Continuation
    let eventSink: AsyncStream<MQTTEvent>.Continuation
    /// The loop the client's connections live on, and the actor's executor (see the overview).
    nonisolated let eventLoop: any EventLoop
    var logger: Logger

    /// Phase, current connection id, close reasons, twin detection, backoff (``MQTTConnectionLifecycle``).
    var lifecycle: MQTTConnectionLifecycle
    var state: MQTTConnectionLifecycle.Phase { lifecycle.phase }

    // Current connection.
    var channel: (any Channel)?
    var keepAliveTimer: Scheduled<Void>?
    var keepAlive: KeepAliveStateMachine?
    /// A flush is queued on the loop (``flushSoon()``).
    var flushScheduled = false
    /// Answers to packets read (PUBACK, PUBREC, PUBREL, PUBCOMP), in the order read, written by
    /// the flush that ``flushSoon()`` queued (``acknowledge(_:)``; emptied when the connection closes).
    var acksDue: [MQTTPacket] = []
    var connAckWaiter: CheckedContinuation<ConnAckPacket, any Error>?
    /// Events of the connection being made that came before `connect` returned its channel.
    var earlyEvents: [ChannelEvent] = []
    var disconnectWaiters: [CheckedContinuation<Void, Never>] = []
    /// Waiters for "nothing queued or in flight" (graceful disconnect), resumed by `notifyIfDrained`.
    var drainWaiters: [CheckedContinuation<Void, Never>] = []

    /// The protocol version in use (after a 5.0 -> 3.1.1 fallback, 3.1.1).
    public internal(set) var version: MQTTVersion
    /// Client identifier assigned by a 5.0 broker (when ours was empty).
    public internal(set) var assignedClientIdentifier: String?
    /// Keepalive in effect (the broker's server keep alive when it sent one).
    public internal(set) var effectiveKeepAlive: UInt16
    var serverReceiveMaximum = 65_535
    var serverMaximumPacketSize = Int.max
    var serverMaximumQoS: MQTTQoS = .exactlyOnce
    var serverRetainAvailable = true
    var inboundAliases: [UInt16: String] = [:]

    // Session state (kept across reconnects).
    /// Messages waiting and in flight, and the packet ids (``MQTTPublishSession``).
    var session: MQTTPublishSession
    var incomingQoS2: Set<UInt16> = []
    var subscriptions: [String: MQTTSubscription] = [:]
    var subscriptionOrder: [String] = []
    var requests: [UInt16: CheckedContinuation<SubAckPacket, any Error>] = [:]
    /// SUBSCRIBEs sent to restore subscriptions; `.connected` is announced once they are all answered.
    var restoreIDs: Set<UInt16> = []
    var pendingConnectedEvent: MQTTEvent?
    /// PUBLISH packets written since start, by QoS (0, 1, 2; a resend after a reconnect is not counted again).
    public internal(set) var publishedCount = [0, 0, 0]
    /// Messages dropped from the full queue since start.
    public internal(set) var droppedCount = 0
    /// Incoming messages dropped: larger than the maximum packet size (3.1.1), or the reader of
    /// ``messages`` too far behind.
    public internal(set) var droppedIncomingCount = 0
    var supervisor: Task<Void, Never>?
    /// Which node of ``servers`` the next attempt goes to.
    var serverIndex = 0
    /// The broker's nodes: the configured host first, then the alternates.
    var servers: [MQTTServer] { [MQTTServer(host: configuration.host, port: configuration.port)] + configuration.alternates }
    /// The node of the current (or next) connection.
    public var server: MQTTServer { let all = servers; return all[serverIndex % all.count] }
    /// Where returnable messages go when a connection closes (``onConnectionLost(handBack:)``).
    var handBack: (@Sendable ([MQTTMessage]) -> Void)?
    /// Takes incoming messages instead of ``messages`` (``onMessage(_:)``).
    var messageHandler: (@Sendable (MQTTMessage) -> Void)?

    public init(configuration: MQTTConfiguration, eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "gateway.mqtt")) {
        self.configuration = configuration
        self.eventLoop = eventLoopGroup.next()
        self.taskExecutor = EventLoopTaskExecutor(loop: eventLoop)
        self.logger = logger
        self.version = configuration.version
        self.effectiveKeepAlive = configuration.keepAlive
        self.session = MQTTPublishSession(queueLimit: configuration.queueLimit)
        self.lifecycle = MQTTConnectionLifecycle(policy: configuration.reconnect ?? .default)
        (messages, messageSink) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .bufferingOldest(max(1, configuration.incomingLimit)))
        (events, eventSink) = AsyncStream.makeStream(of: MQTTEvent.self, bufferingPolicy: .bufferingNewest(1000))
    }

    public nonisolated var unownedExecutor: UnownedSerialExecutor { eventLoop.executor.asUnownedSerialExecutor() }

    /// The client's loop as a task executor, for tasks that mostly feed the client (see the overview).
    public nonisolated let taskExecutor: any TaskExecutor

    /// Runs `body` on the actor after `delay`: a task scheduled on its loop (no task, no sleep).
    /// Cancel the returned handle when it is no longer wanted.
    @discardableResult
    func after(_ delay: Duration, _ body: @escaping @Sendable (isolated MQTTClient) -> Void) -> Scheduled<Void> {
        eventLoop.scheduleTask(in: TimeAmount(delay)) { [weak self] in
            // Scheduled tasks run on the loop, which is this actor's executor.
            self?.assumeIsolated { body($0) }
        }
    }

    deinit {
        messageSink.finish()
        eventSink.finish()
    }

    public var isConnected: Bool { state == .connected }
    /// QoS 1/2 publishes sent and not yet acknowledged.
    public var inFlightCount: Int { session.inFlight.count }
    /// Messages waiting to be sent.
    public var queuedCount: Int { session.queue.count }

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
        if state == .connected && !session.isIdle {
            let timer = after(timeout) { $0.notifyIfDrained(force: true) }
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
        serverIndex = 0
        session.queueLimit = new.queueLimit
        if lifecycle.settingsChanged(policy: new.reconnect ?? .default) { replaceConnection() }
    }

    /// Ends the session cleanly and connects again at once (with the current settings).
    func replaceConnection() {
        guard state == .connected, let channel else { return }
        lifecycle.closingOurselves(.reconfigured, reconnectAtOnce: true)
        write(.disconnect(ReasonPacket()), flush: true)
        channel.close(promise: nil)
    }

    /// Resumes graceful-disconnect waiters once nothing is queued or in flight (or on `force`:
    /// timeout, connection lost).
    func notifyIfDrained(force: Bool = false) {
        guard !drainWaiters.isEmpty, force || session.isIdle else { return }
        let waiters = drainWaiters
        drainWaiters.removeAll()
        for w in waiters { w.resume() }
    }

    func shutdown(sendDisconnect: Bool) async {
        guard let wasConnected = lifecycle.shutdown() else { return }
        supervisor?.cancel()
        supervisor = nil
        if let ch = channel {
            if sendDisconnect && wasConnected {
                try? await ch.writeAndFlush(MQTTPacket.disconnect(ReasonPacket())).get()
            }
            try? await ch.close()
        }
        connectionClosed(id: lifecycle.connectionID, reason: .shutdown)
        for c in session.removeAll() { c.resume(throwing: MQTTError.shutdown) }
        messageSink.finish()
        eventSink.finish()
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

/// Runs a task's nonisolated code on an event loop (see ``MQTTClient/taskExecutor``).
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }
}
