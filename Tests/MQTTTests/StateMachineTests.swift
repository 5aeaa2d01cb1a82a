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
