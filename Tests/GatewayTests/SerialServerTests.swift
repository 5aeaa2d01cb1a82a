import Foundation
import MQTT
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// RS-485 lines reached through serial device servers (`type = "rtu-tcp"`), end to end: Mosquitto,
/// `gateway simulate --rtu-tcp`, `gateway run`.
@Suite("Serial device servers end to end (rtu-tcp)", .serialized)
struct SerialServerTests {
    @Test("a line behind a serial device server: two units polled and a command written, as on any bus")
    func rtuOverTCPBus() async throws {
        let rig = try await Rig.start(points: "", simArgs: ["--unit", "3", "--unit", "4", "--set", "3/holding:100=215", "--set", "4/discrete:1=1"],
                                      bodyWithPort: { port in
            """
            [[bus]]
            name = "nport"
            type = "rtu-tcp"
            host = "127.0.0.1"
            port = \(port)
            timeout_ms = 300
            [[device]]
            name = "thermostat"
            bus = "nport"
            unit = 3
            poll_ms = 50
              [[device.point]]
              name = "setpoint"
              register = "holding"
              address = 100
              type = "int16"
              scale = 0.1
              writable = true
            [[device]]
            name = "door"
            bus = "nport"
            unit = 4
            poll_ms = 50
              [[device.point]]
              name = "closed"
              register = "discrete"
              address = 1
            """
        }, simRTUOverTCP: true)
        try await rig.waitFor("gateway/e2e/thermostat/setpoint", "21.5")
        try await rig.waitFor("gateway/e2e/door/closed", "true")
        try await rig.observer.publish(to: "gateway/e2e/thermostat/setpoint/set", payload: Array("19".utf8), qos: .atLeastOnce)
        let writes = try await rig.sim.waitForWrites(1)
        #expect(writes.first.map { [$0.unit, $0.fc, $0.address] + $0.values } == [3, 6, 100, 190])
        try await rig.waitFor("gateway/e2e/thermostat/setpoint", "19")
        try await rig.waitFor("gateway/e2e/thermostat/setpoint/set/result", #"{"ok":true,"value":19}"#)
        await rig.shutdown()
    }

    /// Runs the independent Modbus TCP client (pymodbus) to completion and returns its JSON lines.
    static func client(port: Int, clients: Int = 1, _ ops: [String]) async throws -> [[String: Any]] {
        let p = try ChildProcess(try TestEnvironment.venvPython(), [
            TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/modbus_client.py", "--port", "\(port)", "--clients", "\(clients)"] + ops)
        let status = try await p.waitForExit(timeout: .seconds(60))
        #expect(status == 0, "client: \(p.lines.suffix(5))")
        return p.lines.compactMap { line in
            guard line.hasPrefix("{") else { return nil }
            return try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        }
    }

    @Test("the Modbus TCP front: pymodbus and mbpoll read through it while the gateway polls and takes commands; writes only in the opened range; a dead unit 0x0B, an unmapped one 0x0A; 20 clients at once")
    func modbusFront() async throws {
        let front = try TestEnvironment.freePort()
        let http = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: "", simArgs: ["--unit", "1", "--unit", "3", "--set", "1/holding:100=215", "--counter", "1/input:0@20"],
                                      httpListen: "127.0.0.1:\(http)", extraSections: """
            [[modbus_server]]
            listen = "127.0.0.1:\(front)"
            units = { "7" = "plc:1", "8" = "plc:3", "9" = "plc:5" }
            writable = ["plc:1:holding:10-19"]
            max_clients = 24
            """,
                                      bodyWithPort: { port in
            """
            [[bus]]
            name = "plc"
            type = "tcp"
            host = "127.0.0.1"
            port = \(port)
            timeout_ms = 300
            [[device]]
            name = "hvac"
            bus = "plc"
            unit = 1
            poll_ms = 50
              [[device.point]]
              name = "setpoint"
              register = "holding"
              address = 100
              type = "int16"
              scale = 0.1
              writable = true
              [[device.point]]
              name = "passages"
              register = "input"
              address = 0
            [[device]]
            name = "lamp"
            bus = "plc"
            unit = 3
            poll_ms = 50
              [[device.point]]
              name = "on"
              register = "coil"
              address = 0
              writable = true
            """
        })
        try await rig.waitFor("gateway/e2e/hvac/setpoint", "21.5")
        _ = try await rig.gateway.waitForLine(containing: "modbus front: listening on 127.0.0.1:\(front)")

        let results = try await Self.client(port: front, [
            "read:7:hr:100:1", "write:7:hr:10:42", "read:7:hr:10:1", "writes:7:hr:11:5,6",
            "write:7:hr:100:1", "writes:7:hr:18:1,2,3", "write:8:co:0:1", "read:8:co:0:1",
            "read:9:hr:0:1", "read:99:hr:0:1",
        ])
        func result(_ op: String) -> [String: Any] { results.first { $0["op"] as? String == op } ?? [:] }
        #expect(result("read:7:hr:100:1")["value"] as? [Int] == [215], "\(results)")
        #expect(result("write:7:hr:10:42")["ok"] as? Bool == true)
        #expect(result("read:7:hr:10:1")["value"] as? [Int] == [42])
        #expect(result("writes:7:hr:11:5,6")["ok"] as? Bool == true)
        // Outside the opened range, or on another unit: refused with ILLEGAL FUNCTION, nothing written.
        #expect(result("write:7:hr:100:1")["exception"] as? Int == 1)
        #expect(result("writes:7:hr:18:1,2,3")["exception"] as? Int == 1)
        #expect(result("write:8:co:0:1")["exception"] as? Int == 1)
        #expect(result("read:8:co:0:1")["value"] as? [Int] == [0])
        // A unit that does not answer, and one the front does not map.
        #expect(result("read:9:hr:0:1")["exception"] as? Int == 11)
        #expect(result("read:99:hr:0:1")["exception"] as? Int == 10)
        let writes = rig.sim.writes
        #expect(writes.map { [$0.unit, $0.fc, $0.address] + $0.values } == [[1, 6, 10, 42], [1, 16, 11, 5, 6]])
        // Each write is logged with the client's address.
        _ = try await rig.gateway.waitForLine(containing: "modbus front: 127.0.0.1 writes holding 10 = 42 on plc:1")

        // Per-client counts in /metrics (counted before the answer is sent: all ten are in).
        let (status, metrics) = try await OperationsTests.get("http://127.0.0.1:\(http)/metrics")
        #expect(status == 200)
        for (result, n) in [("ok", 5), ("refused", 3), ("exception", 1), ("unmapped", 1)] {
            #expect(metrics.contains("gateway_modbus_front_requests_total{client=\"127.0.0.1\",result=\"\(result)\"} \(n)"), "\(result): \(metrics.split(separator: "\n").filter { $0.contains("modbus_front") })")
        }

        // mbpoll, a second independent client (0-based references with -0).
        let mb = try await TestEnvironment.run("mbpoll", ["-m", "tcp", "-p", "\(front)", "-a", "7", "-t", "4", "-0", "-r", "100", "-c", "1", "-1", "127.0.0.1"])
        #expect(mb.status == 0, "\(mb.output)")
        #expect(mb.output.contains("[100]: \t215"), "\(mb.output)")

        // An MQTT command still goes through (ahead of outside requests) while 20 clients read at once.
        async let many = Self.client(port: front, clients: 20, ["read:7:hr:100:1", "flood:7:hr:100:50"])
        try await rig.observer.publish(to: "gateway/e2e/hvac/setpoint/set", payload: Array("19".utf8), qos: .atLeastOnce)
        try await rig.waitFor("gateway/e2e/hvac/setpoint/set/result", #"{"ok":true,"value":19}"#)
        let all = try await many
        #expect(all.filter { $0["op"] as? String == "read:7:hr:100:1" }.count == 20)
        #expect(all.allSatisfy { $0["ok"] as? Bool == true }, "\(all.filter { $0["ok"] as? Bool != true })")
        #expect(all.filter { $0["op"] as? String == "flood:7:hr:100:50" }.compactMap { ($0["value"] as? [Int])?.first } == Array(repeating: 50, count: 20))
        // Bounded: with 24 connections open, a 25th is closed at once; an idle one is closed
        // after idle_timeout_s (1 s here is too short for the clients above: checked on its own).
        let held = try (0..<24).map { _ in try TCPProbe(port: front) }
        for h in held { #expect(h.isOpen(within: .milliseconds(100)) == true) }
        let extra = try TCPProbe(port: front)
        #expect(extra.isOpen(within: .seconds(5)) == false, "the 25th connection was not closed")
        _ = held
        // The gateway kept polling through the flood: the counter kept being published.
        let before = rig.payloads("gateway/e2e/hvac/passages").count
        try await rig.waitUntil("more polls after the flood") { rig.payloads("gateway/e2e/hvac/passages").count > before }
        await rig.shutdown()
    }

    @Test("an idle connection to the Modbus front is closed after idle_timeout_s")
    func idleClosed() async throws {
        let front = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: """
              [[device.point]]
              name = "v"
              register = "holding"
              address = 0
            """, simArgs: [], extraSections: """
            [[modbus_server]]
            listen = "127.0.0.1:\(front)"
            idle_timeout_s = 1
            """)
        _ = try await rig.gateway.waitForLine(containing: "modbus front: listening on 127.0.0.1:\(front)")
        let probe = try TCPProbe(port: front)
        // Open now; closed by the front within the bound (1 s of idleness, 10 s allowed).
        #expect(probe.isOpen(within: .milliseconds(100)) == true)
        #expect(probe.isOpen(within: .seconds(10)) == false)
        await rig.shutdown()
    }
}

/// A raw TCP connection to see whether the peer closes it.
final class TCPProbe {
    let fd: Int32
    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw FixtureError("cannot connect to 127.0.0.1:\(port)") }
    }
    deinit { close(fd) }

    /// True when nothing closed the connection within `within` (EOF or reset: false).
    func isOpen(within: Duration) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = poll(&p, 1, Int32(within.components.seconds * 1000 + within.components.attoseconds / 1_000_000_000_000_000))
        guard n > 0 else { return true }
        var b: UInt8 = 0
        return recv(fd, &b, 1, Int32(MSG_PEEK)) > 0
    }
}
