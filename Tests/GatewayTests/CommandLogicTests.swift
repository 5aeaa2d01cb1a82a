@testable import Gateway
import GatewayConfig
import Testing

/// Pure command logic: payload parsing, value checks, the id cache, the JSON reader.
@Suite("Command logic")
struct CommandLogicTests {
    func parse(_ s: String) throws(CommandRefusal) -> CommandRequest { try CommandRequest.parse(Array(s.utf8)) }

    func refusal(_ s: String) -> String? {
        do { _ = try parse(s); return nil } catch { return error.reason }
    }

    @Test("plain and JSON payloads")
    func payloads() throws {
        #expect(try parse(" ON \n") == CommandRequest(value: .text("ON")))
        #expect(try parse(#""locked""#) == CommandRequest(value: .text("locked")))
        #expect(try parse(#"{"value": 21.5, "ts": 1700000000000, "id": "a"}"#) == CommandRequest(value: .number("21.5"), ts: 1_700_000_000_000, id: "a"))
        #expect(try parse(#"{"id": 7, "value": false}"#) == CommandRequest(value: .bool(false), id: "7"))
        #expect(refusal("") == "empty payload")
        #expect(refusal(#"{"ts": 1}"#) == #"JSON command has no "value""#)
        #expect(refusal(#"{"value": 1, "value": 2}"#) == "JSON key 'value' appears twice")
        #expect(refusal(#"{"value": 1, "ts": 1.5}"#)?.contains("whole number") == true)
        #expect(refusal(#"{"value": 1, "who": "me"}"#)?.contains("unknown JSON key 'who'") == true)
        #expect(refusal(#"{"value": [1]}"#)?.contains("must be a bool") == true)
        #expect(refusal("{\"value\": tru}")?.hasPrefix("invalid JSON at byte") == true)
        #expect(refusal("on\u{7}") == "payload contains control characters")
        #expect(throws: CommandRefusal.badPayload("payload is not valid UTF-8")) { try CommandRequest.parse([0xFF, 0x31]) }
        #expect(refusal(String(repeating: "1", count: 5000))?.contains("too long") == true)
    }

    func point(_ table: RegisterTable, _ type: PointType, _ edit: (inout PointSettings) -> Void = { _ in }) -> PointSettings {
        var p = PointSettings(name: "p", table: table, address: 0, type: type)
        p.writable = true
        edit(&p)
        return p
    }

    func plan(_ p: PointSettings, _ v: CommandRequest.Value) -> Result<WritePlan, CommandRefusal> {
        do { return .success(try p.writePlan(for: v)) } catch { return .failure(error) }
    }

