import Foundation
@testable import Gateway
@testable import MQTT
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The operations listener in-process, beside the runtime (``RuntimeTests/Site``), read with curl
/// and checked by promtool; a real Prometheus, systemd's notify socket, clients that never finish
/// their request and the status page in Chromium stay in `OperationsTests` against `gateway run`.
@Suite("Operations listener, in-process (curl, promtool)")
struct OperationsServiceTests {
    static func site(gateway: String = "", extraHTTP: String = "", httpPassword: [UInt8]? = nil, points: String = OperationsTests.points) async throws -> (RuntimeTests.Site, Int) {
        let port = try TestEnvironment.freePort()
        let site = try await RuntimeTests.site(points, gateway: gateway, http: "listen = \"127.0.0.1:\(port)\"\n\(extraHTTP)", httpPassword: httpPassword)
        return (site, port)
    }

    static func get(_ port: Int, _ path: String, user: String? = nil) async throws -> (status: Int, body: String) {
        try await OperationsTests.get("http://127.0.0.1:\(port)\(path)", user: user)
    }

    @Test("/metrics: promtool accepts it; device, command and MQTT series move with what happens")
    func metrics() async throws {
        let (site, port) = try await Self.site()
        site.bus.setHolding(0, 215)
        try await RuntimeTests.running(site) { site in
            try await site.waitFor("d/status", "online")
            try await site.logs.await(containing: "http: listening on")
            #expect(try await site.command("d", "unlock", "true").hasPrefix(#"{"ok":true"#))
            #expect(try await site.command("d", "nothing", "1").contains("unknown point"))
            #expect(try await site.command("d", "unlock", "maybe").contains("is not a bool"))
            let (status, text) = try await Self.get(port, "/metrics")
            #expect(status == 200)
            let dir = try TestEnvironment.makeTemporaryDirectory("gw-metrics")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try text.write(toFile: dir + "/metrics.txt", atomically: true, encoding: .utf8)
            _ = try TestEnvironment.require("promtool")
            let check = try await TestEnvironment.run("sh", ["-c", "promtool check metrics < \(dir)/metrics.txt"])
            #expect(check.status == 0, "promtool: \(check.output)")
            let sample = { (series: String) in OperationsTests.sample(text, series) }
            #expect(sample("gateway_device_online{device=\"d\"}") == 1)
            #expect(sample("gateway_commands_total{device=\"d\",point=\"unlock\",outcome=\"ok\"}") == 1)
            #expect(sample("gateway_commands_total{device=\"d\",point=\"unlock\",outcome=\"refused\"}") == 1)
            #expect(sample("gateway_commands_total{device=\"d\",point=\"?\",outcome=\"refused\"}") == 1,
                    "an unknown point is counted as '?', never as a label a client chose")
            #expect(!text.contains("nothing"))
            #expect((sample("gateway_device_polls_total{device=\"d\",result=\"ok\"}") ?? 0) >= 1)
            #expect(sample("gateway_mqtt_connected") == 1)
            #expect((sample("gateway_mqtt_published_total{qos=\"1\"}") ?? 0) >= 3)
            #expect(sample("gateway_command_answer_seconds_count") == 3)
            #expect(text.contains("gateway_info{version=\"test\""))
            // The device stops answering: its online gauge drops and its failed polls are counted.
            site.bus.setReachable(false)
            try await site.waitFor("d/status", "offline")
            let after = try await Self.get(port, "/metrics").body
            #expect(OperationsTests.sample(after, "gateway_device_online{device=\"d\"}") == 0)
            let failed = ["timeout", "error"].compactMap { OperationsTests.sample(after, "gateway_device_polls_total{device=\"d\",result=\"\($0)\"}") }.reduce(0, +)
            #expect(failed >= 2, "\(after)")
        }
        await site.shutdown()
    }

    @Test("/api/status never shows a secret = true command's value, nor a refused command's payload: the reason only; the log does not hold the secret either")
    func secretsNotShown() async throws {
        let (site, port) = try await Self.site(points: OperationsTests.points + "\n[[device.point]]\nname = \"pin\"\nregister = \"holding\"\naddress = 40\nwritable = true\nsecret = true\n")
        try await RuntimeTests.running(site) { site in
            try await site.waitFor("d/status", "online")
            #expect(try await site.command("d", "pin", "4711").hasPrefix(#"{"ok":true"#))
            // A mistyped PIN: refused, and neither its value nor the refusal's quote of it is shown.
            #expect(try await site.command("d", "pin", "47x1").hasPrefix(#"{"ok":false"#))
            #expect(try await site.command("d", "unlock", "hunter2").hasPrefix(#"{"ok":false"#))
            #expect(try await site.command("nodev", "x", "swordfish").hasPrefix(#"{"ok":false"#))
            #expect(site.timeline.entries.filter { $0.hasPrefix("write") } == ["write 40=[4711] @0"], "the PIN was written")
            try await site.logs.await(containing: "http: listening on")
            let status = try await Self.get(port, "/api/status").body
            #expect(status.contains(#""point":"pin","value":"(secret)""#), "\(status)")
            #expect(status.contains(#""point":"unlock","value":"""#) && status.contains(#""point":"x","value":"""#), "\(status)")
            #expect(!status.contains("swordfish"))
            for leaked in ["4711", "47x1"] {
                #expect(!status.contains(leaked), "\(leaked) on /api/status")
                #expect(site.logs.count(containing: leaked) == 0, "\(leaked) in the log")
            }
        }
        await site.shutdown()
    }

    @Test("/healthz: 200 ok while the MQTT session is up, 503 with the reason when the broker is gone; unknown paths 404, writes 405")
    func healthz() async throws {
        let (site, port) = try await Self.site()
        try await RuntimeTests.running(site) { site in
            try await site.waitFor("status", "online")
            try await site.logs.await(containing: "http: listening on")
            let ok = try await Self.get(port, "/healthz")
            #expect(ok.status == 200 && ok.body == "ok\n")
            await site.broker.stop()
            // The client is not connected any more once the runtime logs the loss.
            try await site.logs.await(containing: "broker lost")
            let (badStatus, bad) = try await Self.get(port, "/healthz")
            #expect(badStatus == 503)
            #expect(bad.contains("\"status\":\"unhealthy\""))
            #expect(bad.contains("mqtt: not connected"), "\(bad)")
            #expect(try await Self.get(port, "/nothing").status == 404)
            let post = try await TestEnvironment.run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--data", "x", "http://127.0.0.1:\(port)/healthz"])
            #expect(post.output.hasPrefix("405"))
        }
        await site.shutdown()
    }

    @Test("basic auth: without or with wrong credentials 401, with the right ones the page")
    func basicAuth() async throws {
        // The file is checked by the loader; the CLI reads it, here the password is handed over.
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-auth")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "s3cret\n".write(toFile: dir + "/http-password", atomically: true, encoding: .utf8)
        chmod(dir + "/http-password", 0o600)
        let (site, port) = try await Self.site(extraHTTP: "username = \"ops\"\npassword_file = \"\(dir)/http-password\"", httpPassword: Array("s3cret".utf8))
        try await RuntimeTests.running(site) { site in
            try await site.waitFor("d/status", "online")
            try await site.logs.await(containing: "http: listening on")
            #expect(try await Self.get(port, "/api/status").status == 401)
            #expect(try await Self.get(port, "/api/status", user: "ops:wrong").status == 401)
            #expect(try await Self.get(port, "/api/status", user: "other:s3cret").status == 401)
            let right = try await Self.get(port, "/api/status", user: "ops:s3cret")
            #expect(right.status == 200)
            #expect(right.body.contains("\"name\":\"d\""))
        }
        await site.shutdown()
    }

}
