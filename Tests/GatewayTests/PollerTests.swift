import Foundation
@testable import Gateway
import GatewayConfig
import Logging
import Modbus
import Synchronization
import Testing
import TestSupport

/// A device's poll logic in-process: a scripted bus answers, a recording sink takes what would
/// go to the broker. No broker, no simulator, no timing (the end-to-end suites cover the wire).
@Suite("Device poller, in-process")
struct PollerTests {
    /// Answers each poll with the next scripted result set.
    final class ScriptedBus: PollingBus {
        private let script: Mutex<[[Int: ModbusBus.ItemResult]]>
        init(_ script: [[Int: ModbusBus.ItemResult]]) { self.script = Mutex(script) }
        func pollDevice(_ plan: inout ReadPlan, unit: Int, deadline: ContinuousClock.Instant) async -> [Int: ModbusBus.ItemResult] {
            script.withLock { $0.isEmpty ? [:] : $0.removeFirst() }
        }
    }

    final class RecordingSink: PollSink {
        let statuses = Mutex<[DeviceHealth.State]>([])
        let data = Mutex<[(topic: String, payload: String)]>([])
        let generation = Mutex(0)
        var valuesGeneration: Int { generation.withLock { $0 } }
        func publishStatus(_ device: String, _ state: DeviceHealth.State) async { statuses.withLock { $0.append(state) } }
        func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async {
            data.withLock { $0.append((topic, String(decoding: payload, as: UTF8.self))) }
        }
        var values: [String] { data.withLock { $0.filter { $0.topic.hasSuffix("/dev/t") }.map(\.payload) } }
    }

    static let config = """
        [gateway]
        id = "x"
        [[bus]]
        name = "b"
        type = "tcp"
        host = "127.0.0.1"
        [[device]]
        name = "dev"
        bus = "b"
        offline_after = 2
          [[device.point]]
          name = "t"
          register = "holding"
          address = 0
          [[device.point]]
          name = "n"
          register = "holding"
          address = 1
          counter = true
        """

    func poller(readBacks: ReadBacks? = nil) throws -> DevicePoller {
        let plan = GatewayPlan(try ConfigLoader.parse(Self.config))
        return DevicePoller(plan.devices[0], gateway: plan.configuration.gateway, topics: plan.topics, logger: Logger(label: "test"),
                            start: .now, readBacks: readBacks, meter: nil)
    }

    static func answer(_ t: UInt16, _ n: UInt16) -> [Int: ModbusBus.ItemResult] {
        [0: .success(.registers([t])), 1: .success(.registers([n]))]
    }
    static let noAnswer: [Int: ModbusBus.ItemResult] = [0: .failure(.timeout(function: "read")), 1: .failure(.timeout(function: "read"))]
    static let busy: [Int: ModbusBus.ItemResult] = [0: .failure(.busBusy), 1: .failure(.busBusy)]

    @Test("online at the first answer; a value is published when it changes; offline once after offline_after failures; online again")
    func health() async throws {
        var p = try poller()
        let sink = RecordingSink()
        let bus = ScriptedBus([Self.answer(5, 0), Self.answer(5, 0), Self.answer(6, 0), Self.noAnswer, Self.noAnswer, Self.noAnswer, Self.answer(6, 0)])
        for _ in 0..<3 { await p.poll(bus, sink: sink) }
        #expect(sink.statuses.withLock { $0 } == [.online])
        #expect(sink.values == ["5", "6"])
        await p.poll(bus, sink: sink)
        #expect(sink.statuses.withLock { $0 } == [.online], "one failure is not offline yet")
        await p.poll(bus, sink: sink)
        await p.poll(bus, sink: sink)
        #expect(sink.statuses.withLock { $0 } == [.online, .offline], "offline said once")
        await p.poll(bus, sink: sink)
        #expect(sink.statuses.withLock { $0 } == [.online, .offline, .online])
        #expect(sink.values == ["5", "6"], "the same value is not published again after the outage")
    }

