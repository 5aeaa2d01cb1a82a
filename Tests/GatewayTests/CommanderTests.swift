@testable import Gateway
import Modbus
import Testing
import TestSupport

/// A Modbus device's commands in-process: a ``FakeBus`` for the device, recorders for the broker
/// side and a ``TestClock`` that moves only when the test says so. The end-to-end suites
/// (`DoorSafetyTests`, `CommandTests`) keep the same behaviours against the real peers.
@Suite("Device commander, in-process")
struct CommanderTests {
    static let door = """
        [[device.point]]
        name = "unlock"
        register = "coil"
        address = 3
        writable = true
        pulse_ms = 1000
        """

    @Test("a second 'on' during a pulse extends it: one off, a pulse length after the second on")
    func pulseExtended() async throws {
        let rig = try CommanderRig(points: Self.door)
        rig.set("unlock", "true")
        #expect(try await rig.answer(1).contains(#""ok":true"#))
        #expect(rig.journal.current.count == 1, "journalled before the write")
        rig.clock.advance(by: .milliseconds(600))
        rig.set("unlock", "true")
        #expect(try await rig.answer(2).contains(#""ok":true"#))
        // One timer: the second on replaced the first pulse's end.
        try await withTimeout { await rig.clock.sleepers(1) }
        #expect(rig.clock.pendingSleepers == 1)
        rig.clock.advance(by: .milliseconds(400))   // the first pulse's end: nothing
        rig.clock.advance(by: .milliseconds(600))   // the second's
        try await rig.timeline.await(startingWith: "write 3=false")
        #expect(rig.timeline.entries.filter { $0.hasPrefix("write") } == ["write 3=true @0", "write 3=true @600", "write 3=false @1600"])
        try await rig.timeline.await(3, startingWith: "data ")
        #expect(rig.timeline.entries.last == "data gateway/x/d/unlock false", "the off read back and published")
        #expect(rig.journal.current.isEmpty)
        await rig.commander.stop()
    }

    @Test("an off by command ends the pulse at once: its timer is cancelled, and no second off comes later")
    func offByCommand() async throws {
        let rig = try CommanderRig(points: Self.door)
        rig.set("unlock", "true")
        _ = try await rig.answer(1)
        try await withTimeout { await rig.clock.sleepers(1) }
        rig.set("unlock", "off")
        #expect(try await rig.answer(2).hasSuffix(#"{"ok":true,"value":false}"#))
        #expect(rig.clock.pendingSleepers == 0, "the pulse's timer was cancelled")
        #expect(rig.journal.current.isEmpty)
        rig.clock.advance(by: .seconds(2))
        // A /get goes through the same queue: anything the timer had queued would run first.
        rig.commander.submit(.get(rig.message("unlock", []), point: "unlock", receivedAt: rig.clock.now))
        try await rig.timeline.await(3, startingWith: "read 3")
        #expect(rig.timeline.entries.filter { $0.hasPrefix("write") } == ["write 3=true @0", "write 3=false @0"])
        await rig.commander.stop()
    }

