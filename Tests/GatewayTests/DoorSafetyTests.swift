import Foundation
@testable import Gateway
import GatewayConfig
import MQTT
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Signatures, counters and latches: the pure parts.
@Suite("Door safety: signatures, counters, latches (pure)")
struct DoorSafetyLogicTests {
    static let key = Array("0123456789abcdef-site-key".utf8)

    @Test("a signature verifies only for the same topic, value, ts, id and key; hex and base64 both accepted")
    func signature() {
        let s = CommandSigner(key: Self.key)
        let sig = s.sign(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1")
        #expect(sig.count == 64)
        #expect(s.verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1", signature: sig))
        #expect(s.verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1", signature: sig.uppercased()))
        let bytes = CommandSigner.decode(sig)!
        let b64 = Data(bytes).base64EncodedString()
        #expect(s.verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1", signature: b64))
        #expect(s.verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1", signature: String(b64.dropLast())))   // no padding
        #expect(!s.verify(topic: "gw/door/light/set", value: .bool(true), ts: 1000, id: "a1", signature: sig))
        #expect(!s.verify(topic: "gw/door/unlock/set", value: .bool(false), ts: 1000, id: "a1", signature: sig))
        #expect(!s.verify(topic: "gw/door/unlock/set", value: .text("true"), ts: 1001, id: "a1", signature: sig))
        #expect(!s.verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a2", signature: sig))
        #expect(!CommandSigner(key: Array("another-key-of-16+".utf8)).verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1", signature: sig))
        #expect(!s.verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1", signature: String(sig.dropLast(2))))
        #expect(!s.verify(topic: "gw/door/unlock/set", value: .bool(true), ts: 1000, id: "a1", signature: "not a signature"))
    }

    @Test("the canonical string is topic, value, ts, id, one per line (the README's Python sender makes the same)")
    func canonical() {
        #expect(CommandSigner.canonical(topic: "t/x/set", value: .number("21.50"), ts: 5, id: "i") == Array("t/x/set\n21.50\n5\ni".utf8))
        #expect(CommandSigner.canonical(topic: "t/x/set", value: .text("free"), ts: 5, id: "7") == Array("t/x/set\nfree\n5\n7".utf8))
        #expect(CommandSigner.hex(Array(repeating: 0xAB, count: 2)) == "abab")
    }

    @Test("signed-command gate: accepted once; replayed, stale, future, unsigned and wrongly signed are refused")
    func gate() throws {
        let gate = SignedCommands(key: Self.key, maxAgeMs: 30_000, stateDirectory: nil)
        let now: Int64 = 1_800_000_000_000
        let t0 = ContinuousClock.now
        func check(_ r: CommandRequest, topic: String = "gw/d/p/set", now: Int64, after: Duration = .zero) -> String? {
            gate.check(r, topic: topic, now: now, monotonic: t0 + after)
        }
        #expect(check(Self.request(.bool(true), ts: now - 1000, id: "x1"), now: now) == nil)
        #expect(check(Self.request(.bool(true), ts: now - 1000, id: "x1"), now: now)?.contains("replay") == true)
        #expect(check(Self.request(.bool(true), ts: now - 31_000, id: "x2"), now: now)?.contains("from now") == true)
        #expect(check(Self.request(.bool(true), ts: now + 31_000, id: "x3"), now: now)?.contains("from now") == true)
        #expect(check(CommandRequest(value: .bool(true)), now: now)?.contains("unsigned") == true)
        #expect(check(Self.request(.bool(true), ts: now, id: "x4", topic: "gw/d/other/set"), now: now) == "wrong signature")
        // An id is forgotten once its window has passed on the monotonic clock.
        #expect(check(Self.request(.bool(true), ts: now + 40_000, id: "x1"), now: now + 40_000, after: .seconds(40)) == nil)
        // A reload that lengthens the window does not make forgotten ids acceptable again: at
        // now + 40 s the 30 s window has forgotten every id with a ts before now + 10 s, so no
        // ts before that is taken, although the new 60 s window would reach back to now - 20 s.
        gate.update(key: Self.key, maxAgeMs: 60_000, now: now + 40_000)
        #expect(check(Self.request(.bool(true), ts: now - 1000, id: "forgotten"), now: now + 40_000, after: .seconds(40))?.contains("not after") == true)
        #expect(check(Self.request(.bool(true), ts: now + 39_000, id: "x9"), now: now + 40_000, after: .seconds(40)) == nil)
        // A new key: commands signed with the old one are refused.
        gate.update(key: Array("a-completely-new-key!".utf8), maxAgeMs: 60_000, now: now + 40_000)
        #expect(check(Self.request(.bool(true), ts: now + 40_000, id: "x10"), now: now + 40_000, after: .seconds(40)) == "wrong signature")
    }

    static func request(_ value: CommandRequest.Value, ts: Int64, id: String, topic: String = "gw/d/p/set") -> CommandRequest {
        CommandRequest(value: value, ts: ts, id: id, sig: CommandSigner(key: key).sign(topic: topic, value: value, ts: ts, id: id))
    }

    @Test("ids are forgotten by the monotonic clock: a wall clock stepped forward forgets nothing, one stepped back revives no forgotten command")
    func gateClockSteps() {
        let gate = SignedCommands(key: Self.key, maxAgeMs: 30_000, stateDirectory: nil)
        let now: Int64 = 1_800_000_000_000
        let t0 = ContinuousClock.now
        #expect(gate.check(Self.request(.bool(true), ts: now, id: "a"), topic: "gw/d/p/set", now: now, monotonic: t0) == nil)
        // The wall clock jumps 1 h ahead and back within a second (NTP's first sync after boot):
        // the id is still remembered, and its copy refused.
        #expect(gate.check(Self.request(.bool(true), ts: now, id: "a"), topic: "gw/d/p/set", now: now + 1000, monotonic: t0 + .seconds(1))?.contains("replay") == true)
        // 40 s later by the monotonic clock the id is forgotten; the wall clock has stepped back
        // 40 s, so the copy's ts looks fresh again: the floor refuses it.
        let why = gate.check(Self.request(.bool(true), ts: now, id: "a"), topic: "gw/d/p/set", now: now, monotonic: t0 + .seconds(40))
        #expect(why?.contains("not after") == true, "\(why ?? "accepted")")
        #expect(gate.check(Self.request(.bool(true), ts: now + 1, id: "b"), topic: "gw/d/p/set", now: now, monotonic: t0 + .seconds(40)) == nil)
    }

    @Test("ids and the floor survive a restart (a new gate on the same state_dir); a refused command's id is spent; the file stays bounded")
    func gatePersisted() async throws {
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-ids")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let now: Int64 = 1_800_000_000_000
        let t0 = ContinuousClock.now
        let first = SignedCommands(key: Self.key, maxAgeMs: 30_000, stateDirectory: dir, now: t0)
        #expect(first.check(Self.request(.bool(true), ts: now, id: "a"), topic: "gw/d/p/set", now: now, monotonic: t0) == nil)
        // Refused elsewhere (unknown device): spent all the same; a wrong signature spends nothing.
        let spent = CommandSigner(key: Self.key).payload(topic: "gw/new/p/set", value: .bool(true), ts: now, id: "b")
        first.spend(Array(spent.utf8), topic: "gw/new/p/set", now: t0)
        first.spend(Array(spent.utf8), topic: "gw/other/p/set", now: t0)
        await first.flushed()
        #expect(try String(contentsOfFile: dir + "/command-ids", encoding: .utf8).split(separator: "\n").sorted() == ["\(now) a", "\(now) b"])
        // The restart: both are remembered for a whole window from the new start.
        let t1 = t0 + .seconds(5)
        let second = SignedCommands(key: Self.key, maxAgeMs: 30_000, stateDirectory: dir, now: t1)
        #expect(second.check(Self.request(.bool(true), ts: now, id: "a"), topic: "gw/d/p/set", now: now + 5000, monotonic: t1)?.contains("replay") == true)
        #expect(second.check(Self.request(.bool(true), ts: now, id: "b", topic: "gw/new/p/set"), topic: "gw/new/p/set", now: now + 5000, monotonic: t1)?.contains("replay") == true)
        #expect(second.check(Self.request(.bool(true), ts: now, id: "c", topic: "gw/other/p/set"), topic: "gw/other/p/set", now: now + 5000, monotonic: t1) == nil)
        // Forgotten a window later: the floor is written, and a third start still refuses them
        // although the wall clock stepped back.
        #expect(second.check(Self.request(.bool(true), ts: now + 40_000, id: "d"), topic: "gw/d/p/set", now: now + 40_000, monotonic: t1 + .seconds(31)) == nil)
        await second.flushed()
        let third = SignedCommands(key: Self.key, maxAgeMs: 30_000, stateDirectory: dir, now: t1 + .seconds(40))
        #expect(third.check(Self.request(.bool(true), ts: now, id: "a"), topic: "gw/d/p/set", now: now, monotonic: t1 + .seconds(40))?.contains("replay") == true)
        #expect(third.check(Self.request(.bool(true), ts: now, id: "z"), topic: "gw/d/p/set", now: now, monotonic: t1 + .seconds(40))?.contains("not after") == true,
                "the floor is read back: an id never seen, with a ts at the floor")
        // Bounded: 3000 commands, each forgotten before the next, leave a file of at most
        // about twice the ids remembered (1000 lines at least before a rewrite).
        var t = t1 + .seconds(40)
        for i in 0..<3000 {
            t += .seconds(31)
            let ts = now + 100_000 + Int64(i) * 31_000
            #expect(third.check(Self.request(.bool(true), ts: ts, id: "n\(i)"), topic: "gw/d/p/set", now: ts, monotonic: t) == nil)
        }
        await third.flushed()
        let lines = try String(contentsOfFile: dir + "/command-ids", encoding: .utf8).split(separator: "\n").count
        #expect(lines <= 2002, "\(lines) lines")
    }