    @Test("on a test clock: polls keep their period; an offline device is probed after 1, 2, 4... periods up to offline_poll_ms, and on period again once it answers")
    func schedule() async throws {
        let config = Self.config.replacingOccurrences(of: "offline_after = 2", with: "offline_after = 1\npoll_ms = 1000\noffline_poll_ms = 3000")
        let plan = GatewayPlan(try ConfigLoader.parse(config))
        let t0 = ContinuousClock.now
        var p = DevicePoller(plan.devices[0], gateway: plan.configuration.gateway, topics: plan.topics, logger: Logger(label: "test"),
                             start: t0, readBacks: nil, meter: nil)
        let sink = RecordingSink()
        let bus = ScriptedBus([Self.answer(1, 0)] + Array(repeating: Self.noAnswer, count: 4) + [Self.answer(1, 0)])
        var gaps: [Duration] = []
        for _ in 0..<6 {
            let at = p.schedule.next   // each poll runs when it is due, on the test's clock
            await p.poll(bus, sink: sink, clock: { at })
            gaps.append(p.schedule.next - at)
        }
        #expect(gaps == [.seconds(1), .seconds(1), .seconds(2), .seconds(3), .seconds(3), .seconds(1)], "\(gaps)")
        #expect(sink.statuses.withLock { $0 } == [.online, .offline, .online])
    }

    @Test("a bus busy with commands for a whole period says nothing about the device")
    func busyIsNotFailure() async throws {
        var p = try poller()
        let sink = RecordingSink()
        let bus = ScriptedBus([Self.busy, Self.busy, Self.busy, Self.answer(1, 0), Self.busy, Self.busy, Self.busy])
        for _ in 0..<7 { await p.poll(bus, sink: sink) }
        #expect(sink.statuses.withLock { $0 } == [.online])
    }

    @Test("a latch whose clear failed is asked again at every poll that reads it set, without a second event; once cleared, the next set is a new event")
    func latchClearRetried() async throws {
        let config = Self.config + "\n  [[device.point]]\n  name = \"forced\"\n  register = \"coil\"\n  address = 2\n  latch = true\n"
        let plan = GatewayPlan(try ConfigLoader.parse(config))
        let readBacks = ReadBacks()
        let clears = Mutex<[Int]>([])
        var p = DevicePoller(plan.devices[0], gateway: plan.configuration.gateway, topics: plan.topics, logger: Logger(label: "test"),
                             start: .now, readBacks: readBacks, meter: nil, clearLatch: { i in clears.withLock { $0.append(i) } })
        let sink = RecordingSink()
        func reading(_ set: Bool) -> [Int: ModbusBus.ItemResult] { [0: .success(.registers([1])), 1: .success(.registers([0])), 2: .success(.bits([set]))] }
        let bus = ScriptedBus([reading(true), reading(true), reading(true), reading(true), reading(false), reading(true)])
        var events: Int { sink.data.withLock { $0.filter { $0.topic.hasSuffix("/forced/event") }.count } }
        await p.poll(bus, sink: sink)
        #expect(events == 1 && clears.withLock { $0 } == [2], "seen set: one event, one clear")
        // The clear failed (the commander records nothing): asked again, no second event.
        await p.poll(bus, sink: sink)
        await p.poll(bus, sink: sink)
        #expect(events == 1 && clears.withLock { $0 } == [2, 2, 2])
        // The clear landed; the device set it again before the next poll: a new event.
        readBacks.recordLatchCleared(point: 2)
        await p.poll(bus, sink: sink)
        #expect(events == 2 && clears.withLock { $0.count } == 4)
        // Read clear, then set: a third event.
        await p.poll(bus, sink: sink)
        await p.poll(bus, sink: sink)
        #expect(events == 3)
    }