    @Test("values are checked against type, map, min/max and scale before anything is written")
    func values() {
        let coil = point(.coil, .bool)
        for on in ["true", "ON", "1", "On"] { #expect(plan(coil, .text(on)) == .success(WritePlan(data: .coil(true)))) }
        for off in ["false", "OFF", "0"] { #expect(plan(coil, .text(off)) == .success(WritePlan(data: .coil(false)))) }
        #expect(plan(coil, .bool(true)) == .success(WritePlan(data: .coil(true))))
        #expect(plan(coil, .number("2")).isFailure)
        #expect(plan(coil, .text("yes")).isFailure)

        let mode = point(.holding, .uint16) { $0.map = [0: "normal", 1: "free", 2: "locked"] }
        #expect(plan(mode, .text("Locked")) == .success(WritePlan(data: .registers([2]))))
        #expect(plan(mode, .number("1")) == .success(WritePlan(data: .registers([1]))))
        #expect(plan(mode, .number("3")).isFailure)
        #expect(plan(mode, .text("1.0")).isFailure)

        let sp = point(.holding, .int16) { $0.scale = 0.1; $0.min = 5; $0.max = 30 }
        #expect(plan(sp, .text("21.5")) == .success(WritePlan(data: .registers([215]))))
        #expect(plan(sp, .text("-0")).isFailure)        // below min
        #expect(plan(sp, .text("30.1")).isFailure)      // above max
        #expect(plan(sp, .text("21.55")).isFailure)     // not a multiple of the scale
        for bad in ["0x10", "inf", "nan", "1e999", "21,5", "", "+", "1e", ".5.", "2 1"] {
            #expect(plan(sp, .text(bad)).isFailure, "\(bad)")
        }
        let f = point(.holding, .float32)
        #expect(plan(f, .number("230.5")) == .success(WritePlan(data: .registers([17254, 32768]))))
        let u64 = point(.holding, .uint64)
        #expect(plan(u64, .number("18446744073709551615")) == .success(WritePlan(data: .registers([65535, 65535, 65535, 65535]))))
        #expect(plan(point(.holding, .int16), .number("40000")).isFailure)
        #expect(plan(point(.holding, .uint16) { $0.writable = false }, .number("1")) == .failure(CommandRefusal.notWritable(point: "p")))
        let text = point(.holding, .string) { $0.length = 2 }
        #expect(plan(text, .text("OBM")) == .success(WritePlan(data: .registers([0x4F42, 0x4D00]))))
        #expect(plan(text, .text("TOOLONG")).isFailure)
        // The released state of a pulse.
        #expect(point(.coil, .bool).offWrite.isOff && point(.holding, .uint32).offWrite == WritePlan(data: .registers([0, 0])))
    }

    @Test("ids are remembered for their lifetime, and the cache is bounded")
    func idCache() {
        var cache = CommandIDCache<String>(lifetime: .seconds(600), capacity: 3)
        let t0 = ContinuousClock.now
        cache.record("first", for: "a", now: t0)
        #expect(cache.answer(for: "a", now: t0 + .seconds(599)) == "first")
        #expect(cache.answer(for: "a", now: t0 + .seconds(600)) == nil)
        for (i, k) in ["b", "c", "d", "e"].enumerated() { cache.record(k, for: k, now: t0 + .seconds(700 + i)) }
        #expect(cache.count == 3)
        #expect(cache.answer(for: "b", now: t0 + .seconds(710)) == nil)
        #expect(cache.answer(for: "e", now: t0 + .seconds(710)) == "e")
    }

    @Test("the JSON reader: escapes, surrogates, depth limit, trailing data")
    func json() throws {
        #expect(try JSONValue.parse(Array(#" {"a": [1, -2.5e3, true, null], "b": "\u00e9\ud83d\ude00\n"} "#.utf8))
                == .object([("a", .array([.number("1"), .number("-2.5e3"), .bool(true), .null])), ("b", .string("é😀\n"))]))
        for bad in ["", "01", "1.", "-", #""\ud800""#, #""\x""#, "[1,]", "{\"a\" 1}", "tru", "1 2", String(repeating: "[", count: 20) + String(repeating: "]", count: 20)] {
            #expect(throws: JSONValue.ParseError.self, "\(bad)") { try JSONValue.parse(Array(bad.utf8)) }
        }
    }
}

extension Result {
    var isFailure: Bool { if case .failure = self { true } else { false } }
}

@Suite("Command safety rules")
struct CommandSafetyTests {
    @Test("response topics: wildcards, command topics and the gateway's own topics (but /set/result) are refused")
    func responseTopicRules() {
        let base = "gateway/lobby"
        let refused = { (t: String) in BrokerAnswerer.refusedResponseTopic(t, base: base) != nil }
        #expect(!refused("app/replies/42"))
        #expect(!refused("gateway/lobby/front-door/unlock/set/result"))
        #expect(refused("app/+/x") && refused("app/#"))
        #expect(refused("gateway/lobby/front-door/unlock/set") && refused("elsewhere/door/get"))
        #expect(refused("gateway/lobby/front-door/unlock") && refused("gateway/lobby/status") && refused("gateway/lobby"))
        #expect(!refused("gateway/lobby2/x"))
    }

