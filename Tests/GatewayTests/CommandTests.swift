import Foundation
import Gateway
import Synchronization
import MQTT
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Commands end to end: real Mosquitto, `gateway simulate` (its write log is the truth about what
/// reached the device), `gateway run`, and an MQTT 5 client sending commands.
@Suite("Gateway commands end to end (Mosquitto, gateway simulate, gateway run)", .timeLimit(.minutes(3)))
struct CommandTests {
    static func points(pulseMs: Int = 400) -> String {
        """
        [[device.point]]
        name = "unlock"
        register = "coil"
        address = 0
        writable = true
        pulse_ms = \(pulseMs)
        [[device.point]]
        name = "light"
        register = "coil"
        address = 1
        writable = true
        [[device.point]]
        name = "mode"
        register = "holding"
        address = 20
        writable = true
        map = { "0" = "normal", "1" = "free", "2" = "locked" }
        [[device.point]]
        name = "setpoint"
        register = "holding"
        address = 30
        type = "int16"
        scale = 0.1
        writable = true
        min = 5
        max = 30
        [[device.point]]
        name = "count"
        register = "holding"
        address = 40
        [[device.point]]
        name = "big"
        register = "holding"
        address = 50
        type = "uint32"
        writable = true
        """
    }

    static let b = "gateway/e2e"

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func startRig(pulseMs: Int = 400, extraGateway: String = "", simArgs: [String] = []) async throws -> Rig {
        let rig = try await Rig.start(points: points(pulseMs: pulseMs), simArgs: simArgs, pollMs: 100, extraGateway: extraGateway)
        try await rig.waitFor("\(b)/dev/status", "online")
        // The command subscription is made right after the connect; the log says when.
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        return rig
    }

    @Test("unlock pulse: on, then off after pulse_ms (seen in the device's write log), answered with the read-back value")
    func pulse() async throws {
        let rig = try await Self.startRig()
        let answer = try await rig.command("unlock", #"{"value": true, "id": "p1"}"#)
        #expect(answer == #"{"ok":true,"value":true}"#)
        let writes = try await rig.sim.waitForWrites(2)
        #expect(writes.map(\.fc) == [5, 5])
        #expect(writes.map(\.address) == [0, 0])
        #expect(writes.map(\.values) == [[1], [0]])
        let spacing = writes[1].mono_ms - writes[0].mono_ms
        // Never early. When exactly is CommanderTests' (a test clock): no upper bound on real time here.
        #expect(spacing >= 400, "off came \(spacing) ms after on")
        try await rig.waitFor("\(Self.b)/dev/unlock", "true")
        try await rig.waitFor("\(Self.b)/dev/unlock", "false")
        // The same id again (a QoS 1 duplicate): the first answer, nothing executed.
        let again = try await rig.command("unlock", #"{"value": true, "id": "p1"}"#)
        #expect(again == answer)
        try await rig.command("light", "ON")
        let after = try await rig.sim.waitForWrites(3)
        #expect(after.count == 3 && after[2].address == 1, "the repeated id wrote something: \(after)")
        await rig.shutdown()
    }

    @Test("a write whose answer is lost: answered 'outcome unknown', written once, never retried")
    func lostAnswer() async throws {
        // Long poll period: the bus is idle when the command comes; offline_after high: the
        // device stays online while its answers are late.
        let rig = try await Rig.start(points: Self.points(), simArgs: [], pollMs: 5000, offlineAfter: 1000)
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        try await rig.sim.setLatency(ms: 1000)   // the bus's timeout_ms is 300
        let answer = try await rig.command("light", "true")
        #expect(answer.hasPrefix(#"{"ok":false,"error":"outcome unknown: "#), "\(answer)")
        // The device did get it (it answers late); the gateway did not send it again.
        let first = try await rig.sim.waitForWrites(1)
        #expect(first.map(\.address) == [1])
        try await rig.sim.setLatency(ms: 0)
        let second = try await rig.command("mode", "free")
        #expect(second == #"{"ok":true,"value":"free"}"#)
        let writes = try await rig.sim.waitForWrites(2)
        #expect(writes.map(\.address) == [1, 20], "a retry reached the device: \(writes)")
        await rig.shutdown()
    }

    @Test("SIGHUP during a pulse: the gateway keeps running, the pulse ends on time, commands still work")
    func hangupDuringPulse() async throws {
        let rig = try await Self.startRig(pulseMs: 1500)
        try await rig.command("unlock", "true")
        rig.gateway.signal(SIGHUP)
        _ = try await rig.gateway.waitForLine(containing: "SIGHUP received")
        rig.gateway.signal(SIGHUP)   // twice: still not the default action
        let writes = try await rig.sim.waitForWrites(2)
        #expect(writes.map(\.values) == [[1], [0]])
        #expect(writes[1].mono_ms - writes[0].mono_ms >= 1500, "the off came early: \(writes)")
        #expect(try await rig.command("light", "true") == #"{"ok":true,"value":true}"#)
        #expect(rig.gateway.exitStatus == nil, "the gateway ended:\n\(rig.gateway.tail)")
        #expect(!rig.payloads("\(Self.b)/status").contains("offline"))
        await rig.shutdown()
    }

    @Test("1,000 commands as fast as they can be published: each is answered (done or 'busy'), only 'ok' ones write")
    func commandFlood() async throws {
        // What bounds memory here is structural: at most 8 commands wait per device (the 'busy'
        // answers below), and the client's incoming queue is bounded. Memory is measured by the
        // benchmarks, not asserted here.
        let rig = try await Self.startRig()
        // 10,000 go through the dispatcher in-process (CommanderTests.flood); here, the wire.
        let count = 1_000
        for i in 0..<count {
            try await rig.observer.enqueue(to: "\(Self.b)/dev/light/set", payload: Array((i % 2 == 0 ? "true" : "false").utf8), qos: .atLeastOnce)
        }
        let resultTopic = "\(Self.b)/dev/light/set/result"
        try await rig.waitUntil(timeout: .seconds(120), "an answer to every command") {
            rig.watcher.count(resultTopic) >= count
        }
        let answers = rig.payloads(resultTopic)
        let ok = answers.filter { $0.hasPrefix(#"{"ok":true"#) }.count
        let busy = answers.filter { $0.contains("busy") }.count
        #expect(answers.count == count)
        #expect(ok + busy == count, "answers other than ok or busy: \(answers.filter { !$0.hasPrefix(#"{"ok":true"#) && !$0.contains("busy") }.prefix(3))")
        #expect(ok >= 8 && busy > 0, "ok \(ok), busy \(busy)")
        // The device was written once per 'ok' answer, and by nothing else.
        let writes = try await rig.sim.waitForWrites(ok)
        #expect(writes.count == ok && writes.allSatisfy { $0.address == 1 })
        await rig.shutdown()
    }

    @Test("SIGTERM during a pulse: the off is written before the gateway exits")
    func stopDuringPulse() async throws {
        let rig = try await Self.startRig(pulseMs: 600_000)
        try await rig.command("unlock", "true")
        rig.gateway.signal(SIGTERM)
        #expect(try await rig.gateway.waitForExit(timeout: .seconds(15)) == 0)
        let writes = try await rig.sim.waitForWrites(2)
        #expect(writes.map(\.values) == [[1], [0]])
        #expect(rig.gateway.lines.contains { $0.contains("pulse ended") && $0.contains("gateway stopping") })
        await rig.shutdown()
    }

    @Test("killed during a pulse (kill -9): the next start switches the pulse off before anything else; the journal is emptied")
    func crashDuringPulse() async throws {
        let rig = try await Self.startRig(pulseMs: 600_000)
        let journal = (rig.configPath as NSString).deletingLastPathComponent + "/pulses"
        #expect(!FileManager.default.fileExists(atPath: journal), "no pulse yet, no journal file")
        try await rig.command("unlock", "true")
        #expect(try String(contentsOfFile: journal, encoding: .utf8) == "dev/unlock bus=plc unit=1 coil=0 width=1 multiple=0\n")
        rig.gateway.signal(SIGKILL)
        _ = try await rig.gateway.waitForExit(timeout: .seconds(10))
        #expect(rig.sim.writes.map(\.values) == [[1]], "the door is open and nobody will close it")
        // The next run: the off is written without any command, and the journal is empty again.
        let next = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", rig.configPath])
        let writes = try await rig.sim.waitForWrites(2)
        #expect(writes.map(\.values) == [[1], [0]] && writes[1].address == 0)
        _ = try await next.waitForLine(containing: "pulse ended: switched off (left on by an earlier run")
        #expect(try String(contentsOfFile: journal, encoding: .utf8) == "")
        // Then it runs normally: birth, command subscription.
        try await rig.waitUntil("the new run's birth") { rig.payloads("\(Self.b)/status").filter { $0 == "online" }.count >= 2 }
        _ = try await next.waitForLine(containing: "subscribed to commands")
        #expect(next.lines.filter { $0.contains("left on by an earlier run") }.count >= 1)
        await next.stop()
        await rig.shutdown()
    }

    /// A rig whose gateway was killed (SIGKILL) with the unlock pulse on (the device took the on).
    static func killedDuringPulse() async throws -> Rig {
        let rig = try await Self.startRig(pulseMs: 600_000)
        try await rig.command("unlock", "true")
        rig.gateway.signal(SIGKILL)
        _ = try await rig.gateway.waitForExit(timeout: .seconds(10))
        return rig
    }

    /// The rig's config with the unlock pulse point moved to coil 7 (`to: nil`: removed).
    static func moveUnlock(_ rig: Rig, to address: Int?) throws {
        let text = try String(contentsOfFile: rig.configPath, encoding: .utf8)
        let old = "name = \"unlock\"\nregister = \"coil\"\naddress = 0\n"
        #expect(text.contains(old))
        let new = address.map { "name = \"unlock\"\nregister = \"coil\"\naddress = \($0)\n" } ?? "name = \"unlocked_gone\"\nregister = \"coil\"\naddress = 9\n"
        try text.replacingOccurrences(of: old, with: new).write(toFile: rig.configPath, atomically: true, encoding: .utf8)
    }

    @Test("killed during a pulse, then started with a configuration that no longer has the point: the off is written where the journal says the on went")
    func crashPulsePointRemoved() async throws {
        let rig = try await Self.killedDuringPulse()
        let journalPath = (rig.configPath as NSString).deletingLastPathComponent + "/pulses"
        #expect(try String(contentsOfFile: journalPath, encoding: .utf8) == "dev/unlock bus=plc unit=1 coil=0 width=1 multiple=0\n")
        try Self.moveUnlock(rig, to: nil)
        let next = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", rig.configPath])
        let writes = try await rig.sim.waitForWrites(2)
        #expect(writes.map { [$0.address] + $0.values } == [[0, 1], [0, 0]], "\(writes)")
        _ = try await next.waitForLine(containing: "pulse ended: switched off where it was switched on")
        #expect(try String(contentsOfFile: journalPath, encoding: .utf8) == "")
        await next.stop()
        await rig.shutdown()
    }

    @Test("killed during a pulse, device unreachable at the next start: the off is retried until the device takes it")
    func crashDuringPulseDeviceAway() async throws {
        let rig = try await Self.killedDuringPulse()
        _ = await rig.sim.stop()
        let next = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", rig.configPath])
        _ = try await next.waitForLine(containing: "pulse end FAILED", timeout: .seconds(20))
        // The device comes back (same port): the retry writes the off, without any command.
        let again = try await GatewaySimulator.start([], port: rig.simPort)
        let writes = try await again.waitForWrites(1, timeout: .seconds(20))
        #expect(writes.map(\.values) == [[0]] && writes[0].address == 0)
        _ = try await next.waitForLine(containing: "pulse ended: switched off (retried")
        await next.stop()
        _ = await again.stop()
        await rig.shutdown()
    }

    @Test("priority: with a slow poll round queued on the bus, a command's write goes out next, ahead of the polls")
    func writeAheadOfPolls() async throws {
        // Eight more devices on the same bus (units 2...9), every answer delayed by a second: each
        // poll round queues 9 reads that take 9 s. A second a read (under the bus's 2.5 s
        // timeout) leaves the command, published when a round starts, a second or more to reach
        // the gateway before the read in progress ends, however loaded the machine (with 150 ms
        // a read, a command delayed by the full suite's load found 4 reads ahead of it).
        var body = """
            [[bus]]
            name = "plc"
            type = "tcp"
            host = "127.0.0.1"
            port = PORT
            timeout_ms = 2500
            [[device]]
            name = "dev"
            bus = "plc"
            unit = 1
            poll_ms = 5000
            \(Self.points())
            """
        for u in 2...9 {
            body += """

                [[device]]
                name = "slow\(u)"
                bus = "plc"
                unit = \(u)
                poll_ms = 2000
                  [[device.point]]
                  name = "v"
                  register = "holding"
                  address = 0
                """
        }
        var sim = ["--latency-ms", "1000", "--log-requests"]
        for u in 1...9 { sim += ["--unit", "\(u)"] }
        let rig = try await Rig.start(points: "", simArgs: sim, bodyWithPort: { [body] port in body.replacingOccurrences(of: "PORT", with: "\(port)") })
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        @Sendable func isRequest(_ l: String) -> Bool { l.hasPrefix("{\"request\":") }
        // Wait for the start of a fresh round (a read from unit 2), then send the command at once.
        let seenBefore = rig.sim.process.lines.filter(isRequest).count
        let counter = Mutex(0)
        let trigger = try await rig.sim.process.waitForLine(timeout: .seconds(30)) { line in
            guard isRequest(line) else { return false }
            return counter.withLock { $0 += 1; return $0 > seenBefore } && line.contains("\"unit\":2,") && line.contains("\"fc\":3,")
        }
        try await rig.observer.publish(to: "\(Self.b)/dev/light/set", payload: Array("true".utf8), qos: .atLeastOnce)
        try await rig.sim.waitForWrites(1)
        let lines = rig.sim.process.lines.filter { isRequest($0) || $0.hasPrefix("{\"write\":") }
        guard let t = lines.firstIndex(of: trigger), let w = lines.firstIndex(where: { $0.contains("\"fc\":5,") && isRequest($0) }) else {
            Issue.record("no trigger or write request in the log")
            await rig.shutdown()
            return
        }
        let readsBetween = lines[t..<w].filter { isRequest($0) }.count
        // The read in progress when the command arrived, and at most one more that started meanwhile
        // (first-come order would put all nine reads of the round first: measured 9).
        #expect(readsBetween <= 2, "\(readsBetween) reads went out before the write:\n\(lines[t...].prefix(12).joined(separator: "\n"))")
        await rig.shutdown()
    }
}