    @Test("counters: increments, one wrap-around, a reset said as such (never a negative count)")
    func counter() {
        var c = CounterTracker(bits: 16)
        #expect(c.observe(10) == nil)       // the first reading is the baseline
        #expect(c.observe(13) == .count(3))
        #expect(c.observe(13) == nil)
        #expect(c.observe(65_535) == .count(65_522))
        #expect(c.observe(2) == .count(3))  // wrapped
        #expect(c.observe(0) == .reset(count: 0))
        #expect(c.observe(4) == .count(4))
        var c32 = CounterTracker(bits: 32)
        _ = c32.observe(4_294_967_290)
        #expect(c32.observe(5) == .count(11))
        #expect(c32.observe(1) == .reset(count: 1))
    }

    @Test("latches: one event per time it is seen set after being clear; set at the first reading counts")
    func latch() {
        var l = LatchTracker()
        #expect(l.observe(true) == .set)
        #expect(l.observe(true) == nil)
        #expect(l.observe(false) == nil)
        #expect(l.observe(true) == .set)
        #expect(PointEvent.count(3).payload(ts: 7) == Array(#"{"event_type":"count","count":3,"ts":7}"#.utf8))
    }

    @Test("config: signed needs the key file; failsafe needs a time; counter and latch types are checked")
    func config() throws {
        func issues(_ gateway: String, _ point: String) -> [String] {
            do {
                _ = try ConfigLoader.parse("""
                    [gateway]
                    id = "s"
                    \(gateway)
                    [[bus]]
                    name = "b"
                    type = "tcp"
                    host = "127.0.0.1"
                    [[device]]
                    name = "d"
                    bus = "b"
                    [[device.point]]
                    name = "p"
                    \(point)
                    """)
                return []
            } catch {
                return error.issues.map(\.description)
            }
        }
        #expect(issues("", "register = \"coil\"\naddress = 0\nwritable = true\nsigned = true").contains { $0.contains("needs [gateway] command_key_file") })
        #expect(issues("command_key_file = \"/k\"", "register = \"coil\"\naddress = 0\nwritable = true\nsigned = true").isEmpty)
        // The ids of signed commands are remembered for 5 minutes at most: a longer window is refused.
        #expect(issues("command_key_file = \"/k\"\ncommand_max_age_ms = 300001", "register = \"coil\"\naddress = 0\nwritable = true")
            .contains { $0.contains("command_max_age_ms") && $0.contains("longer than signed commands can take (300000 ms)") })
        #expect(issues("command_key_file = \"/k\"\ncommand_max_age_ms = 300000", "register = \"coil\"\naddress = 0\nwritable = true").isEmpty)
        #expect(issues("command_max_age_ms = 3600000", "register = \"coil\"\naddress = 0\nwritable = true").isEmpty, "unsigned: any window")
        #expect(issues("", "register = \"coil\"\naddress = 0\nwritable = true\nfailsafe = true").contains { $0.contains("needs failsafe_after_s") })
        #expect(issues("failsafe_after_s = 30", "register = \"coil\"\naddress = 0\nwritable = true\nfailsafe = true").isEmpty)
        #expect(issues("failsafe_after_s = 30", "register = \"coil\"\naddress = 0\nfailsafe = true").contains { $0.contains("only for writable points") })
        #expect(issues("", "register = \"holding\"\naddress = 0\ntype = \"int16\"\ncounter = true").contains { $0.contains("uint16 or uint32") })
        #expect(issues("", "register = \"holding\"\naddress = 0\ncounter = true").isEmpty)
        #expect(issues("", "register = \"discrete\"\naddress = 0\nlatch = true").contains { $0.contains("latch_clear = false") })
        #expect(issues("", "register = \"discrete\"\naddress = 0\nlatch = true\nlatch_clear = false").isEmpty)
    }
}