    @Test("control characters: refused in JSON values and ids as in plain ones; escaped in logs")
    func controlCharacters() throws {
        #expect(throws: CommandRefusal.self) { try CommandRequest.parse(Array(#"{"value":"a\nb"}"#.utf8)) }
        #expect(throws: CommandRefusal.self) { try CommandRequest.parse(Array(#"{"value":"\u001b[2J"}"#.utf8)) }
        #expect(throws: CommandRefusal.self) { try CommandRequest.parse(Array(#"{"value":1,"id":"x\ry"}"#.utf8)) }
        #expect(try CommandRequest.parse(Array(#"{"value":"ünïcode ok"}"#.utf8)).value == .text("ünïcode ok"))
        #expect("a\nINFO forged\u{1B}[0m\\".logSafe == #"a\nINFO forged\u{1B}[0m\\"#)
        #expect("plain".logSafe == "plain")
    }

    @Test("topic layout: every topic named once; parse takes a command topic apart and nothing else")
    func topicLayout() {
        let t = TopicLayout(base: "site/lobby")
        #expect(t.status == "site/lobby/status" && t.status("door") == "site/lobby/door/status")
        #expect(t.value(device: "door", point: "unlock") == "site/lobby/door/unlock")
        #expect(t.setResult(device: "door", point: "unlock") == "site/lobby/door/unlock/set/result")
        #expect(t.set(device: "door", point: "unlock") == "site/lobby/door/unlock/set")
        #expect(t.parse(t.set(device: "door", point: "unlock")) == CommandTopic(device: "door", point: "unlock", kind: .set))
        #expect(t.parse("site/lobby/door/unlock/get") == CommandTopic(device: "door", point: "unlock", kind: .get))
        for other in ["site/lobby/door/unlock", "site/lobby/door/unlock/set/result", "site/lobby2/door/unlock/set",
                      "site/lobby//unlock/set", "site/lobby/door//set", "site/lobby/door/unlock/", "site/lobby/door/unlock/sets",
                      "site/lobby/", "site/lobby/door/unlock/put", "other/door/unlock/set", "site/lobby"] {
            #expect(t.parse(other) == nil, "\(other)")
        }
    }

    @Test("refusals: each its answer text; the metrics' outcome from the case, not the text; a masked refusal keeps its outcome")
    func refusalOutcomes() {
        #expect(CommandRefusal.queueFull(device: "d").reason == "busy: device 'd' already has 8 commands waiting (not queued)")
        #expect(CommandRefusal.outcomeUnknown("write: timeout (not retried)").reason == "outcome unknown: write: timeout (not retried)")
        #expect(CommandRefusal.unknownCommand("x", device: "s", known: ["a", "b"]).reason == "unknown command 'x' on device 's' (commands: a, b)")
        #expect(CommandRefusal.tooOld(ageMs: 31000, maxAgeMs: 30000).reason == "stale command: sent 31000 ms ago (command_max_age_ms = 30000)")
        for busy in [CommandRefusal.queueFull(device: "d"), .busBusy(timeout: .seconds(1)), .lineBusy(timeoutMs: 500), .lineStalled] {
            #expect(busy.outcome == "busy", "\(busy)")
        }
        #expect(CommandRefusal.outcomeUnknown("x").outcome == "outcome_unknown")
        // A device error whose text happens to start like another outcome is counted as refused.
        #expect(CommandRefusal.failed("busy: the device says so").outcome == "refused")
        let masked = CommandRefusal.masked(.outcomeUnknown("wrote 4711"), sent: ["4711"])
        #expect(masked.reason == "outcome unknown: wrote (secret)" && masked.outcome == "outcome_unknown")
        #expect(CommandAnswer.refused(.badValue("'4711' is not a number")).secretMasked(sent: ["4711"]).json()
            == #"{"ok":false,"error":"'(secret)' is not a number"}"#)
    }
}
