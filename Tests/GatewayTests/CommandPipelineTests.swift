@testable import Gateway
import GatewayConfig
@testable import MQTT
import Testing

/// The command checks and the pulse logic in-process, with the time passed in: no broker, no bus.
@Suite("Command pipeline and pulses")
struct CommandPipelineTests {
    static let t0 = ContinuousClock.now
    static let unix0: Int64 = 1_800_000_000_000

    func message(_ payload: String, topic: String = "gateway/x/door/lock/set", retain: Bool = false, expiry: UInt32? = nil) -> MQTTMessage {
        var p = MQTTProperties()
        p.messageExpiryInterval = expiry
        return MQTTMessage(topic: topic, payload: Array(payload.utf8), qos: .atLeastOnce, retain: retain, properties: p)
    }

    /// A target that is point 3 for "lock", unknown for anything else.
    func admit(_ pipeline: inout CommandPipeline, _ m: MQTTMessage, name: String = "lock", at: Duration = .zero,
               receivedAgo: Duration = .zero, signed: Bool = false, clockSynced: Bool = true) -> CommandPipeline.Admission<Int> {
        let now = Self.t0 + at
        return pipeline.admit(m, name: name, receivedAt: now - receivedAgo, now: now, unixNow: Self.unix0 + Int64(at.components.seconds * 1000),
                              clockTrusted: { clockSynced }) { () throws(CommandRefusal) -> Int in
            guard name == "lock" else { throw .badValue("unknown point '\(name)'") }
            return 3
        } mustBeSigned: { _ in signed }
    }

    func refusal(_ a: CommandPipeline.Admission<Int>) -> String? {
        if case .refuse(let r, _, _) = a { r.reason } else { nil }
    }

    @Test("each check refuses on its own, in order, before anything is executed")
    func refusals() {
        var p = CommandPipeline(maxAgeMs: nil, signing: nil)
        #expect(refusal(admit(&p, message("true", retain: true)))?.hasPrefix("retained command refused") == true)
        #expect(refusal(admit(&p, message("true"), name: "nope")) == "unknown point 'nope'")
        #expect(refusal(admit(&p, message("{\"value\": "))) != nil)
        #expect(refusal(admit(&p, message("true", expiry: 0)))?.contains("expiry") == true)
        #expect(refusal(admit(&p, message("true", expiry: 5), receivedAgo: .seconds(6)))?.contains("expiry") == true)
        guard case .execute(let target, let req) = admit(&p, message("true", expiry: 5), receivedAgo: .seconds(1)) else {
            Issue.record("a fresh command was not let through")
            return
        }
        #expect(target == 3 && req.value == .text("true"))   // plain text, read as the point needs later
    }

    @Test("command_max_age_ms judges ts against the time passed in")
    func age() {
        var p = CommandPipeline(maxAgeMs: 5000, signing: nil)
        #expect(refusal(admit(&p, message("true")))?.contains("command_max_age_ms is set") == true)
        #expect(refusal(admit(&p, message("{\"value\":true,\"ts\":\(Self.unix0 - 6000)}")))?.hasPrefix("stale command: sent 6000 ms ago") == true)
        #expect(refusal(admit(&p, message("{\"value\":true,\"ts\":\(Self.unix0 + 6000)}")))?.contains("6000 ms ahead") == true)
        #expect(refusal(admit(&p, message("{\"value\":true,\"ts\":\(Self.unix0 - 4000)}"))) == nil)
    }

    @Test("a repeated id gets the first answer and is not executed; a refusal is repeated too; ids are per point")
    func repeatedIDs() {
        var p = CommandPipeline(maxAgeMs: nil, signing: nil)
        let first = message("{\"value\":true,\"id\":\"a1\"}")
        guard case .execute(_, let req) = admit(&p, first) else { Issue.record("first not executed"); return }
        p.finish("lock", request: req, answer: .ok(.bool(true)), now: Self.t0)
        guard case .repeated(let answer, _) = admit(&p, first, at: .seconds(1)) else { Issue.record("repeat executed"); return }
        #expect(answer == .ok(.bool(true)))
        // The same id on another point is another command.
        #expect(refusal(admit(&p, first, name: "other")) == "unknown point 'other'")
        // A refused command's id: its repeat gets the same refusal, even when it would pass now.
        #expect(refusal(admit(&p, message("{\"value\":true,\"id\":\"e1\"}", expiry: 0)))?.contains("expiry") == true)
        guard case .repeated(.refused(let why), _) = admit(&p, message("{\"value\":true,\"id\":\"e1\"}")) else {
            Issue.record("a refused id was executed on its repeat")
            return
        }
        #expect(why == .expired)
        // A retained command is refused before its payload is read: its id is not taken.
        #expect(refusal(admit(&p, message("{\"value\":true,\"id\":\"r1\"}", retain: true)))?.hasPrefix("retained") == true)
        guard case .execute = admit(&p, message("{\"value\":true,\"id\":\"r1\"}")) else { Issue.record("r1 not executed"); return }
    }