    @Test("a counter counts from the reading an earlier run kept: the first event after the start spans the gap, once; readings are kept for the next start")
    func counterAcrossRestart() async throws {
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-counters")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "dev/n 5\n".write(toFile: dir + "/counters", atomically: true, encoding: .utf8)
        let plan = GatewayPlan(try ConfigLoader.parse(Self.config))
        let store = CounterStore(directory: dir, logger: Logger(label: "test"))
        var p = DevicePoller(plan.devices[0], gateway: plan.configuration.gateway, topics: plan.topics, logger: Logger(label: "test"),
                             start: .now, readBacks: nil, meter: nil, counters: store)
        let sink = RecordingSink()
        let bus = ScriptedBus([Self.answer(1, 8), Self.answer(1, 9), Self.answer(1, 9)])
        for _ in 0..<3 { await p.poll(bus, sink: sink) }
        let events = sink.data.withLock { $0.filter { $0.topic.hasSuffix("/dev/n/event") }.map(\.payload) }
        #expect(events.count == 2, "\(events)")
        #expect(events.first?.hasPrefix(#"{"event_type":"count","count":3,"gap":true,"ts":"#) == true, "\(events)")
        #expect(events.last?.hasPrefix(#"{"event_type":"count","count":1,"ts":"#) == true, "\(events)")
        await store.flush()
        #expect(try String(contentsOfFile: dir + "/counters", encoding: .utf8) == "dev/n 9\n")
        // A second poller for the same point (a reload) counts on from there, without a gap flag.
        #expect(store.take("dev/n")?.spansGap == false)
    }

    @Test("a value its commander read back is not published again by the next poll; a new values generation republishes")
    func readBacksAndGeneration() async throws {
        let readBacks = ReadBacks()
        var p = try poller(readBacks: readBacks)
        let sink = RecordingSink()
        let bus = ScriptedBus([Self.answer(1, 0), Self.answer(7, 0), Self.answer(7, 0)])
        await p.poll(bus, sink: sink)
        readBacks.record(.number(7, integer: true), point: 0)
        await p.poll(bus, sink: sink)
        #expect(sink.values == ["1"])
        sink.generation.withLock { $0 += 1 }   // as after a reconnect
        await p.poll(bus, sink: sink)
        #expect(sink.values == ["1", "7"])
    }

    /// Answers with the scripted results; while answering the second poll, a command's read-back
    /// is recorded (the command overtook the poll on the bus).
    final class OvertakenBus: PollingBus {
        let inner: ScriptedBus
        let readBacks: ReadBacks
        let calls = Mutex(0)
        init(_ script: [[Int: ModbusBus.ItemResult]], readBacks: ReadBacks) {
            inner = ScriptedBus(script)
            self.readBacks = readBacks
        }
        func pollDevice(_ plan: inout ReadPlan, unit: Int, deadline: ContinuousClock.Instant) async -> [Int: ModbusBus.ItemResult] {
            if calls.withLock({ $0 += 1; return $0 }) == 2 { readBacks.record(.number(7, integer: true), point: 0) }
            return await inner.pollDevice(&plan, unit: unit, deadline: deadline)
        }
    }

    @Test("a poll the command's read-back overtook does not publish its older value; the next poll publishes nothing new")
    func readBackDuringPoll() async throws {
        let readBacks = ReadBacks()
        var p = try poller(readBacks: readBacks)
        let sink = RecordingSink()
        // Poll 2 read 1 before the write of 7; the commander published 7 meanwhile.
        let bus = OvertakenBus([Self.answer(1, 0), Self.answer(1, 0), Self.answer(7, 0), Self.answer(8, 0)], readBacks: readBacks)
        for _ in 0..<3 { await p.poll(bus, sink: sink) }
        #expect(sink.values == ["1"], "the stale 1 must not follow the read-back 7")
        await p.poll(bus, sink: sink)
        #expect(sink.values == ["1", "8"])
    }

    @Test("a counter publishes its increments as events, across a wrap")
    func counterEvents() async throws {
        var p = try poller()
        let sink = RecordingSink()
        let bus = ScriptedBus([Self.answer(0, 10), Self.answer(0, 13), Self.answer(0, 65535), Self.answer(0, 2)])
        for _ in 0..<4 { await p.poll(bus, sink: sink) }
        let events = sink.data.withLock { $0.filter { $0.topic == "gateway/x/dev/n/event" }.map(\.payload) }
        #expect(events.count == 3, "\(events)")
        #expect(events.first?.hasPrefix("{\"event_type\":\"count\",\"count\":3,") == true, "\(events)")
        #expect(events.last?.hasPrefix("{\"event_type\":\"count\",\"count\":3,") == true, "65535 -> 2 is a wrap of 3: \(events)")
    }
}
