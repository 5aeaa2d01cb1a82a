import Foundation
import Synchronization
import Testing
import TestSupport

/// A dead device on a shared RS-485 line (issue 14, part 1), against pymodbus serving an RTU line
/// on a pty pair, with the gateway's default timing (`poll_ms` 1000, `timeout_ms` 1000).
@Suite("Shared RTU line")
struct SharedLineTests {
    @Test("a dead unit listed first: units behind it stay online and keep their period, the dead one is probed with backoff")
    func deadDeviceFirst() async throws {
        let pair = try await PtyPair.start()
        let server = try await PymodbusServer.startRTU(path: pair.b, spec: #"{"1": {"hr": {"0": 11}}, "2": {"hr": {"0": 22}}}"#,
                                                       logRequests: true)
        let point = """
            [[device.point]]
            name = "v"
            register = "holding"
            address = 0
            [[device.point]]
            name = "c"
            register = "coil"
            address = 0
            writable = true
            """
        // Unit 3 is absent and listed first. Two register kinds, so a poll has two requests: a
        // device that does not answer the first is not asked the second.
        let body = """
            [[bus]]
            name = "rs485"
            type = "rtu"
            port = "\(pair.a)"
            [[device]]
            name = "dead"
            bus = "rs485"
            unit = 3
            \(point)
            [[device]]
            name = "d1"
            bus = "rs485"
            unit = 1
            \(point)
            [[device]]
            name = "d2"
            bus = "rs485"
            unit = 2
            \(point)
            """
        let rig = try await Rig.start(points: "", simArgs: [], body: body)
        let b = "gateway/e2e"
        try await rig.waitFor("\(b)/d1/v", "11")
        try await rig.waitFor("\(b)/d2/v", "22")
        try await rig.waitFor("\(b)/dead/status", "offline", timeout: .seconds(20))
        // A command to a healthy device on the line: it waits at most for the transaction in
        // progress (a probe of the dead unit costs one timeout), then runs.
        #expect(try await rig.command("c", "true", device: "d1") == #"{"ok":true,"value":true}"#)
        // Six requests to unit 3 take about 14 s with backoff (0, 2, 4, then probes 1, 2, 4 s
        // after each failed one); without it they would take 10 s and keep coming every 2 s.
        let asked = Mutex(0)
        _ = try await server.process.waitForLine(timeout: .seconds(40)) { line in
            line.hasPrefix(#"{"request":{"unit":3,"#) && asked.withLock { $0 += 1; return $0 >= 6 }
        }
        let dead = server.requests(unit: 3)
        let gaps = zip(dead.dropFirst(), dead).map { $0 - $1 }
        // Once offline (after the third failed poll), each probe waits longer than the one before.
        #expect(gaps.count >= 5 && gaps[3] < gaps[4], "gaps between requests to unit 3 (µs): \(gaps)")
        // A poll has two requests, but the dead unit is asked only the first of each poll.
        let unit1 = server.requests(unit: 1)
        #expect(dead.count * 2 <= unit1.count, "unit 3: \(dead.count) requests, unit 1: \(unit1.count)")
        for (name, unit) in [("d1", 1), ("d2", 2)] {
            #expect(!rig.payloads("\(b)/\(name)/status").contains("offline"), "\(name) went offline:\n\(rig.gateway.tail)")
            // Mean period at most poll_ms + timeout_ms (2 s); each poll is two requests.
            let times = server.requests(unit: unit)
            let polls = times.count / 2
            let span = (times.last ?? 0) - (times.first ?? 0)
            #expect(polls >= 2 && span <= Int64(polls - 1) * 2_000_000 + 100_000,
                    "unit \(unit): \(polls) polls over \(span / 1000) ms")
        }
        #expect(rig.payloads("\(b)/dead/status") == ["offline"])
        await rig.shutdown()
        _ = await server.stop()
        await pair.stop()
    }
}
