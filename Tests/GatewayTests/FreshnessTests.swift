@testable import Gateway
@testable import MQTT
import Testing

@Suite("Command freshness")
struct FreshnessTests {
    func message(expiry: UInt32?) -> MQTTMessage {
        var p = MQTTProperties()
        p.messageExpiryInterval = expiry
        return MQTTMessage(topic: "gateway/x/d/p/set", payload: [], qos: .atLeastOnce, retain: false, properties: p)
    }

    func refused(_ req: CommandRequest, expiry: UInt32? = nil, receivedAgo: Duration = .zero, maxAge: Int? = nil) -> String? {
        do {
            let now = ContinuousClock.now
            try CommandPipeline.checkFresh(req, message: message(expiry: expiry), receivedAt: now - receivedAgo, maxAgeMs: maxAge, now: now, unixNow: unixMilliseconds())
            return nil
        } catch {
            return error.reason
        }
    }

    @Test("MQTT 5 message expiry: passed while waiting, or already zero -> refused")
    func expiry() {
        let req = CommandRequest(value: .bool(true))
        #expect(refused(req, expiry: 10) == nil)
        #expect(refused(req, expiry: 0)?.contains("expiry") == true)
        #expect(refused(req, expiry: 2, receivedAgo: .seconds(3))?.contains("expiry") == true)
    }

    @Test("command_max_age_ms against ts: old, future, missing")
    func age() {
        let now = unixMilliseconds()
        #expect(refused(CommandRequest(value: .bool(true), ts: now - 1000), maxAge: 5000) == nil)
        #expect(refused(CommandRequest(value: .bool(true), ts: now - 60_000), maxAge: 5000)?.hasPrefix("stale command") == true)
        #expect(refused(CommandRequest(value: .bool(true), ts: now + 60_000), maxAge: 5000)?.contains("ahead of the gateway's clock") == true)
        #expect(refused(CommandRequest(value: .bool(true)), maxAge: 5000)?.contains("command_max_age_ms is set") == true)
        #expect(refused(CommandRequest(value: .bool(true), ts: 1)) == nil)   // off by default: ts not judged
    }
}
