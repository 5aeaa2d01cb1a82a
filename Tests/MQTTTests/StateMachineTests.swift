import Testing
@testable import MQTT

@Suite("Keepalive and backoff state machines")
struct StateMachineTests {
    @Test("PINGREQ after an idle interval; dead if no packet arrives within half of it (1.5 x keepalive in all)")
    func keepAlive() {
        let t0 = ContinuousClock.now
        var ka = KeepAliveStateMachine(interval: .seconds(10), now: t0)
        #expect(ka.next(now: t0 + .seconds(5)) == .wait(until: t0 + .seconds(10)))
        ka.packetSent(at: t0 + .seconds(6))
        ka.packetReceived(at: t0 + .seconds(6))
        #expect(ka.next(now: t0 + .seconds(10)) == .wait(until: t0 + .seconds(16)))
        #expect(ka.next(now: t0 + .seconds(16)) == .sendPing)
        #expect(ka.next(now: t0 + .seconds(18)) == .wait(until: t0 + .seconds(21)))
        ka.packetReceived(at: t0 + .seconds(18))   // PINGRESP
        #expect(ka.next(now: t0 + .seconds(18)) == .wait(until: t0 + .seconds(26)))
        #expect(ka.next(now: t0 + .seconds(26)) == .sendPing)
        #expect(ka.next(now: t0 + .seconds(31)) == .closeDead)
    }

    @Test("a client publishing every 100 ms to a broker gone silent still pings after keepalive and gives up at 1.5 x keepalive")
    func keepAliveWhileBusy() {
        let t0 = ContinuousClock.now
        var ka = KeepAliveStateMachine(interval: .seconds(10), now: t0)
        ka.packetReceived(at: t0 + .seconds(1))   // the last PUBACK before the link froze
        var at = t0 + .seconds(1)
        var ping: ContinuousClock.Instant?, dead: ContinuousClock.Instant?
        while at < t0 + .seconds(30), dead == nil {
            at += .milliseconds(100)
            ka.packetSent(at: at)   // a PUBLISH, never acknowledged
            switch ka.next(now: at) {
            case .sendPing: ping = ping ?? at
            case .closeDead: dead = at
            case .wait: break
            }
        }
        #expect(ping == t0 + .seconds(11), "pinged 10 s after the last packet received")
        #expect(dead == t0 + .seconds(16), "dead 1.5 x keepalive after the last packet received")
    }

    @Test("backoff grows exponentially, with jitter, up to the cap, and resets")
    func backoff() {
        var b = Backoff(policy: MQTTReconnectPolicy(initialDelay: .milliseconds(500), maximumDelay: .seconds(8), multiplier: 2, jitter: 0.5))
        #expect(b.nextDelay(random: 1) == .milliseconds(500))
        #expect(b.nextDelay(random: 1) == .milliseconds(1000))
        #expect(b.nextDelay(random: 0) == .milliseconds(1000), "jitter 0.5 halves the delay at random 0")
        for _ in 0..<10 { _ = b.nextDelay(random: 1) }
        #expect(b.nextDelay(random: 1) == .seconds(8))
        b.reset()
        #expect(b.nextDelay(random: 1) == .milliseconds(500))
    }

    @Test("URLs: mqtt, mqtts, default ports, IPv6")
    func urls() throws {
        let a = try MQTTConfiguration(url: "mqtt://127.0.0.1", clientIdentifier: "x")
        #expect(a.port == 1883 && a.tls == nil)
        let b = try MQTTConfiguration(url: "mqtts://broker.local:8884", clientIdentifier: "x")
        #expect(b.port == 8884 && b.tls != nil && b.host == "broker.local")
        let c = try MQTTConfiguration(url: "mqtt://[::1]:1884", clientIdentifier: "x")
        #expect(c.host == "::1" && c.port == 1884)
        #expect(throws: MQTTError.self) { try MQTTConfiguration(url: "http://x", clientIdentifier: "x") }
        #expect(throws: MQTTError.self) { try MQTTConfiguration(url: "mqtt://x:99999", clientIdentifier: "x") }
    }
}

