import Foundation
import Operations
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The operations listener against real peers: curl, promtool, a real Prometheus, a real
/// headless Chromium (selenium), and socat standing in for systemd's notify socket.
@Suite("Operations: metrics, health, systemd, status page (curl, promtool, Prometheus, Chromium)", .timeLimit(.minutes(3)))
struct OperationsTests {
    static let points = """
        [[device.point]]
        name = "unlock"
        register = "coil"
        address = 0
        writable = true
        [[device.point]]
        name = "temp"
        register = "holding"
        address = 0
        unit = "°C"
        """

    /// GET with curl: (HTTP status, body). `user` as `name:password`.
    static func get(_ url: String, user: String? = nil) async throws -> (status: Int, body: String) {
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-http")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/body"
        let args = ["-s", "--max-time", "10", "-o", out, "-w", "%{http_code}"] + (user.map { ["-u", $0] } ?? []) + [url]
        let r = try await TestEnvironment.run("curl", args, timeout: .seconds(15))
        let body = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        return (Int(r.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1, body)
    }

    /// Polls `url` (bounded: at most `timeout`, every 200 ms) until `condition` holds for its answer.
    /// Only for a peer that moves on its own schedule (Prometheus scrapes when it will); the
    /// gateway's own endpoints are read once, after the event that changes them.
    static func waitFor(_ url: String, user: String? = nil, timeout: Duration = .seconds(20), _ what: String,
                        _ condition: (Int, String) -> Bool) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        var last = (0, "")
        while ContinuousClock.now < deadline {
            last = try await get(url, user: user)
            if condition(last.0, last.1) { return last.1 }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw FixtureError("timed out waiting for \(what) at \(url); last answer \(last.0): \(last.1.prefix(2000))")
    }

    /// The value of one series in a Prometheus exposition (`name{labels}` as printed).
    static func sample(_ exposition: String, _ series: String) -> Double? {
        for line in exposition.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test("20 clients that never finish their request: the 4 oldest make room, 16 are held, /healthz gets through; polls and commands go on")
    func slowClients() async throws {
        let port = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: Self.points, simArgs: ["--set", "holding:0=1"], httpListen: "127.0.0.1:\(port)")
        try await rig.waitFor("gateway/e2e/dev/temp", "1")
        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        for _ in 0..<20 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = UInt16(port).bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            #expect(rc == 0)
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let partial = "GET /metrics HTTP/1.1\r\nHost: x\r\n"   // and never the blank line
            _ = partial.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            sockets.append(fd)
        }
        // At the limit the oldest connection makes room for the new one: the first 4 are closed
        // by the gateway (recv sees the end, or a reset as our bytes were unread), not left to
        // the 5 s timeout (EAGAIN).
        var closedByGateway = 0
        for fd in sockets.prefix(4) {
            var byte: UInt8 = 0
            let n = recv(fd, &byte, 1, 0)
            if n == 0 || (n < 0 && errno == ECONNRESET) { closedByGateway += 1 }
        }
        #expect(closedByGateway == 4)
        // The last 16 are held open, waiting for the rest of their request.
        let held = sockets.suffix(16).filter { fd in
            var byte: UInt8 = 0
            return recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
        }.count
        #expect(held == 16)
        // A health check still gets through while they hold every slot.
        #expect(try await Self.get("http://127.0.0.1:\(port)/healthz").status == 200)
        // Polls and commands do not notice.
        try await rig.sim.set("holding:0=2")
        try await rig.waitFor("gateway/e2e/dev/temp", "2")
        try await rig.observer.publish(to: "gateway/e2e/dev/unlock/set", payload: Array("true".utf8), qos: .atLeastOnce)
        try await rig.waitUntil("the command answered") { rig.payloads("gateway/e2e/dev/unlock/set/result").count == 1 }
        #expect(rig.payloads("gateway/e2e/dev/unlock/set/result").first?.hasPrefix("{\"ok\":true") == true)
        // Once the held ones go away, the listener answers again.
        for fd in sockets { close(fd) }
        sockets = []
        #expect(try await Self.get("http://127.0.0.1:\(port)/healthz").status == 200)
        await rig.shutdown()
    }

