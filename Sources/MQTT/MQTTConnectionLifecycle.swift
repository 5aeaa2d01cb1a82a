/// The connection's lifecycle as a value: which connection is current and in what phase, why
/// it closed, whether the broker keeps dropping us for a twin with our client id, whether new
/// settings mean replacing the connection, and how long to wait before the next attempt.
/// ``MQTTClient`` feeds it events with the time and does what it returns; it holds no channel,
/// task or clock, so it is tested in-process like ``KeepAliveStateMachine`` and
/// ``MQTTPublishSession``.
struct MQTTConnectionLifecycle {
    enum Phase: Equatable { case idle, connecting, connected, shutdown }

    /// Drops by the broker this soon after CONNACK hint at a twin with our client id...
    static let quickDropWindow: Duration = .seconds(2)
    /// ...and this many in a row mean it: back off to the longest delay.
    static let quickDropsForTwin = 3

    private(set) var phase: Phase = .idle
    /// Counts attempts; events of an older connection are ignored.
    private(set) var connectionID = 0
    private(set) var quickDrops = 0
    private var backoff: Backoff
    private var connectedAt: ContinuousClock.Instant?
    private var closeReason: MQTTDisconnectReason?
    /// We are closing the connection (malformed packet, protocol error, dead keepalive, new
    /// settings): not a drop by the broker, so not a sign of a twin.
    private var closingOurselves = false
    private var takenOver = false
    private var reconnectAtOnce = false
    /// Counts settings changes; a connection made with an older count is replaced once it is up.
    private var settingsGeneration = 0
    private var connectionSettings = 0

    init(policy: MQTTReconnectPolicy) { backoff = Backoff(policy: policy) }

    func isCurrent(_ id: Int) -> Bool { id == connectionID }
    var isConnected: Bool { phase == .connected }
    var isShutDown: Bool { phase == .shutdown }

    /// A new attempt and its id; nil once shut down.
    mutating func beginAttempt() -> Int? {
        guard phase != .shutdown else { return nil }
        phase = .connecting
        connectionID += 1
        connectionSettings = settingsGeneration
        return connectionID
    }

    /// The attempt ended before CONNACK (refused, timed out, closed).
    mutating func attemptFailed() {
        if phase == .connecting { phase = .idle }
    }

    /// A refusal that retrying soon cannot fix (bad credentials, banned): the longest delays next.
    mutating func refusedForGood() { backoff.exhaust() }

    enum AfterConnect: Equatable { case keep, replace }

    /// CONNACK accepted. `.replace`: the settings changed while connecting, so connect again with them.
    mutating func connected(now: ContinuousClock.Instant) -> AfterConnect {
        phase = .connected
        takenOver = false
        connectedAt = now
        backoff.reset()
        return connectionSettings == settingsGeneration ? .keep : .replace
    }

    /// New settings; `true` when the current connection is to be replaced now (a connect under
    /// way is replaced once it is up).
    mutating func settingsChanged(policy: MQTTReconnectPolicy) -> Bool {
        settingsGeneration += 1
        backoff.policy = policy
        return phase == .connected
    }

    /// We close the connection; `reconnectAtOnce` skips the backoff (new settings).
    mutating func closingOurselves(_ reason: MQTTDisconnectReason, reconnectAtOnce: Bool = false) {
        closeReason = reason
        closingOurselves = true
        if reconnectAtOnce { self.reconnectAtOnce = true }
    }

    /// The broker sent DISCONNECT; the close that follows carries `reason`.
    mutating func brokerDisconnected(_ reason: MQTTDisconnectReason) {
        closeReason = reason
        if reason.isSessionTakenOver { takenOver = true }
    }

    struct Closed: Equatable {
        var wasConnected: Bool
        var reason: MQTTDisconnectReason
    }

    /// Connection `id` closed; `reason` from the channel (nil: the reason given before, or a plain
    /// close by the broker). Nil for an older connection.
    mutating func closed(_ id: Int, reason: MQTTDisconnectReason?, now: ContinuousClock.Instant) -> Closed? {
        guard id == connectionID else { return nil }
        let wasConnected = phase == .connected
        if phase != .shutdown { phase = .idle }
        if wasConnected {
            if !closingOurselves, let at = connectedAt, now - at < Self.quickDropWindow { quickDrops += 1 } else { quickDrops = 0 }
        }
        let closed = Closed(wasConnected: wasConnected, reason: reason ?? closeReason ?? .closedByBroker)
        closeReason = nil
        closingOurselves = false
        return closed
    }

    /// Shut down for good; returns whether it was connected (nil: it already was shut down).
    mutating func shutdown() -> Bool? {
        guard phase != .shutdown else { return nil }
        defer { phase = .shutdown }
        return phase == .connected
    }

    enum NextAttempt: Equatable {
        case stop
        case now
        /// After `delay`; `twin`: the broker keeps switching between us and a twin.
        case after(Duration, attempt: Int, twin: Bool)
    }

    /// When to try next, once disconnected; `random` in [0, 1) is the jitter.
    mutating func nextAttempt(random: Double) -> NextAttempt {
        if phase == .shutdown { return .stop }
        if reconnectAtOnce {
            reconnectAtOnce = false
            return .now
        }
        var delay = backoff.nextDelay(random: random)
        let twin = takenOver || quickDrops >= Self.quickDropsForTwin
        if twin { delay = backoff.policy.maximumDelay }
        return .after(delay, attempt: backoff.attempt, twin: twin)
    }

    /// Attempts since the last connect (1 for the first retry).
    var attempt: Int { backoff.attempt }
}
