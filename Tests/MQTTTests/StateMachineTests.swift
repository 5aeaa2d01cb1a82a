import Testing
@testable import MQTT

@Suite("Keepalive and backoff state machines")
struct StateMachineTests {
    @Test("PINGREQ after an idle interval; dead if no PINGRESP within half of it (1.5 x keepalive in all)")
    func keepAlive() {
        let t0 = ContinuousClock.now
        var ka = KeepAliveStateMachine(interval: .seconds(10), now: t0)
        #expect(ka.next(now: t0 + .seconds(5)) == .wait(until: t0 + .seconds(10)))
        ka.packetSent(at: t0 + .seconds(6))
        #expect(ka.next(now: t0 + .seconds(10)) == .wait(until: t0 + .seconds(16)))
        #expect(ka.next(now: t0 + .seconds(16)) == .sendPing)
        #expect(ka.next(now: t0 + .seconds(18)) == .wait(until: t0 + .seconds(21)))
        ka.pingResponseReceived()
        #expect(ka.next(now: t0 + .seconds(18)) == .wait(until: t0 + .seconds(26)))
        #expect(ka.next(now: t0 + .seconds(26)) == .sendPing)
        #expect(ka.next(now: t0 + .seconds(31)) == .closeDead)
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
}