/// The outgoing session in-process: no connection, the time passed in.
@Suite("Publish session")
struct PublishSessionTests {
    let t0 = ContinuousClock.now

    func message(_ topic: String, _ qos: MQTTQoS = .atLeastOnce) -> MQTTPublishSession.Waiting {
        .init(packet: PublishPacket(topic: topic, payload: [], qos: qos), completion: nil)
    }

    func topics(_ s: MQTTPublishSession) -> [String] { s.queue.map(\.packet.topic) }

    @Test("full queue: the oldest goes, never one put ahead; ahead messages keep their order before the rest")
    func bound() {
        var s = MQTTPublishSession(queueLimit: 3)
        #expect(s.add(message("a"), ahead: false) == nil)
        #expect(s.add(message("last-word"), ahead: true) == nil)
        #expect(s.add(message("b"), ahead: false) == nil)
        #expect(s.add(message("c"), ahead: false)?.packet.topic == "a")
        #expect(s.add(message("d"), ahead: false)?.packet.topic == "b")
        #expect(topics(s) == ["last-word", "c", "d"])
        #expect(s.add(message("second-word"), ahead: true)?.packet.topic == "c")
        #expect(topics(s) == ["last-word", "second-word", "d"])
    }

    @Test("the in-flight window holds messages back; QoS is capped at the broker's maximum; QoS 0 is done once written")
    func window() {
        var s = MQTTPublishSession(queueLimit: 10)
        for t in ["1", "2", "3"] { _ = s.add(message(t, .exactlyOnce), ahead: false) }
        _ = s.add(message("q0", .atMostOnce), ahead: false)
        let a = s.next(window: 2, maximumQoS: .atLeastOnce, now: t0, alsoInUse: { _ in false })
        let b = s.next(window: 2, maximumQoS: .atLeastOnce, now: t0, alsoInUse: { $0 == 2 })
        #expect(a?.packet.qos == .atLeastOnce && a?.packet.packetIdentifier == 1)
        #expect(b?.packet.packetIdentifier == 3, "id 2 is taken by a request")
        #expect(s.next(window: 2, maximumQoS: .atLeastOnce, now: t0, alsoInUse: { _ in false }) == nil, "window full")
        #expect(s.pubAck(1)?.packet.topic == "1")
        #expect(s.pubAck(1) == nil, "acknowledged once")
        #expect(s.next(window: 2, maximumQoS: .atLeastOnce, now: t0, alsoInUse: { _ in false })?.packet.topic == "3")
        let q0 = s.next(window: 2, maximumQoS: .atLeastOnce, now: t0, alsoInUse: { _ in false })
        #expect(q0?.packet.packetIdentifier == nil && q0?.packet.qos == .atMostOnce, "QoS 0 passes a full window")
        #expect(s.inFlight.count == 2 && s.queue.isEmpty)
    }

