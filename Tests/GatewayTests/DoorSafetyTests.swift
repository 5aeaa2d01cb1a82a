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
        let gate = SignedCommands(key: Self.key, maxAgeMs: 30_000)
        let signer = CommandSigner(key: Self.key)
        let now: Int64 = 1_800_000_000_000
        func request(_ value: CommandRequest.Value, ts: Int64, id: String, topic: String = "gw/d/p/set") -> CommandRequest {
            CommandRequest(value: value, ts: ts, id: id, sig: signer.sign(topic: topic, value: value, ts: ts, id: id))
        }
        #expect(gate.check(request(.bool(true), ts: now - 1000, id: "x1"), topic: "gw/d/p/set", now: now) == nil)
        #expect(gate.check(request(.bool(true), ts: now - 1000, id: "x1"), topic: "gw/d/p/set", now: now)?.contains("replay") == true)
        #expect(gate.check(request(.bool(true), ts: now - 31_000, id: "x2"), topic: "gw/d/p/set", now: now)?.contains("from now") == true)
        #expect(gate.check(request(.bool(true), ts: now + 31_000, id: "x3"), topic: "gw/d/p/set", now: now)?.contains("from now") == true)
        #expect(gate.check(CommandRequest(value: .bool(true)), topic: "gw/d/p/set", now: now)?.contains("unsigned") == true)
        #expect(gate.check(request(.bool(true), ts: now, id: "x4", topic: "gw/d/other/set"), topic: "gw/d/p/set", now: now) == "wrong signature")
        // An id is forgotten once its window has passed.
        #expect(gate.check(request(.bool(true), ts: now + 40_000, id: "x1"), topic: "gw/d/p/set", now: now + 40_000) == nil)
        // A reload that lengthens the window does not make forgotten ids acceptable again: at
        // now + 40 s the 30 s window has forgotten every id with a ts before now + 10 s, so no
        // ts before that is taken, although the new 60 s window would reach back to now - 20 s.
        gate.update(key: Self.key, maxAgeMs: 60_000, now: now + 40_000)
        #expect(gate.check(request(.bool(true), ts: now - 1000, id: "forgotten"), topic: "gw/d/p/set", now: now + 40_000)?.contains("from now") == true)
        #expect(gate.check(request(.bool(true), ts: now + 39_000, id: "x9"), topic: "gw/d/p/set", now: now + 40_000) == nil)
        // A new key: commands signed with the old one are refused.
        gate.update(key: Array("a-completely-new-key!".utf8), maxAgeMs: 60_000, now: now + 40_000)
        #expect(gate.check(request(.bool(true), ts: now + 40_000, id: "x10"), topic: "gw/d/p/set", now: now + 40_000) == "wrong signature")
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
        #expect(try await CommandTests.command(rig, "unlock", good) == #"{"ok":true,"value":true}"#)
        let writes = try await rig.sim.waitForWrites(2)   // on, then the pulse's off
        #expect(writes.map(\.values) == [[1], [0]])

        #expect(try await CommandTests.command(rig, "unlock", good) == refusal, "replayed")
        let tampered = good.replacingOccurrences(of: #""value":true"#, with: #""value":false"#)
        #expect(tampered != good)
        #expect(try await CommandTests.command(rig, "unlock", tampered) == refusal, "tampered value")
        let otherTopic = try await Self.sign(keyFile: key, topic: "\(Self.b)/dev/mode/set", value: "\"free\"")
        #expect(try await CommandTests.command(rig, "unlock", otherTopic.replacingOccurrences(of: #""value":"free""#, with: #""value":true"#)) == refusal)
        #expect(try await CommandTests.command(rig, "mode", otherTopic.replacingOccurrences(of: "\"id\":\"", with: "\"id\":\"x")) == refusal,
                "a changed id")
        let signer = CommandSigner(key: Array("k3y-for-the-doors-of-this-site".utf8))
        let staleTs = CommandTests.nowMs() - 60_000
        #expect(try await CommandTests.command(rig, "unlock", signer.payload(topic: unlock, value: .bool(true), ts: staleTs, id: "stale-1")) == refusal)
        #expect(try await CommandTests.command(rig, "unlock", "true") == refusal, "unsigned")
        #expect(try await CommandTests.command(rig, "unlock", #"{"value":true,"ts":\#(CommandTests.nowMs()),"id":"u1"}"#) == refusal)
        #expect(rig.sim.writes.count == 2, "a refused command wrote: \(rig.sim.writes)")
        // The same signed command works on the topic it was signed for (the signed mode value).
        #expect(try await CommandTests.command(rig, "mode", otherTopic) == #"{"ok":true,"value":"free"}"#)
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
        #expect(try await CommandTests.command(rig, "mode", fromPython) == #"{"ok":true,"value":"locked"}"#)
        // signed = false: plain commands.
        #expect(try await CommandTests.command(rig, "light", "true") == #"{"ok":true,"value":true}"#)
        #expect(rig.gateway.lines.contains { $0.contains("signed command refused: id") && $0.contains("replay") })
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

    @Test("fail-safe: broker stopped; after failsafe_after_s exactly one write of the fail-safe value; broker back: <base>/failsafe says so; nothing more written")
    func failsafe() async throws {
        let points = """
            [[device.point]]
            name = "barrier"
            register = "holding"
            address = 5
            writable = true
            map = { "0" = "closed", "1" = "free" }
            failsafe = "free"
            [[device.point]]
            name = "count"
            register = "holding"
            address = 40
            """
        let rig = try await Rig.start(points: points, simArgs: [], pollMs: 100, extraGateway: "failsafe_after_s = 1")
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        try await rig.waitFor("\(Self.b)/dev/barrier", "closed")
        _ = try await rig.gateway.waitForLine(containing: "birth and statuses published")
        #expect(rig.sim.writes.isEmpty, "written while connected")
        await rig.broker.stop()
        let writes = try await rig.sim.waitForWrites(1, timeout: .seconds(15))
        #expect(writes.map(\.address) == [5])
        #expect(writes.map(\.values) == [[1]])
        _ = try await rig.gateway.waitForLine(containing: "FAIL-SAFE: wrote barrier = free")
        try await rig.broker.restart()
        try await rig.waitUntil(timeout: .seconds(30), "the fail-safe report") {
            rig.payloads("\(Self.b)/failsafe").contains { $0.contains(#""device":"dev","point":"barrier","value":"free""#) }
        }
        // After it, a value change still comes through, and nothing more was written.
        try await rig.sim.set("holding:40=9")
        try await rig.waitFor("\(Self.b)/dev/count", "9")
        #expect(rig.sim.writes.count == 1, "\(rig.sim.writes)")
        #expect(rig.payloads("\(Self.b)/dev/barrier").last == "free")
        await rig.shutdown()
    }

    static let barrier = """
        [[device.point]]
        name = "barrier"
        register = "holding"
        address = 5
        writable = true
        map = { "0" = "closed", "1" = "free" }
        failsafe = "free"
        """

    /// A barrier with a fail-safe value, its device offline and the broker away when the
    /// fail-safe is due.
    static func deviceOfflineBrokerAway() async throws -> Rig {
        let rig = try await Rig.start(points: Self.barrier, simArgs: [], pollMs: 100, extraGateway: "failsafe_after_s = 1")
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "birth and statuses published")
        _ = await rig.sim.stop()
        try await rig.waitFor("\(Self.b)/dev/status", "offline")
        await rig.broker.stop()
        _ = try await rig.gateway.waitForLine(containing: "fail-safe: device offline")
        return rig
    }

    @Test("fail-safe: a device offline when it is due gets the write when it comes back, while the broker is still away")
    func failsafeDeviceBack() async throws {
        let rig = try await Self.deviceOfflineBrokerAway()
        let again = try await GatewaySimulator.start([], port: rig.simPort)
        let writes = try await again.waitForWrites(1, timeout: .seconds(20))
        #expect(writes.map { [$0.address, $0.values.first ?? -1] } == [[5, 1]])
        try await rig.broker.restart()
        try await rig.waitUntil(timeout: .seconds(30), "the fail-safe report") { rig.payloads("\(Self.b)/failsafe").contains { $0.contains("\"barrier\"") } }
        #expect(again.writes.count == 1)
        _ = await again.stop()
        await rig.shutdown()
    }

    @Test("fail-safe: a device still offline when the broker is back never gets the write")
    func failsafeNotAfterBrokerBack() async throws {
        let rig = try await Self.deviceOfflineBrokerAway()
        try await rig.broker.restart()
        // The second end of a countdown (the first was at the first connect).
        let ends = Mutex(0)
        _ = try await rig.gateway.waitForLine(timeout: .seconds(30)) { line in
            line.contains("fail-safe countdown over") && ends.withLock { $0 += 1; return $0 >= 2 }
        }
        let again = try await GatewaySimulator.start(["--set", "holding:5=0", "--set", "holding:6=1"], port: rig.simPort)
        // Polled again (online), and nothing written.
        try await rig.waitUntil(timeout: .seconds(30), "the device back online") { rig.payloads("\(Self.b)/dev/status").last == "online" }
        _ = try await rig.gateway.waitForLine(containing: "device online")
        #expect(again.writes.isEmpty, "\(again.writes)")
        #expect(!rig.gateway.lines.contains { $0.contains("FAIL-SAFE: wrote") })
        _ = await again.stop()
        await rig.shutdown()
    }

    @Test("failsafe_on_stop: a graceful stop writes the fail-safe value once, before the gateway says offline")
    func failsafeOnStop() async throws {
        let points = """
            [[device.point]]
            name = "turnstile"
            register = "coil"
            address = 3
            writable = true
            failsafe = true
            """
        let rig = try await Rig.start(points: points, simArgs: [], pollMs: 100, extraGateway: "failsafe_on_stop = true")
        try await rig.waitFor("\(Self.b)/dev/status", "online")
        _ = try await rig.gateway.waitForLine(containing: "birth and statuses published")
        rig.gateway.signal(SIGTERM)
        #expect(try await rig.gateway.waitForExit(timeout: .seconds(15)) == 0)
        #expect(rig.sim.writes.map { [$0.address, $0.values.first ?? -1] } == [[3, 1]])
        try await rig.waitUntil("the report") { rig.payloads("\(Self.b)/failsafe").contains { $0.contains(#""reason":"gateway stopping""#) } }
        try await rig.waitFor("\(Self.b)/dev/status", "offline")
        await rig.shutdown()
    }

    @Test("events: a counter's increments (3 at once, a wrap 65535 -> 2, a reset said once), a latch seen set twice (two events, each cleared on the device)")
    func events() async throws {
        let points = """
            [[device.point]]
            name = "passages"
            register = "holding"
            address = 10
            counter = true
            [[device.point]]
            name = "forced"
            register = "coil"
            address = 5
            latch = true
            """
        let rig = try await Rig.start(points: points, simArgs: ["--set", "holding:10=7"], pollMs: 100)
        let event = "\(Self.b)/dev/passages/event", latch = "\(Self.b)/dev/forced/event"
        try await rig.waitFor("\(Self.b)/dev/passages", "7")
        try await rig.sim.set("holding:10=10")
        try await rig.waitUntil("the first counter event") { rig.payloads(event).count == 1 }
        try await rig.sim.set("holding:10=65535")
        try await rig.waitUntil("the second counter event") { rig.payloads(event).count == 2 }
        try await rig.sim.set("holding:10=2")
        try await rig.waitUntil("the wrap event") { rig.payloads(event).count == 3 }
        try await rig.sim.set("holding:10=0")
        try await rig.waitUntil("the reset event") { rig.payloads(event).count == 4 }
        let kinds = rig.payloads(event).map { p -> String in
            let count = p.range(of: #""count":"#).map { String(p[$0.upperBound...].prefix { $0.isNumber }) } ?? "?"
            return (p.contains(#""event_type":"reset""#) ? "reset " : "") + count
        }
        #expect(kinds == ["3", "65525", "3", "reset 0"])
        #expect(rig.payloads(event).allSatisfy { $0.contains(#""ts":"#) && !$0.contains("-") })
        #expect(rig.gateway.lines.filter { $0.contains("counter passages went down") }.count == 1)

        // The latch: set by the device, seen, cleared by the gateway (a write of 0), set again.
        try await rig.sim.set("coil:5=1")
        try await rig.waitUntil("the first latch event") { rig.payloads(latch).count == 1 }
        let first = try await rig.sim.waitForWrites(1)
        #expect(first.map { [$0.address, $0.values.first ?? -1] } == [[5, 0]])
        // The poll after the clear sees it clear again (false, true, false on the value topic).
        try await rig.waitUntil("the latch seen clear again") { rig.payloads("\(Self.b)/dev/forced") == ["false", "true", "false"] }
        try await rig.sim.set("coil:5=1")
        try await rig.waitUntil("the second latch event") { rig.payloads(latch).count == 2 }
        let both = try await rig.sim.waitForWrites(2)
        #expect(both.map { [$0.address, $0.values.first ?? -1] } == [[5, 0], [5, 0]])
        #expect(rig.payloads(latch).allSatisfy { $0.hasPrefix(#"{"event_type":"set","ts":"#) })
        await rig.shutdown()
    }
}
