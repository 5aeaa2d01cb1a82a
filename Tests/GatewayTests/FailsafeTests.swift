@testable import Gateway
import Logging
@testable import MQTT
import Testing
import TestSupport

/// The fail-safe in-process: its countdown on a ``TestClock``, its writes through a device's
/// commander on a ``FakeBus``. `DoorSafetyTests` keeps it end to end against the real peers.
@Suite("Fail-safe, in-process")
struct FailsafeTests {
    static let barrier = """
        [[device.point]]
        name = "barrier"
        register = "coil"
        address = 1
        writable = true
        failsafe = true
        """

    /// The feature over the rig's device, its client never started (the report waits in its queue).
    static func feature(_ rig: CommanderRig) -> FailsafeFeature {
        let client = MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: 1, clientIdentifier: "failsafe-test"),
                                logger: Logger(label: "test"))
        return FailsafeFeature(failsafe: Failsafe(client: client, topics: rig.plan.topics, logger: Logger(label: "test"), clock: rig.clock),
                               units: rig.units)
    }

    /// The broker lost and the device offline when the fail-safe is due (30 s): tried then (not
    /// written), and its retry a second later is waiting.
    static func offlineWhenDue() async throws -> (CommanderRig, FailsafeFeature) {
        let rig = try CommanderRig(points: Self.barrier, gateway: "failsafe_after_s = 30")
        let feature = Self.feature(rig)
        rig.publisher.connected.withLock { $0 = false }
        rig.board.set("d", .offline)
        await feature.brokerLost(reason: .closedByBroker)
        try await withTimeout { await rig.clock.sleepers(1) }
        rig.clock.advance(by: .seconds(30))
        try await withTimeout { await rig.clock.sleepers(1) }
        return (rig, feature)
    }

    @Test("broker lost: nothing before failsafe_after_s, then exactly one write of the fail-safe value; nothing more")
    func countdown() async throws {
        let rig = try CommanderRig(points: Self.barrier, gateway: "failsafe_after_s = 30")
        let feature = Self.feature(rig)
        rig.publisher.connected.withLock { $0 = false }
        await feature.brokerLost(reason: .keepaliveTimeout)
        try await withTimeout { await rig.clock.sleepers(1) }
        rig.clock.advance(by: .seconds(29))
        #expect(rig.clock.pendingSleepers == 1, "still counting")
        #expect(rig.timeline.count("write") == 0)
        rig.clock.advance(by: .seconds(1))
        try await rig.timeline.await(1, of: "write")
        #expect(rig.bus.coil(1) == true)
        // Everything is written: no timer is left; the broker's return writes nothing.
        rig.publisher.connected.withLock { $0 = true }
        await feature.brokerConnected()
        #expect(rig.clock.pendingSleepers == 0)
        #expect(rig.timeline.count("write") == 1)
        await rig.commander.stop()
    }

    @Test("a device offline when it is due gets the write once it is back, while the broker is still away")
    func deviceBack() async throws {
        let (rig, feature) = try await Self.offlineWhenDue()
        #expect(rig.timeline.count("write") == 0)
        rig.board.set("d", .online)
        rig.clock.advance(by: Failsafe.retry)
        try await rig.timeline.await(1, of: "write")
        #expect(rig.bus.coil(1) == true)
        rig.publisher.connected.withLock { $0 = true }
        await feature.brokerConnected()
        await rig.commander.stop()
    }

    @Test("a device still offline when the broker is back never gets the write")
    func notAfterBrokerBack() async throws {
        let (rig, feature) = try await Self.offlineWhenDue()
        rig.publisher.connected.withLock { $0 = true }
        await feature.brokerConnected()
        #expect(rig.clock.pendingSleepers == 0, "the countdown ended with the broker's return")
        rig.board.set("d", .online)
        rig.clock.advance(by: .seconds(60))
        // A command through the same queue: a fail-safe job queued before it would have run first.
        rig.set("barrier", "false")
        _ = try await rig.answer(1)
        #expect(rig.timeline.entries.filter { $0.hasPrefix("write") } == ["write 1=false @90000"])
        await rig.commander.stop()
    }
}