    @Test("a real Prometheus scrapes the gateway: up, and the device online")
    func prometheusScrapes() async throws {
        let port = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: Self.points, simArgs: [], httpListen: "127.0.0.1:\(port)")
        try await rig.waitFor("gateway/e2e/dev/status", "online")
        let promPort = try TestEnvironment.freePort()
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-prom")
        let config = """
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: gateway
                static_configs:
                  - targets: ["127.0.0.1:\(port)"]
            """
        try config.write(toFile: dir + "/prometheus.yml", atomically: true, encoding: .utf8)
        let prometheus = try ChildProcess(try TestEnvironment.require("prometheus"), [
            "--config.file=\(dir)/prometheus.yml", "--storage.tsdb.path=\(dir)/data",
            "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn",
        ])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let query = "http://127.0.0.1:\(promPort)/api/v1/query?query="
        _ = try await Self.waitFor(query + "up%7Bjob%3D%22gateway%22%7D", timeout: .seconds(60), "Prometheus: up == 1") { status, body in
            status == 200 && body.contains("\"value\":[") && body.contains(",\"1\"]")
        }
        let online = try await Self.waitFor(query + "gateway_device_online", timeout: .seconds(30), "Prometheus: gateway_device_online") { status, body in
            status == 200 && body.contains("\"device\":\"dev\"")
        }
        #expect(online.contains(",\"1\"]"), "\(online)")
        await prometheus.stop()
        await rig.shutdown()
    }

    @Test("systemd: READY=1, then WATCHDOG=1 while polling; a hung poll loop stops the pings and /healthz names it")
    func watchdog() async throws {
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-notify")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socketPath = dir + "/notify.sock"
        // socat stands in for systemd: it receives the datagrams and prints them.
        let systemd = try ChildProcess(try TestEnvironment.require("socat"), ["-d", "-d", "-u", "UNIX-RECV:\(socketPath)", "STDOUT"])
        // socat has bound the socket once it starts its transfer loop.
        try await systemd.waitForLine(containing: "starting data transfer loop")
        // The test's own datagrams, to mark places in what socat prints (in arrival order).
        let marker = try #require(SystemdNotifier(environment: { $0 == "NOTIFY_SOCKET" ? socketPath : nil }))
        let port = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: Self.points, simArgs: [], httpListen: "127.0.0.1:\(port)", environment: [
            "NOTIFY_SOCKET": socketPath, "WATCHDOG_USEC": "400000",
            "GATEWAY_DEBUG_STALL_POLLER_AFTER_S": "3", "GATEWAY_DEBUG_LIVENESS_GRACE_MS": "500",
        ], gatewayArguments: ["--log-level", "debug"])
        try await systemd.waitForLine(containing: "READY=1")
        try await systemd.waitForLine(timeout: .seconds(5)) { $0 == "WATCHDOG=1" }
        // The debug hook hangs the bus poller 3 s after start: the watchdog stops being fed.
        try await rig.gateway.waitForLine(containing: "debug hook: this poller now hangs")
        try await rig.gateway.waitForLine(containing: "systemd watchdog not fed: poller of bus plc stalled")
        // Every ping the gateway sent before that line is ahead of this marker in the socket.
        marker.notify("MARK=stalled")
        #expect(systemd.lines.filter { $0 == "WATCHDOG=1" }.count >= 2)
        let health = try await Self.get("http://127.0.0.1:\(port)/healthz")
        #expect(health.status == 503)
        #expect(health.body.contains("poller of bus plc: no progress"), "\(health.body)")
        // Five more intervals, each logged as skipped; then an end marker. Between the two
        // markers, not one ping.
        let skipped = Mutex(0)
        try await rig.gateway.waitForLine { line in
            line.contains("systemd watchdog: ping skipped") && skipped.withLock { $0 += 1; return $0 >= 5 }
        }
        marker.notify("MARK=end")
        try await systemd.waitForLine { $0 == "MARK=end" }
        let lines = systemd.lines
        let from = try #require(lines.firstIndex(of: "MARK=stalled")), to = try #require(lines.firstIndex(of: "MARK=end"))
        #expect(!lines[from..<to].contains("WATCHDOG=1"), "\(lines.suffix(12))")
        await rig.shutdown()
        try await systemd.waitForLine(containing: "STOPPING=1")
        await systemd.stop()
    }

    @Test("status page in headless Chromium: devices show, a new value appears without a reload, a stopped device shows offline")
    func statusPage() async throws {
        _ = try TestEnvironment.require("chromium")
        _ = try TestEnvironment.require("chromedriver")
        let port = try TestEnvironment.freePort()
        let rig = try await Rig.start(points: Self.points, simArgs: ["--set", "holding:0=215"], httpListen: "127.0.0.1:\(port)")
        try await rig.waitFor("gateway/e2e/dev/temp", "215")
        let script = TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/status_page.py"
        var args = [script, "http://127.0.0.1:\(port)/", "--seconds", "90"]
        if let shot = ProcessInfo.processInfo.environment["STATUS_PAGE_SCREENSHOT"] { args += ["--screenshot", shot] }
        let browser = try ChildProcess(try TestEnvironment.venvPython(), args)
        try await browser.waitForLine(timeout: .seconds(60)) { $0.contains("\"name\": \"dev\"") && $0.contains("\"state\": \"online\"") && $0.contains("215 °C") }
        try await rig.sim.set("holding:0=321")
        try await browser.waitForLine(timeout: .seconds(20)) { $0.contains("321 °C") }
        // A command shows in the list of the last commands.
        try await rig.observer.publish(to: "gateway/e2e/dev/unlock/set", payload: Array("true".utf8), qos: .atLeastOnce)
        try await browser.waitForLine(timeout: .seconds(20)) { $0.contains("\"commands\": 1") }
        _ = await rig.sim.stop()
        try await browser.waitForLine(timeout: .seconds(20)) { $0.contains("\"state\": \"offline\"") }
        #expect(!browser.lines.contains { $0.contains("\"reloaded\": true") }, "the page was reloaded: \(browser.lines)")
        browser.send("")
        _ = try? await browser.waitForExit(timeout: .seconds(20))   // it quits chromedriver first
        await browser.stop()
        await rig.shutdown()
    }
}