    @Test("QoS 2 stages; a reconnect with the session resends in order (DUP, or PUBREL past PUBREC); without it, PUBREC'd ones are done and the rest go again as new, ahead of the queue")
    func reconnect() {
        var s = MQTTPublishSession(queueLimit: 10)
        for t in ["x", "y", "z"] { _ = s.add(message(t, .exactlyOnce), ahead: false) }
        for _ in 0..<3 { _ = s.next(window: 10, maximumQoS: .exactlyOnce, now: t0, alsoInUse: { _ in false }) }
        _ = s.add(message("waiting"), ahead: false)
        #expect(s.pubComp(1) == nil, "PUBCOMP before PUBREC is ignored")
        guard case .release = s.pubRec(1, refused: false) else { Issue.record("no PUBREL"); return }
        guard case .unknown = s.pubRec(9, refused: false) else { Issue.record("unknown id taken"); return }
        #expect(s.pubAck(2) == nil, "PUBACK for a QoS 2 message is ignored")
        #expect(s.resend() == [.pubrel(AckPacket(packetIdentifier: 1)),
                               .publish(PublishPacket(topic: "y", payload: [], qos: .exactlyOnce, dup: true, packetIdentifier: 2)),
                               .publish(PublishPacket(topic: "z", payload: [], qos: .exactlyOnce, dup: true, packetIdentifier: 3))])
        var again = s
        let delivered = again.restartWithoutSession()
        #expect(delivered.isEmpty, "no completion was attached")
        #expect(again.inFlight.isEmpty)
        #expect(topics(again) == ["y", "z", "waiting"])
        #expect(again.queue.allSatisfy { $0.packet.packetIdentifier == nil && !$0.packet.dup })
        if case .refused(let o) = s.pubRec(2, refused: true) { #expect(o.packet.topic == "y") } else { Issue.record("refusal not reported") }
        #expect(s.removeAll().isEmpty && s.isIdle)
    }

    @Test("take back: returnable messages leave in order (in flight as sent, then queued), as new; a QoS 2 one past PUBREC stays; others stay where they were")
    func takeBack() {
        var s = MQTTPublishSession(queueLimit: 10)
        func returnable(_ t: String, _ qos: MQTTQoS = .atLeastOnce) -> MQTTPublishSession.Waiting {
            .init(packet: PublishPacket(topic: t, payload: [], qos: qos), completion: nil, returnable: true)
        }
        _ = s.add(returnable("r1"), ahead: false)
        _ = s.add(message("status"), ahead: false)
        _ = s.add(returnable("r2", .exactlyOnce), ahead: false)
        _ = s.add(returnable("r3"), ahead: false)
        for _ in 0..<3 { _ = s.next(window: 10, maximumQoS: .exactlyOnce, now: t0, alsoInUse: { _ in false }) }
        _ = s.add(returnable("r4"), ahead: false)
        _ = s.add(message("answer"), ahead: false)
        _ = s.add(message("offline"), ahead: true)
        // In flight: r1 (1), status (2), r2 (3); queued: offline (ahead), r3, r4, answer.
        var past = s
        guard case .release = past.pubRec(3, refused: false) else { Issue.record("no PUBREL"); return }
        let (back, senders) = s.takeBack()
        #expect(back.map(\.topic) == ["r1", "r2", "r3", "r4"])
        #expect(back.allSatisfy { $0.packetIdentifier == nil && !$0.dup })
        #expect(senders.isEmpty)
        #expect(s.inFlight.keys.sorted() == [2] && topics(s) == ["offline", "answer"])
        #expect(s.add(message("x"), ahead: true) == nil && topics(s) == ["offline", "x", "answer"], "the ahead mark kept")
        #expect(past.takeBack().messages.map(\.topic) == ["r1", "r3", "r4"], "r2 was delivered (PUBREC): it stays for PUBCOMP")
    }
}

/// The connection lifecycle in-process: events in with the time, decisions out.
@Suite("Connection lifecycle")
struct ConnectionLifecycleTests {
    let t0 = ContinuousClock.now
    let policy = MQTTReconnectPolicy(initialDelay: .milliseconds(500), maximumDelay: .seconds(30), multiplier: 2, jitter: 0)

    /// Connects, then the broker closes the connection `after` the CONNACK.
    func connectAndDrop(_ l: inout MQTTConnectionLifecycle, at t: ContinuousClock.Instant, after: Duration) -> MQTTConnectionLifecycle.Closed? {
        guard let id = l.beginAttempt() else { return nil }
        #expect(l.connected(now: t) == .keep)
        return l.closed(id, reason: nil, now: t + after)
    }