    @Test("a refused signature leaves no trace: the genuine command with that id goes through afterwards")
    func signatureRefusalLeavesNoID() throws {
        let key = Array("k3y-for-tests".utf8)
        let signing = SignedCommands(key: key, maxAgeMs: 30_000, stateDirectory: nil)
        var p = CommandPipeline(maxAgeMs: nil, signing: signing)
        let topic = "gateway/x/door/lock/set"
        let forged = "{\"value\":true,\"ts\":\(Self.unix0),\"id\":\"s1\",\"sig\":\"00\"}"
        guard case .refuse(let r, _, let why) = admit(&p, message(forged, topic: topic), signed: true) else { Issue.record("forged taken"); return }
        #expect(r == .signatureRequired && why == "wrong signature")
        let sig = CommandSigner(key: key).sign(topic: topic, value: .bool(true), ts: Self.unix0, id: "s1")
        let genuine = "{\"value\":true,\"ts\":\(Self.unix0),\"id\":\"s1\",\"sig\":\"\(sig)\"}"
        guard case .execute = admit(&p, message(genuine, topic: topic), signed: true) else { Issue.record("genuine refused"); return }
        // Replayed: refused by the signature check (the id is now used), whatever the id cache says.
        guard case .refuse(_, _, let replay) = admit(&p, message(genuine, topic: topic), signed: true) else { Issue.record("replay taken"); return }
        #expect(replay?.contains("already used") == true)
        // A point that need not be signed takes a plain command.
        guard case .execute = admit(&p, message("true", topic: topic), signed: false) else { Issue.record("unsigned point refused"); return }
    }

    @Test("clock not synchronised: signed and timed commands refused with that answer (the signed one's id spent), plain ones taken")
    func clockNotSynchronised() throws {
        let key = Array("k3y-for-tests".utf8)
        let topic = "gateway/x/door/lock/set"
        let signed = CommandSigner(key: key).payload(topic: topic, value: .bool(true), ts: Self.unix0, id: "c1")
        var p = CommandPipeline(maxAgeMs: nil, signing: SignedCommands(key: key, maxAgeMs: 30_000, stateDirectory: nil))
        #expect(refusal(admit(&p, message(signed, topic: topic), signed: true, clockSynced: false)) == "gateway clock not synchronised")
        guard case .execute = admit(&p, message("true", topic: topic), signed: false, clockSynced: false) else { Issue.record("plain refused"); return }
        // Synchronised now: the refused command's copy is a replay (its id was spent).
        guard case .refuse(_, _, let why) = admit(&p, message(signed, topic: topic), name: "lock", signed: true) else { Issue.record("copy taken"); return }
        #expect(why?.contains("already used") == true, "\(why ?? "")")
        var timed = CommandPipeline(maxAgeMs: 5000, signing: nil)
        #expect(refusal(admit(&timed, message("{\"value\":true,\"ts\":\(Self.unix0)}"), clockSynced: false)) == "gateway clock not synchronised")
        guard case .execute = admit(&timed, message("{\"value\":true,\"ts\":\(Self.unix0)}")) else { Issue.record("timed refused when synced"); return }
    }

    @Test("pulse journal lines: where the off goes, read back as written; the reaper takes the lines no pulse point owns now")
    func pulseJournalLines() throws {
        let t = PulseTarget(bus: "plc", unit: 3, coil: false, address: 40, width: 2, multiple: true)
        let line = t.line(device: "door", point: "unlock")
        #expect(line == "door/unlock bus=plc unit=3 holding=40 width=2 multiple=1")
        #expect(PulseTarget.parse(line).key == "door/unlock" && PulseTarget.parse(line).target == t)
        #expect(PulseTarget.parse("door/unlock").target == nil, "an earlier release's line: the name only")
        #expect(PulseTarget.parse("door/unlock bus=plc unit=x coil=0 width=1 multiple=0").target == nil)
        #expect(PulseTarget.parse("door/unlock bus=plc unit=1 coil=0 holding=0 width=1 multiple=0").target == nil)
        let plan = GatewayPlan(try ConfigLoader.parse("""
            [gateway]
            id = "x"
            [[bus]]
            name = "plc"
            type = "tcp"
            host = "127.0.0.1"
            [[device]]
            name = "door"
            bus = "plc"
            unit = 1
            [[device.point]]
            name = "unlock"
            register = "coil"
            address = 0
            writable = true
            pulse_ms = 500
            """))
        let current = "door/unlock bus=plc unit=1 coil=0 width=1 multiple=0"
        let moved = "door/unlock bus=plc unit=1 coil=5 width=1 multiple=0"
        let gone = "old/latch bus=plc unit=2 coil=1 width=1 multiple=0"
        let orphans = PulseReaper.orphans([current, moved, gone, "door/unlock", "old/other"], plan: plan)
        #expect(orphans.adopt == [moved, gone], "the point's own line and its legacy line are its commander's")
        #expect(orphans.unknown == ["old/other"])
    }

