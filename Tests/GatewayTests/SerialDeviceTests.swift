import Foundation
import Gateway
import MQTT
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Serial devices end to end: `gateway run` opens one end of a socat pty pair, the test plays the
/// device on the other end; real Mosquitto and an MQTT observer.
@Suite("Serial devices end to end (socat pty pairs, Mosquitto, gateway run)", .timeLimit(.minutes(3)))
struct SerialDeviceTests {
    static let b = "gateway/e2e"

    static func reader(_ path: String, extra: String = "") -> String {
        """

        [[device]]
        name = "qr"
        driver = "serial"
        port = "\(path)"
        baud = 9600
        framing = "line"
        raw = true
        max_frame = 64
        \(extra)
          [[device.point]]
          name = "scan"
          match = '^QR:(.+)$'
          [[device.point]]
          name = "temp"
          match = '^T=(?<t>-?\\d+\\.\\d)C$'
          group = "t"
          [[device.point]]
          name = "weight"
          match = '^W=(?<w>[0-9.]+);H=(?<h>[0-9]+)$'
          group = "w"
          [[device.point]]
          name = "height"
          match = '^W=(?<w>[0-9.]+);H=(?<h>[0-9]+)$'
          group = "h"
          [[device.command]]
          name = "beep"
          send = 'BEEP {value}\\r\\n'
          pattern = '[0-9]{1,2}'
          [[device.command]]
          name = "open"
          send = '\\x02OPEN\\x03'
        """
    }

    static func barrier(_ path: String) -> String {
        """

        [[device]]
        name = "bar"
        driver = "serial"
        port = "\(path)"
        framing = "delimiter"
        start = '\\x02'
        delimiter = '\\x03'
          [[device.point]]
          name = "state"
          match = '^S(\\d)$'
        """
    }

    static func start(_ serial: String) async throws -> Rig {
        let rig = try await Rig.start(points: UplinkTests.oneCoil + serial, simArgs: [], pollMs: 200)
        _ = try await rig.gateway.waitForLine(containing: "subscribed to commands")
        return rig
    }

    @Test("lines and STX..ETX frames become point values (one frame may feed several points); unmatched frames go to raw")
    func frames() async throws {
        let qr = try await PtyPair.start(), bar = try await PtyPair.start()
        let rig = try await Self.start(Self.reader(qr.a) + Self.barrier(bar.a))
        try await rig.waitFor("\(Self.b)/qr/status", "online")
        try await rig.waitFor("\(Self.b)/bar/status", "online")
        let q = try FarEnd(qr.b), w = try FarEnd(bar.b)
        await q.send("QR:ABC-123\r\n")
        await q.send("T=21.5C\nHELLO\nW=12.5;H=40\n")
        await w.send([0x41, 0x02] + Array("S1".utf8) + [0x03, 0x02] + Array("S0".utf8) + [0x03])
        try await rig.waitFor("\(Self.b)/qr/scan", "ABC-123")
        try await rig.waitFor("\(Self.b)/qr/temp", "21.5")
        try await rig.waitFor("\(Self.b)/qr/raw", "HELLO")
        // One frame, two points (named groups of the same pattern).
        try await rig.waitFor("\(Self.b)/qr/weight", "12.5")
        try await rig.waitFor("\(Self.b)/qr/height", "40")
        #expect(!rig.payloads("\(Self.b)/qr/raw").contains("W=12.5;H=40"))
        try await rig.waitFor("\(Self.b)/bar/state", "0")
        #expect(rig.payloads("\(Self.b)/bar/state") == ["1", "0"])
        // The same scan twice is two events, both published.
        await q.send("QR:ABC-123\n")
        try await rig.waitUntil("the second scan") { rig.payloads("\(Self.b)/qr/scan").count == 2 }
        await rig.shutdown()
        await qr.stop(); await bar.stop()
    }

