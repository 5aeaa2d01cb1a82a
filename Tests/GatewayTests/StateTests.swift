import GatewayConfig
import Modbus
import Testing
@testable import Gateway

@Suite("Device health, poll schedule, value conversion and change filter")
struct StateTests {
    @Test("offline after N consecutive failures, online on the first good poll, each change reported once")
    func health() {
        var h = DeviceHealth(offlineAfter: 3)
        #expect(h.pollSucceeded() == .online)
        #expect(h.pollSucceeded() == nil)
        #expect(h.pollFailed() == nil)
        #expect(h.pollFailed() == nil)
        #expect(h.pollSucceeded() == nil, "two failures then a success: still online, counter reset")
        #expect(h.pollFailed() == nil)
        #expect(h.pollFailed() == nil)
        #expect(h.pollFailed() == .offline)
        #expect(h.pollFailed() == nil, "an offline device does not report again")
        #expect(h.pollSucceeded() == .online)
        #expect(h.markOffline() == .offline, "a closed port: offline at once")
        #expect(h.markOffline() == nil && h.pollFailed() == nil)
        #expect(h.pollSucceeded() == .online)
    }

    @Test("offline probes: the poll period, then doubling up to the cap; reset when the device answers")
    func offlineBackoff() {
        var b = OfflineBackoff(period: .milliseconds(1000), cap: .milliseconds(5000))
        #expect([b.next(), b.next(), b.next(), b.next(), b.next()] == [.seconds(1), .seconds(2), .seconds(4), .seconds(5), .seconds(5)])
        b.reset()
        #expect(b.next() == .seconds(1))
        var small = OfflineBackoff(period: .seconds(2), cap: .seconds(1))
        #expect(small.next() == .seconds(2) && small.next() == .seconds(2), "a cap below the period means the period")
    }

    @Test("only a device that did not answer has failed: a poll the bus could not start, or an exception, is not its failure")
    func pollOutcome() {
        typealias O = GatewayRuntime.PollOutcome
        let ok: ModbusBus.ItemResult = .success(.registers([1]))
        let busy: ModbusBus.ItemResult = .failure(.busBusy)
        let timeout: ModbusBus.ItemResult = .failure(.timeout(function: "read"))
        let refused: ModbusBus.ItemResult = .failure(.exception(.illegalDataAddress, function: "read"))
        let gatewayNoAnswer: ModbusBus.ItemResult = .failure(.exception(.gatewayTargetFailedToRespond, function: "read"))
        #expect(O([0: ok, 1: timeout]) == .answered)
        #expect(O([0: refused]) == .answered)
        #expect(O([0: busy, 1: busy]) == .notStarted)
        #expect(O([0: timeout, 1: timeout]) == .failed)
        #expect(O([0: busy, 1: timeout]) == .failed)
        #expect(O([0: gatewayNoAnswer]) == .failed)
        #expect(O([:]) == .failed)
    }

    @Test("drift-free schedule: ticks at start + k * period; overruns skipped, counted, reported once per episode")
    func schedule() {
        let t0 = ContinuousClock.now
        var s = PollSchedule(period: .milliseconds(100), start: t0)
        #expect(s.advance(now: t0 + .milliseconds(30)) == false)
        #expect(s.next == t0 + .milliseconds(100))
        #expect(s.advance(now: t0 + .milliseconds(180)) == false, "a late poll does not shift the schedule")
        #expect(s.next == t0 + .milliseconds(200))
        #expect(s.advance(now: t0 + .milliseconds(450)) == true)
        #expect(s.next == t0 + .milliseconds(500))
        #expect(s.overruns == 2)
        #expect(s.advance(now: t0 + .milliseconds(650)) == false, "the same episode is not reported twice")
        #expect(s.advance(now: t0 + .milliseconds(710)) == false)
        #expect(s.inOverrun == false)
        s.restart(at: t0 + .seconds(3))
        #expect(s.next == t0 + .seconds(3))
        #expect(s.advance(now: t0 + .milliseconds(3010)) == false && s.next == t0 + .milliseconds(3100))
    }

    @Test("conversion: scale, map, bit, string, unmapped values stay numbers")
    func conversion() throws {
        var p = PointSettings(name: "t", table: .holding, address: 0, type: .int16)
        p.scale = 0.1
        #expect(try p.value(from: .registers([215])).plain == "21.5")
        #expect(try p.value(from: .registers([0xFFFD])).plain == "-0.3")
        var m = PointSettings(name: "m", table: .holding, address: 0, type: .uint16)
        m.map = [0: "normal", 2: "locked"]
        #expect(try m.value(from: .registers([2])).plain == "locked")
        #expect(try m.value(from: .registers([7])).plain == "7")
        var b = PointSettings(name: "b", table: .input, address: 0, type: .bool)
        b.bit = 3
        #expect(try b.value(from: .registers([0b1000])).plain == "true")
        let c = PointSettings(name: "c", table: .coil, address: 0, type: .bool)
        #expect(try c.value(from: .bits([false])).plain == "false")
        #expect(PointValue.text("a\"b").json == "\"a\\\"b\"")
    }

    @Test("change filter: unchanged values are not republished until the refresh; deadband compares with the last published value")
    func changeFilter() {
        let t0 = ContinuousClock.now
        var f = ChangeFilter()
        var published: [Bool] = []
        for (value, at) in [(21.5, 0), (21.6, 1), (21.69, 2), (21.7, 3), (21.7, 200), (21.7, 303)] {
            published.append(f.shouldPublish(.number(value, integer: false), now: t0 + .seconds(at), deadband: 0.2, refresh: .seconds(300)))
        }
        #expect(published == [true, false, false, true, false, true], "first, below deadband twice, moved 0.2, unchanged, refresh")
        var g = ChangeFilter()
        var texts: [Bool] = []
        for (value, at) in [("open", 0), ("open", 1000), ("closed", 1001)] {
            texts.append(g.shouldPublish(.text(value), now: t0 + .seconds(at), deadband: 0, refresh: nil))
        }
        #expect(texts == [true, false, true])
    }
}