    @Test("three quick drops by the broker in a row mean a twin: the longest delay; a drop we caused or a later one does not count")
    func twin() {
        var l = MQTTConnectionLifecycle(policy: policy)
        #expect(connectAndDrop(&l, at: t0, after: .seconds(1)) == .init(wasConnected: true, reason: .closedByBroker))
        #expect(l.nextAttempt(random: 0) == .after(.milliseconds(500), attempt: 1, twin: false))
        _ = connectAndDrop(&l, at: t0, after: .seconds(1))
        // A close of our own right after connecting is no sign of a twin and resets the count.
        let id = l.beginAttempt()!
        _ = l.connected(now: t0)
        l.closingOurselves(.protocolError("x"))
        #expect(l.closed(id, reason: nil, now: t0 + .milliseconds(10))?.reason == .protocolError("x"))
        #expect(l.quickDrops == 0)
        for _ in 0..<2 { _ = connectAndDrop(&l, at: t0, after: .seconds(1)) }
        #expect(l.nextAttempt(random: 0) == .after(.milliseconds(500), attempt: 1, twin: false), "two quick drops are not yet a twin")
        _ = connectAndDrop(&l, at: t0, after: .seconds(1))
        #expect(l.nextAttempt(random: 0) == .after(.seconds(30), attempt: 1, twin: true))
        _ = connectAndDrop(&l, at: t0, after: .seconds(3))
        #expect(l.quickDrops == 0)
        #expect(l.nextAttempt(random: 0) == .after(.milliseconds(500), attempt: 1, twin: false), "a connection that lasted resets it")
    }

    @Test("DISCONNECT 'session taken over' means a twin at once, until the next connect")
    func takenOver() {
        var l = MQTTConnectionLifecycle(policy: policy)
        let id = l.beginAttempt()!
        _ = l.connected(now: t0)
        l.brokerDisconnected(.brokerDisconnected(.sessionTakenOver, nil))
        #expect(l.closed(id, reason: nil, now: t0 + .seconds(60)) == .init(wasConnected: true, reason: .brokerDisconnected(.sessionTakenOver, nil)))
        #expect(l.nextAttempt(random: 0) == .after(.seconds(30), attempt: 1, twin: true))
        _ = connectAndDrop(&l, at: t0, after: .seconds(60))
        #expect(l.nextAttempt(random: 0) == .after(.milliseconds(500), attempt: 1, twin: false))
    }

    @Test("new settings: replace a connection now, a connect under way once it is up; the next attempt goes at once")
    func settings() {
        var l = MQTTConnectionLifecycle(policy: policy)
        #expect(l.settingsChanged(policy: policy) == false, "nothing to replace while idle")
        let first = l.beginAttempt()!
        #expect(l.settingsChanged(policy: policy) == false, "not connected yet")
        #expect(l.connected(now: t0) == .replace, "made with the old settings")
        #expect(l.settingsChanged(policy: policy) == true)
        l.closingOurselves(.reconfigured, reconnectAtOnce: true)
        #expect(l.closed(first, reason: nil, now: t0)?.reason == .reconfigured)
        #expect(l.nextAttempt(random: 0) == .now)
        let second = l.beginAttempt()!
        #expect(l.connected(now: t0) == .keep)
        #expect(l.closed(first, reason: .closedByBroker, now: t0) == nil, "an older connection's close is ignored")
        #expect(l.isConnected && l.isCurrent(second))
    }

    @Test("refused for good: the longest delays; failed attempts grow the backoff; shut down stops everything")
    func refusalAndShutdown() {
        var l = MQTTConnectionLifecycle(policy: policy)
        _ = l.beginAttempt()
        l.attemptFailed()
        #expect(l.phase == .idle)
        #expect(l.nextAttempt(random: 0) == .after(.milliseconds(500), attempt: 1, twin: false))
        #expect(l.nextAttempt(random: 0) == .after(.milliseconds(1000), attempt: 2, twin: false))
        l.refusedForGood()
        #expect(l.nextAttempt(random: 0) == .after(.seconds(30), attempt: 65, twin: false))
        let id = l.beginAttempt()!
        _ = l.connected(now: t0)
        #expect(l.shutdown() == true)
        #expect(l.shutdown() == nil, "only once")
        #expect(l.closed(id, reason: .shutdown, now: t0) == .init(wasConnected: false, reason: .shutdown))
        #expect(l.isShutDown && l.beginAttempt() == nil && l.nextAttempt(random: 0) == .stop)
    }
}