    @Test("command templates arrive byte-exact; bad values are refused and nothing is sent")
    func commands() async throws {
        let qr = try await PtyPair.start()
        let rig = try await Self.start(Self.reader(qr.a))
        try await rig.waitFor("\(Self.b)/qr/status", "online")
        let far = try FarEnd(qr.b)
        try await rig.observer.publish(to: "\(Self.b)/qr/beep/set", payload: Array("3".utf8), qos: .atLeastOnce)
        #expect(await far.receive(8) == Array("BEEP 3\r\n".utf8))
        try await rig.waitFor("\(Self.b)/qr/beep/set/result", #"{"ok":true,"value":"3"}"#)
        try await rig.observer.publish(to: "\(Self.b)/qr/open/set", payload: Array("now".utf8), qos: .atLeastOnce)
        #expect(await far.receive(6) == [0x02] + Array("OPEN".utf8) + [0x03])
        for (topic, payload, error) in [("beep", "123", "does not match the pattern"), ("beep", "x", "does not match the pattern"),
                                        ("nope", "1", "unknown command 'nope'"), ("beep", #"{"value":"1","x":1}"#, "unknown JSON key")] {
            let resultTopic = "\(Self.b)/qr/\(topic)/set/result"
            let before = rig.payloads(resultTopic).count
            try await rig.observer.publish(to: "\(Self.b)/qr/\(topic)/set", payload: Array(payload.utf8), qos: .atLeastOnce)
            try await rig.waitUntil("an answer on \(resultTopic)") { rig.payloads(resultTopic).count > before }
            let answer = rig.payloads(resultTopic)[before]
            #expect(answer.hasPrefix(#"{"ok":false"#) && answer.contains(error), "\(answer)")
        }
        // Retained: refused.
        try await rig.observer.publish(to: "\(Self.b)/qr/beep/set", payload: Array("5".utf8), qos: .atLeastOnce, retain: true)
        try await rig.waitUntil("the retained refusal") { rig.payloads("\(Self.b)/qr/beep/set/result").contains { $0.contains("retained") } }
        try await rig.observer.publish(to: "\(Self.b)/qr/beep/set", payload: [], qos: .atLeastOnce, retain: true)
        #expect(await far.drain().isEmpty, "a refused command reached the device")
        await rig.shutdown()
        await qr.stop()
    }

    @Test("request/response: the poll string is sent, replies keep it online, silence makes it offline")
    func polled() async throws {
        let pty = try await PtyPair.start()
        let rig = try await Self.start("""

            [[device]]
            name = "asker"
            driver = "serial"
            port = "\(pty.a)"
            poll = 'STATUS?\\r\\n'
            poll_ms = 200
            response_timeout_ms = 150
            offline_after = 2
              [[device.point]]
              name = "v"
              match = '^OK (\\d+)$'
            """)
        let far = try FarEnd(pty.b)
        // The device answers every poll (a reply that comes after the poll's 150 ms, as a loaded
        // test machine may make it, would not count for that poll) until told to stop.
        let replying = Task {
            var polls = 0
            while !Task.isCancelled, polls < 200 {
                let asked = await far.receive(9, timeout: .seconds(2))
                guard asked == Array("STATUS?\r\n".utf8) else { continue }
                polls += 1
                await far.send("OK 42\n")
            }
            return polls
        }
        try await rig.waitFor("\(Self.b)/asker/v", "42")
        try await rig.waitFor("\(Self.b)/asker/status", "online")
        replying.cancel()
        #expect(await replying.value >= 1)
        // No more replies: offline after two missed polls.
        try await rig.waitUntil("offline after the replies stopped") { rig.payloads("\(Self.b)/asker/status").last == "offline" }
        await rig.shutdown()
        await pty.stop()
    }

    @Test("a line nobody reads: commands are answered at once (outcome unknown, then refused or sent), and nothing refused is sent later")
    func stalledLine() async throws {
        let pty = try await PtyPair.start()
        let filler = String(repeating: "x", count: 2000)
        let rig = try await Self.start("""

            [[device]]
            name = "printer"
            driver = "serial"
            port = "\(pty.a)"
            response_timeout_ms = 1000
              [[device.point]]
              name = "state"
              match = '^S(.)$'
              [[device.command]]
              name = "print"
              send = '\(filler){value};'
              pattern = 'V[0-9]{4}'
            """)
        try await rig.waitFor("\(Self.b)/printer/status", "online")
        // The far end is open and never read: socat stops taking from our end once its side is
        // full, and then the kernel's buffers fill.
        let far = try FarEnd(pty.b)
        // Bursts of four: once a write stalls, the commands behind it cannot start in time.
        var answers: [(String, String)] = []
        let resultTopic = "\(Self.b)/printer/print/set/result"
        // (A stall on the last command of a burst has no followers: then the bursts go on.)
        for burst in 0..<200 where !answers.contains(where: { $0.1.contains("waited behind a write") }) {
            let values = (0..<4).map { "V" + String(1000 + burst * 4 + $0) }
            let before = rig.payloads(resultTopic).count
            for v in values {
                try await rig.observer.publish(to: "\(Self.b)/printer/print/set", payload: Array(v.utf8), qos: .atLeastOnce)
            }
            try await rig.waitUntil("four answers") { rig.payloads(resultTopic).count >= before + 4 }
            answers += zip(values, rig.payloads(resultTopic)[before..<(before + 4)]).map { ($0, $1) }
        }
        #expect(answers.contains { $0.1.contains("outcome unknown") }, "the line never stalled; last answers: \(answers.suffix(4))")
        // The others of that burst waited behind the stalled write: refused, not sent.
        #expect(answers.contains { $0.1.contains("waited behind a write the line did not take") }, "\(answers.suffix(4))")
        // The next command is answered too (refused while the port reopens, or sent once it took it).
        answers.append(("V9000", try await rig.command("print", "V9000", device: "printer")))
        let received = String(decoding: await far.drain(timeout: .seconds(2)), as: UTF8.self)
        for (value, answer) in answers where answer.hasPrefix(#"{"ok":false"#) && !answer.contains("outcome unknown") {
            #expect(!received.contains(value + ";"), "\(value) was refused (\(answer)) but reached the device")
        }
        #expect(rig.gateway.exitStatus == nil)
        await rig.shutdown()
        await pty.stop()
    }
}