    @Test("pulses: an end fires once; a new on replaces it; an off by command cancels it; a failed off retries")
    func pulses() {
        var m = PulseStateMachine()
        let t0 = Self.t0
        guard case .scheduleOff(3, let g1, let at1, .over) = m.switchedOn(3, pulse: .seconds(3), now: t0) else { Issue.record("no end"); return }
        #expect(at1 == t0 + .seconds(3) && m.on == [3])
        // Extended before it ended: the first end is stale.
        guard case .scheduleOff(3, let g2, let at2, .over) = m.switchedOn(3, pulse: .seconds(3), now: t0 + .seconds(2)) else { Issue.record("no end"); return }
        #expect(g2 != g1 && at2 == t0 + .seconds(5))
        #expect(m.endDue(3, generation: g1, why: .over) == .none)
        #expect(m.endDue(3, generation: g2, why: .over) == .writeOff(point: 3, attempts: 5, why: .over))
        #expect(m.endDue(3, generation: g2, why: .over) == .none, "an end is written once")
        #expect(m.on.isEmpty)
        // The device did not take the off: retried after offRetry, with one attempt each time.
        guard case .scheduleOff(3, let g3, let at3, .retry) = m.offFailed(3, now: t0 + .seconds(5)) else { Issue.record("no retry"); return }
        #expect(at3 == t0 + .seconds(5) + PulseStateMachine.offRetry && m.on == [3])
        #expect(m.endDue(3, generation: g3, why: .retry) == .writeOff(point: 3, attempts: 1, why: .retry))
        // Switched off by a command: the timer goes, its end is stale; nothing to cancel twice.
        guard case .scheduleOff(4, let g4, _, _) = m.switchedOn(4, pulse: .seconds(1), now: t0) else { Issue.record("no end"); return }
        #expect(m.switchedOff(4) == .cancelTimer(point: 4))
        #expect(m.switchedOff(4) == .none)
        #expect(m.endDue(4, generation: g4, why: .over) == .none)
    }

    @Test("pulses: left on by an earlier run, ended first; stopping hands back every pulse still on")
    func pulsesAtStartAndStop() {
        var m = PulseStateMachine()
        let actions = m.leftOn([1, 5])
        #expect(actions.count == 2 && m.on == [1, 5])
        guard case .offNow(1, let g, .leftOnEarlier) = actions[0] else { Issue.record("\(actions)"); return }
        _ = m.switchedOn(7, pulse: .seconds(60), now: Self.t0)
        #expect(m.endDue(1, generation: g, why: .leftOnEarlier) == .writeOff(point: 1, attempts: 5, why: .leftOnEarlier))
        #expect(m.stop() == [5, 7])
        #expect(m.on.isEmpty)
    }
}

/// The one job queue of Modbus and serial devices, in-process.
@Suite("Device job queue")
struct DeviceJobQueueTests {
    enum TestJob: DeviceJob, Equatable {
        case command(Int)
        case own(Int)
        var isCommand: Bool { if case .command = self { true } else { false } }
        func isCovered(by waiting: TestJob) -> Bool { if case .own = self { self == waiting } else { false } }
    }

    @Test("jobs run in arrival order with the state; commands are bounded, the gateway's own jobs are not; a covered job is not queued twice; stop runs what is queued and hands the state back")
    func queue() async {
        let q = DeviceJobQueue<TestJob, [TestJob]>([], executor: globalConcurrentExecutor)
        // Nothing runs until the first job says start; the rest queue behind it.
        #expect(q.enqueue(.command(0)) == .start)
        for i in 1..<CommandRequest.pendingPerDevice { #expect(q.enqueue(.command(i)) == .queued) }
        #expect(q.enqueue(.command(99)) == .refused, "past the bound")
        #expect(q.enqueue(.own(1)) == .queued)
        #expect(q.enqueue(.own(1)) == .queued)   // covered: taken, not queued again
        #expect(q.enqueue(.own(2)) == .queued)
        let served = Task { await q.serve { job, seen in seen.append(job) } }
        let state = await q.stop()
        await served.value
        #expect(state == (0..<CommandRequest.pendingPerDevice).map { TestJob.command($0) } + [.own(1), .own(2)])
        #expect(q.enqueue(.own(3)) == .refused, "stopped")
    }
}