/// Signed commands, fail-safe values and events against real peers.
@Suite("Door safety end to end (Mosquitto, gateway simulate, gateway run)")
struct DoorSafetyTests {
    static let b = "gateway/e2e"

    /// A key file only its owner may read.
    static func keyFile() throws -> String {
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-key")
        let path = dir + "/command.key"
        try "k3y-for-the-doors-of-this-site\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        return path
    }

    /// `gateway sign ...`: its one line of output.
    static func sign(keyFile: String, topic: String, value: String) async throws -> String {
        let p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["sign", "--key-file", keyFile, "--topic", topic, "--value", value])
        let status = try await p.waitForExit()
        #expect(status == 0, "\(p.tail)")
        return try #require(p.lines.first { $0.hasPrefix("{") })
    }

    @Test("signed commands: a signed one pulses the door; replayed, tampered (value or topic), stale and unsigned ones are refused without a write; a point with signed = false takes plain commands")
    func signed() async throws {
        let key = try Self.keyFile()
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        let points = CommandTests.points().replacingOccurrences(of: "name = \"light\"\nregister = \"coil\"\naddress = 1\nwritable = true",
                                                                with: "name = \"light\"\nregister = \"coil\"\naddress = 1\nwritable = true\nsigned = false")
        #expect(points.contains("signed = false"))
        let rig = try await Rig.start(points: points, simArgs: [], pollMs: 100, extraGateway: "command_key_file = \"\(key)\"")
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        let unlock = "\(Self.b)/dev/unlock/set"
        let refusal = #"{"ok":false,"error":"not accepted: a valid signed command is required (value, ts, id, sig)"}"#

        let good = try await Self.sign(keyFile: key, topic: unlock, value: "true")
        // Python's hmac, an independent implementation, signs it the same (the README's sender).
        let py = try ChildProcess("/usr/bin/python3", ["-c", """
            import hashlib, hmac, json, sys
            p = json.loads(sys.argv[1]); key = open(sys.argv[2], 'rb').read().splitlines()[0]
            v = p['value']; v = v if isinstance(v, str) else json.dumps(v)
            msg = '%s\\n%s\\n%d\\n%s' % (sys.argv[3], v, p['ts'], p['id'])
            print('match' if hmac.compare_digest(hmac.new(key, msg.encode(), hashlib.sha256).hexdigest(), p['sig']) else 'differ')
            """, good, key, unlock])
        #expect(try await py.waitForExit() == 0)
        #expect(py.lines.contains("match"), "\(py.tail)")
        #expect(try await rig.command("unlock", good) == #"{"ok":true,"value":true}"#)
        let writes = try await rig.sim.waitForWrites(2)   // on, then the pulse's off
        #expect(writes.map(\.values) == [[1], [0]])

        #expect(try await rig.command("unlock", good) == refusal, "replayed")
        let tampered = good.replacingOccurrences(of: #""value":true"#, with: #""value":false"#)
        #expect(tampered != good)
        #expect(try await rig.command("unlock", tampered) == refusal, "tampered value")
        let otherTopic = try await Self.sign(keyFile: key, topic: "\(Self.b)/dev/mode/set", value: "\"free\"")
        #expect(try await rig.command("unlock", otherTopic.replacingOccurrences(of: #""value":"free""#, with: #""value":true"#)) == refusal)
        #expect(try await rig.command("mode", otherTopic.replacingOccurrences(of: "\"id\":\"", with: "\"id\":\"x")) == refusal,
                "a changed id")
        let signer = CommandSigner(key: Array("k3y-for-the-doors-of-this-site".utf8))
        let staleTs = CommandTests.nowMs() - 60_000
        #expect(try await rig.command("unlock", signer.payload(topic: unlock, value: .bool(true), ts: staleTs, id: "stale-1")) == refusal)
        #expect(try await rig.command("unlock", "true") == refusal, "unsigned")
        #expect(try await rig.command("unlock", #"{"value":true,"ts":\#(CommandTests.nowMs()),"id":"u1"}"#) == refusal)
        #expect(rig.sim.writes.count == 2, "a refused command wrote: \(rig.sim.writes)")
        // The same signed command works on the topic it was signed for (the signed mode value).
        #expect(try await rig.command("mode", otherTopic) == #"{"ok":true,"value":"free"}"#)
        // The README's Python sender (its code block, run as written but for the last line): a
        // string value, signed unquoted, is accepted.
        let readme = try String(contentsOfFile: TestEnvironment.packageRoot + "/README.md", encoding: .utf8)
        let start = try #require(readme.range(of: "```python\nimport hashlib, hmac"))
        let end = try #require(readme[start.upperBound...].range(of: "```"))
        let sender = readme[start.upperBound..<end.lowerBound].split(separator: "\n").dropLast(2).joined(separator: "\n")
        let script = "import hashlib, hmac" + sender + "\nimport sys\nprint(signed(open(sys.argv[1], 'rb').read().splitlines()[0], sys.argv[2], 'locked'))\n"
        let python = try ChildProcess("/usr/bin/python3", ["-c", script, key, "\(Self.b)/dev/mode/set"])
        #expect(try await python.waitForExit() == 0, "\(python.tail)")
        let fromPython = try #require(python.lines.first { $0.hasPrefix("{") })
        #expect(try await rig.command("mode", fromPython) == #"{"ok":true,"value":"locked"}"#)
        // signed = false: plain commands.
        #expect(try await rig.command("light", "true") == #"{"ok":true,"value":true}"#)
        #expect(rig.gateway.lines.contains { $0.contains("signed command refused: id") && $0.contains("replay") })
        await rig.shutdown()
    }

    @Test("a signed unlock recorded off the broker is refused after a kill -9 and a restart within its window, with no write; the id file is in state_dir")
    func replayAfterRestart() async throws {
        let key = try Self.keyFile()
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        let rig = try await Rig.start(points: CommandTests.points(), simArgs: [], pollMs: 100, extraGateway: "command_key_file = \"\(key)\"")
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        let refusal = #"{"ok":false,"error":"not accepted: a valid signed command is required (value, ts, id, sig)"}"#
        let recorded = try await Self.sign(keyFile: key, topic: "\(Self.b)/dev/unlock/set", value: "true")
        #expect(try await rig.command("unlock", recorded) == #"{"ok":true,"value":true}"#)
        _ = try await rig.sim.waitForWrites(2)   // on, then the pulse's off
        let ids = (try? String(contentsOfFile: (rig.configPath as NSString).deletingLastPathComponent + "/command-ids", encoding: .utf8)) ?? ""
        #expect(ids.contains("\"") == false && ids.split(separator: "\n").count == 1, "one id line: \(ids)")
        rig.gateway.signal(SIGKILL)
        _ = try await rig.gateway.waitForExit(timeout: .seconds(10))
        // Restarted at once (systemd's RestartSec=5 is well within the 30 s window): the copy is refused.
        let next = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", rig.configPath])
        _ = try await next.waitForLine(containing: "subscribed to commands")
        #expect(next.lines.contains { $0.contains("1 ids an earlier run saw are remembered") }, "\(next.tail)")
        #expect(try await rig.command("unlock", recorded) == refusal, "replayed after a restart")
        _ = try await next.waitForLine(containing: "already used (a replay)")
        // The new run may switch the pulse off once more (its journal entry outlived the kill),
        // but never on.
        #expect(rig.sim.writes.filter { $0.values == [1] }.count == 1, "the replay wrote: \(rig.sim.writes)")
        await next.stop()
        await rig.shutdown()
    }

    @Test("clock not synchronised: a signed unlock is answered \"gateway clock not synchronised\" without a write, logged once, shown on /api/status; once synchronised it works")
    func clockNotSynchronised() async throws {
        let key = try Self.keyFile()
        let flag = (key as NSString).deletingLastPathComponent + "/clock-synced"
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        let port = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: CommandTests.points(), simArgs: [], pollMs: 100,
                                      extraGateway: "command_key_file = \"\(key)\"\nrequire_synced_clock = true", httpListen: "127.0.0.1:\(port)",
                                      environment: ["GATEWAY_DEBUG_CLOCK_SYNCED_FILE": flag])
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        let unsynced = #"{"ok":false,"error":"gateway clock not synchronised"}"#
        for _ in 0..<2 {
            let cmd = try await Self.sign(keyFile: key, topic: "\(Self.b)/dev/unlock/set", value: "true")
            #expect(try await rig.command("unlock", cmd) == unsynced)
        }
        #expect(rig.gateway.lines.filter { $0.contains("system clock not synchronised") }.count == 1, "once per episode")
        let status = try await OperationsTests.get("http://127.0.0.1:\(port)/api/status")
        #expect(status.body.contains(#""clock":{"synchronised":false,"required":true}"#), "\(status.body.prefix(300))")
        // NTP sets the clock.
        _ = FileManager.default.createFile(atPath: flag, contents: nil)
        let cmd = try await Self.sign(keyFile: key, topic: "\(Self.b)/dev/unlock/set", value: "true")
        let answer = try await rig.command("unlock", cmd)
        #expect(answer == #"{"ok":true,"value":true}"#, "gateway log:\n\(rig.gateway.tail)")
        _ = try await rig.gateway.waitForLine(containing: "system clock synchronised")
        #expect(try await rig.sim.waitForWrites(2).map(\.values) == [[1], [0]], "only the command after the sync wrote")
        let after = try await OperationsTests.get("http://127.0.0.1:\(port)/api/status")
        #expect(after.body.contains(#""clock":{"synchronised":true,"required":true}"#))
        await rig.shutdown()
    }

    @Test("a command key file other users can read: gateway run refuses to start (exit 2)")
    func keyFileMode() async throws {
        let key = try Self.keyFile()
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        chmod(key, 0o644)
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-keymode")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = """
            [gateway]
            id = "k"
            state_dir = "\(dir)"
            command_key_file = "\(key)"
            [http]
            listen = ""
            [[bus]]
            name = "b"
            type = "tcp"
            host = "127.0.0.1"
            [[device]]
            name = "d"
            bus = "b"
            [[device.point]]
            name = "p"
            register = "coil"
            address = 0
            writable = true
            """
        try config.write(toFile: dir + "/gateway.toml", atomically: true, encoding: .utf8)
        let p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", dir + "/gateway.toml"])
        #expect(try await p.waitForExit() == 2)
        #expect(p.lines.contains { $0.contains("accessible to other users") }, "\(p.tail)")
        // gateway check says so beforehand.
        let check = try ChildProcess(try TestEnvironment.gatewayBinary(), ["check", "--config", dir + "/gateway.toml"])
        #expect(try await check.waitForExit() == 0)
        #expect(check.lines.contains { $0.contains("warning: gateway.command_key_file") && $0.contains("will refuse to start") }, "\(check.tail)")
    }

    @Test("fail-safe on a session taken over by a client with the gateway's id that keeps reconnecting: logged as an error with the count, and the fail-safe value written once")
    func failsafeOnTakeover() async throws {
        let points = "[[device.point]]\nname = \"barrier\"\nregister = \"holding\"\naddress = 5\nwritable = true\nfailsafe = 1\n"
        let rig = try await Rig.start(points: points, simArgs: [], pollMs: 100, extraGateway: "failsafe_after_s = 1", extraMQTT: "protocol = 5")
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "birth and statuses published")
        // Someone connects with the gateway's client id and keeps reconnecting (a copy of the
        // gateway elsewhere): the broker hands the session to each in turn, closing the other.
        var c = MQTTConfiguration(host: "127.0.0.1", port: rig.broker.port, clientIdentifier: "gateway-e2e")
        c.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(200))
        let twin = MQTTClient(configuration: c)
        // start(), not connect(): the gateway may take the session back before the twin's first
        // connect returns (CI saw "the connection closed right after CONNACK"); the twin keeps trying.
        await twin.start()
        _ = try await rig.gateway.waitForLine(containing: "session taken over by another client with client id 'gateway-e2e' (1 since start)")
        #expect(rig.gateway.lines.contains { $0.contains("error") && $0.contains("session taken over") }, "\(rig.gateway.tail)")
        // Control is lost as surely as with the broker gone: the fail-safe value after failsafe_after_s.
        let writes = try await rig.sim.waitForWrites(1, timeout: .seconds(15))
        #expect(writes.map(\.address) == [5] && writes.map(\.values) == [[1]])
        await twin.disconnect()
        await rig.shutdown()
    }

    @Test("a counter's passages while the gateway is down (kill -9, then a restart) are published once after the start, flagged as spanning a gap")
    func counterAcrossRestart() async throws {
        let points = "[[device.point]]\nname = \"passages\"\nregister = \"holding\"\naddress = 10\ncounter = true\n"
        let rig = try await Rig.start(points: points, simArgs: ["--set", "holding:10=7"], pollMs: 100)
        let event = "\(Self.b)/dev/passages/event"
        try await rig.waitFor("\(Self.b)/dev/passages", "7")
        try await rig.sim.set("holding:10=10")
        try await rig.waitUntil("the first event") { rig.payloads(event).count == 1 }
        try await rig.waitFor("\(Self.b)/dev/passages", "10")
        // The file is written within a second of the reading (not flushed; we wait for it before the kill).
        let file = (rig.configPath as NSString).deletingLastPathComponent + "/counters"
        let kept: ()? = try? await rig.waitUntil(timeout: .seconds(10), "the reading kept") { (try? String(contentsOfFile: file, encoding: .utf8)) == "dev/passages 10\n" }
        #expect(kept != nil, "the counter's reading is in \(file)")
        rig.gateway.signal(SIGKILL)
        _ = try await rig.gateway.waitForExit(timeout: .seconds(10))
        try await rig.sim.set("holding:10=15")   // five passages while nobody looks
        let next = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", rig.configPath])
        try await rig.waitUntil("the gap's event") { rig.payloads(event).count == 2 }
        #expect(rig.payloads(event)[1].hasPrefix(#"{"event_type":"count","count":5,"gap":true,"ts":"#), "\(rig.payloads(event))")
        try await rig.sim.set("holding:10=16")
        try await rig.waitUntil("the next event") { rig.payloads(event).count == 3 }
        #expect(rig.payloads(event)[2].hasPrefix(#"{"event_type":"count","count":1,"ts":"#), "\(rig.payloads(event))")
        await next.stop()
        await rig.shutdown()
    }

}