    @Test("an off the device does not take is tried 5 times (pauses of 250 ms doubling), then every 5 s until it is taken; the journal keeps it meanwhile")
    func offRetried() async throws {
        let rig = try CommanderRig(points: Self.door)
        rig.set("unlock", "true")
        _ = try await rig.answer(1)
        rig.bus.failWrites(6, with: .exception(.slaveDeviceFailure, function: "write"))
        // The pulse's end, the 4 pauses between its 5 attempts, the first retry (which fails
        // too), the second retry: each a timer, moved on by exactly its length.
        let steps: [Duration] = [.seconds(1), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2),
                                 PulseStateMachine.offRetry, PulseStateMachine.offRetry]
        for step in steps {
            try await withTimeout { await rig.clock.sleepers(1) }
            #expect(rig.journal.current.count == 1, "still on: still journalled")
            rig.clock.advance(by: step)
        }
        try await rig.timeline.await(startingWith: "write 3=false")
        #expect(rig.timeline.entries.filter { $0.hasPrefix("write") } == [
            "write 3=true @0",
            "write-failed 3=false @1000", "write-failed 3=false @1250", "write-failed 3=false @1750",
            "write-failed 3=false @2750", "write-failed 3=false @4750",
            "write-failed 3=false @9750",
            "write 3=false @14750",
        ])
        #expect(rig.bus.coil(3) == false)
        try await withTimeout { await rig.timeline.until { _ in rig.journal.current.isEmpty } }
        await rig.commander.stop()
    }

    @Test("a write whose outcome is unknown is answered so, not retried, and its pulse still ends")
    func outcomeUnknown() async throws {
        let rig = try CommanderRig(points: Self.door)
        rig.bus.failWrites(1, with: .timeout(function: "write"))
        rig.set("unlock", "true")
        let answer = try await rig.answer(1)
        #expect(answer.contains(#""ok":false"#) && answer.contains("outcome unknown"), "\(answer)")
        #expect(rig.timeline.count(startingWith: "write") == 1, "not retried")
        // The device may have switched on: the off comes a pulse later all the same.
        try await withTimeout { await rig.clock.sleepers(1) }
        rig.clock.advance(by: .seconds(1))
        try await rig.timeline.await(startingWith: "write 3=false")
        #expect(rig.bus.coil(3) == false)
        await rig.commander.stop()
    }

    @Test("a set is written once, read back, its value published, then answered, in that order")
    func readBackOrder() async throws {
        let rig = try CommanderRig(points: """
            [[device.point]]
            name = "setpoint"
            register = "holding"
            address = 10
            writable = true
            scale = 0.1
            """)
        rig.set("setpoint", "21.5")
        _ = try await rig.answer(1)
        #expect(rig.timeline.entries == [
            "write 10=[215] @0",
            "read 10",
            "data gateway/x/d/setpoint 21.5",
            #"answer gateway/x/d/setpoint/set/result {"ok":true,"value":21.5}"#,
        ])
        await rig.commander.stop()
    }

    @Test("nothing is written to a device offline or not yet polled, or for a value out of range")
    func refusedBeforeTheBus() async throws {
        let rig = try CommanderRig(points: """
            [[device.point]]
            name = "level"
            register = "holding"
            address = 0
            writable = true
            max = 100
            """)
        rig.set("level", "101")
        #expect(try await rig.answer(1).contains("above the maximum 100"))
        rig.board.set("d", .offline)
        rig.set("level", "5")
        #expect(try await rig.answer(2).contains("device 'd' is offline"))
        rig.board.set("d", .unknown)
        rig.set("level", "5")
        #expect(try await rig.answer(3).contains("has not answered a poll yet"))
        rig.set("nothing", "5")
        #expect(try await rig.answer(4).contains("unknown point 'nothing'"))
        #expect(rig.timeline.count(startingWith: "write") == 0)
        #expect(rig.timeline.count(startingWith: "read") == 0)
        await rig.commander.stop()
    }

    @Test("fail-safe: written once per point while the broker is away and the device online; not once the broker is back; not to a device offline")
    func failsafe() async throws {
        let rig = try CommanderRig(points: """
            [[device.point]]
            name = "barrier"
            register = "coil"
            address = 1
            writable = true
            failsafe = true
            """, gateway: "failsafe_after_s = 30")
        rig.publisher.connected.withLock { $0 = false }
        let written = await rig.commander.failsafe([0], whileBrokerAway: true)
        #expect(written.map(\.outcome.kind) == ["written"])
        #expect(rig.bus.coil(1) == true)
        rig.publisher.connected.withLock { $0 = true }
        #expect(await rig.commander.failsafe([0], whileBrokerAway: true).isEmpty, "the broker is back: nothing written")
        rig.publisher.connected.withLock { $0 = false }
        rig.board.set("d", .offline)
        #expect(await rig.commander.failsafe([0], whileBrokerAway: true).map(\.outcome) == [.deviceOffline])
        #expect(rig.timeline.count(startingWith: "write") == 1)
        await rig.commander.stop()
    }

    @Test("stop switches off a pulse still on, and takes no more commands")
    func stopEndsPulses() async throws {
        let rig = try CommanderRig(points: Self.door)
        rig.set("unlock", "true")
        _ = try await rig.answer(1)
        await rig.commander.stop()
        #expect(rig.bus.coil(3) == false)
        #expect(rig.journal.current.isEmpty)
        #expect(!rig.set("unlock", "true"), "stopped: not queued")
    }

    /// A door's pulse, a light, a mode by name, a scaled setpoint, a read-only count and a 32-bit value.
    static var panel: String { CommandTests.points() }

    @Test("1,000 garbage payloads: every one refused with a reason, zero writes, and a valid command still works")
    func garbage() async throws {
        let rig = try CommanderRig(points: Self.panel)
        var rng = SplitMix(seed: 38)
        let fixed: [String] = [
            "", " ", "tru", "yes", "3.5", "-1", "-0.5", "0x1", "1e999", "nan", "inf", "+", "{", "}", "[]", "[true]", "null",
            #"{"value":}"#, #"{"value": [1]}"#, #"{"value": {"a": 1}}"#, #"{"value": true, "value": false}"#,
            #"{"ts": 1}"#, #"{"value": true, "ts": "now"}"#, #"{"value": true, "ts": -5}"#, #"{"value": true, "id": ""}"#,
            #"{"value": "\ud800"}"#, #""unterminated"#, String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
            String(repeating: "x", count: 5000), "true\u{0}", "on\u{7}", #"{"value": tru}"#, "{\"value\": true}garbage",
        ]
        let targets = ["unlock", "light", "mode", "setpoint", "big"]
        for i in 0..<1000 {
            let payload: [UInt8]
            switch i % 3 {
            case 0:
                payload = Array(fixed[(i / 3) % fixed.count].utf8)
            case 1:   // random bytes, never valid UTF-8 (leading 0xFF)
                payload = [0xFF] + (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            default:  // random words that are no value of any point
                payload = Array(("x" + String((0..<Int.random(in: 1...20, using: &rng)).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789{}\":, ".randomElement(using: &rng)! })).utf8)
            }
            // One at a time: the queue holds 8, and this is about the checks, not the queue.
            #expect(rig.set(targets[i % targets.count], payload))
            try await rig.timeline.await(i + 1, of: "answer")
        }
        let answers = rig.timeline.entries.filter { $0.hasPrefix("answer ") }
        #expect(answers.count == 1000)
        #expect(answers.allSatisfy { $0.contains(#" {"ok":false,"error":"#) }, "\(answers.filter { !$0.contains(#"{"ok":false"#) }.prefix(3))")
        #expect(rig.timeline.count("write") == 0, "garbage reached the device")
        rig.set("light", "true")
        #expect(try await rig.answer(1001).hasSuffix(#"{"ok":true,"value":true}"#))
        #expect(rig.timeline.count("write") == 1)
        await rig.commander.stop()
    }

    @Test("a command on an idle device is checked and its write begun within the dispatcher's call (no hop through a queue); one behind it waits its turn")
    func startsAtOnce() async throws {
        let rig = try CommanderRig(points: Self.panel)
        rig.dispatcher.dispatch(rig.message("light", Array("true".utf8)))
        #expect(rig.bus.writesBegun == 1, "the write had not begun when dispatch returned")
        rig.dispatcher.dispatch(rig.message("light", Array("false".utf8)))
        #expect(rig.bus.writesBegun == 1, "the second command overtook the first")
        try await rig.timeline.await(2, of: "answer")
        #expect(rig.bus.writesBegun == 2)
        #expect(rig.timeline.entries.filter { $0.hasPrefix("write ") }.map { $0.split(separator: " ")[1] } == ["1=true", "1=false"])
        await rig.commander.stop()
    }

    @Test("10,000 commands dispatched as fast as the client reads them: each answered, done or 'busy' (at most 8 wait), and only the done ones write")
    func flood() async throws {
        let rig = try CommanderRig(points: Self.panel)
        let count = 10_000
        for i in 0..<count {
            rig.dispatcher.dispatch(rig.message("light", Array((i % 2 == 0 ? "true" : "false").utf8)))
        }
        try await rig.timeline.await(count, of: "answer")
        let answers = rig.timeline.entries.filter { $0.hasPrefix("answer ") }
        let ok = answers.filter { $0.contains(#"{"ok":true"#) }.count
        let busy = answers.filter { $0.contains("busy: device 'd' already has 8 commands waiting") }.count
        #expect(ok + busy == count, "\(answers.filter { !$0.contains(#"{"ok":true"#) && !$0.contains("busy") }.prefix(3))")
        #expect(ok >= 8 && busy > 0, "ok \(ok), busy \(busy)")
        #expect(rig.timeline.count("write") == ok, "one write per done command, none for the busy ones")
        await rig.commander.stop()
    }
}
