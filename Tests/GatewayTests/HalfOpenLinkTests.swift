import Foundation
import Synchronization
import Testing
import TestSupport

/// A broker whose link goes half-open (its host lost power, a cable, a NAT mapping dropped):
/// both sockets stay open and nothing passes. A freezing proxy in front of Mosquitto makes it.
@Suite("Half-open broker link (a freezing proxy in front of Mosquitto)")
struct HalfOpenLinkTests {
    @Test("the link freezes while a value is published every 100 ms: 'broker lost' within 1.5 x keepalive of the freeze (+1 s)")
    func frozenWhileBusy() async throws {
        let proxy = Mutex<ChildProcess?>(nil)
        let points = "[[device.point]]\nname = \"n\"\nregister = \"holding\"\naddress = 0\n"
        let rig = try await Rig.start(points: points, simArgs: ["--counter", "holding:0@100"], pollMs: 100, mqttPort: { brokerPort in
            let p = try ChildProcess("/usr/bin/python3", [TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/freeze_proxy.py", "\(brokerPort)"])
            proxy.withLock { $0 = p }
            let line = try await p.waitForLine(containing: "listening")
            return try #require(line.split(separator: " ").last.flatMap { Int($0) })
        })
        let p = try #require(proxy.withLock { $0 })
        _ = try await rig.gateway.waitForLine(containing: "birth and statuses published")
        try await rig.waitUntil("values flowing every poll") { rig.payloads("gateway/e2e/dev/n").count >= 10 }
        p.send("freeze")
        _ = try await p.waitForLine(containing: "frozen")
        let frozenAt = ContinuousClock.now
        // The rig's keepalive is 5 s: the last packet from the broker came at most now, so the
        // loss is noticed by 7.5 s from now; 1 s more for the log line to reach us.
        _ = try await rig.gateway.waitForLine(containing: "broker lost", timeout: .seconds(8.5))
        print("half-open link: broker lost \(ContinuousClock.now - frozenAt) after the freeze")
        #expect(rig.gateway.lines.contains { $0.contains("did not answer PINGREQ in time") }, "noticed by the keepalive, not by TCP")
        await rig.shutdown()
        _ = await p.stop()
    }
}
