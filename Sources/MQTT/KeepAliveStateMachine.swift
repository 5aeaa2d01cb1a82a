/// Keepalive timing as a pure state machine (driven by the connection with real time, by tests
/// with instants they choose).
///
/// A PINGREQ goes out when nothing was sent, or nothing was received, for `interval`; if no
/// packet has arrived `interval / 2` later, the connection is dead. So a broker that goes silent
/// (its host lost power, a cable, a NAT timeout: the link is half-open) is noticed within 1.5 x
/// keepalive of the last packet it sent, however busy the client is publishing: a client that
/// only counted what it sent would never ping while it publishes more often than `interval`.
struct KeepAliveStateMachine {
    enum Action: Equatable {
        case wait(until: ContinuousClock.Instant)
        case sendPing
        case closeDead
    }

    let interval: Duration
    let responseTimeout: Duration
    private(set) var lastSent: ContinuousClock.Instant
    private(set) var lastReceived: ContinuousClock.Instant
    private(set) var pingSentAt: ContinuousClock.Instant?

    init(interval: Duration, now: ContinuousClock.Instant) {
        self.interval = interval
        self.responseTimeout = interval / 2
        self.lastSent = now
        self.lastReceived = now
    }

    mutating func packetSent(at now: ContinuousClock.Instant) { lastSent = now }

    /// Any packet from the broker proves the link (and answers a ping).
    mutating func packetReceived(at now: ContinuousClock.Instant) {
        lastReceived = now
        pingSentAt = nil
    }

    mutating func next(now: ContinuousClock.Instant) -> Action {
        if let p = pingSentAt {
            return now >= p + responseTimeout ? .closeDead : .wait(until: p + responseTimeout)
        }
        let due = min(lastSent, lastReceived) + interval
        if now >= due {
            pingSentAt = now
            lastSent = now
            return .sendPing
        }
        return .wait(until: due)
    }
}

/// Reconnect delays: exponential with jitter, capped; `random` in [0, 1) is injected for tests.
struct Backoff {
    var policy: MQTTReconnectPolicy
    private(set) var attempt = 0

    init(policy: MQTTReconnectPolicy) { self.policy = policy }

    mutating func reset() { attempt = 0 }

    /// The next delays are the longest (a refusal that retrying soon cannot fix).
    mutating func exhaust() { attempt = max(attempt, 64) }

    mutating func nextDelay(random: Double) -> Duration {
        let base = min(Double(policy.maximumDelay.milliseconds),
                       Double(policy.initialDelay.milliseconds) * pow2(policy.multiplier, attempt))
        attempt += 1
        let jittered = base * (1 - policy.jitter) + base * policy.jitter * random
        return .milliseconds(Int64(jittered.rounded()))
    }

    private func pow2(_ m: Double, _ n: Int) -> Double {
        var r = 1.0
        for _ in 0..<min(n, 64) { r *= m }
        return r
    }
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
