import Foundation
import MQTT
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `[mqtt] url` as a list: the nodes of a broker cluster. Two private Mosquittos stand in for
/// two nodes (not bridged: an observer on each sees what reached that node).
@Suite("Broker cluster failover (two Mosquittos, SIGKILL)", .serialized, .timeLimit(.minutes(3)))
struct BrokerClusterTests {
    static let topic = "gateway/cl/qr/scan"

    static func scans(_ o: MQTTObserver) -> [Int] { o.payloads(topic).compactMap { Int($0.prefix { $0.isNumber }) } }

    @Test("the first node is killed (SIGKILL) while scans flow (sent before and during the failover): the gateway is on the second within 1.5 x keepalive, with its birth and command subscription; every scan reached a node, in order on each, none twice on the second (at least once across both)")
    func failover() async throws {
        let first = try await Mosquitto.start()
        let second = try await Mosquitto.start()
        let pty = try await PtyPair.start()
        let dir = try TestEnvironment.makeTemporaryDirectory("gw-cluster")
        let config = dir + "/gateway.toml"
        let keepalive = 4
        try """
            [gateway]
            id = "cl"
            state_dir = "\(dir)"
            require_synced_clock = false
            [mqtt]
            url = ["mqtt://127.0.0.1:\(first.port)", "mqtt://127.0.0.1:\(second.port)"]
            keepalive = \(keepalive)
            [http]
            listen = ""
            [homeassistant]
            enabled = false
            \(qrReaderDevice(port: pty.a))
            """.write(toFile: config, atomically: true, encoding: .utf8)
        // Observers that take every message at once: with a small receive maximum the node keeps
        // what it has acknowledged to the gateway queued for the observer, and the SIGKILL loses
        // it there (seen in two full runs of 2026-12-07: 24 and then 32 scans missing; in the
        // second the gateway held only 2 unacknowledged), which says nothing about the gateway.
        let onFirst = try await MQTTObserver(port: first.port, filters: ["gateway/#"], receiveMaximum: 65_535)
        let onSecond = try await MQTTObserver(port: second.port, filters: ["gateway/#"], name: "observer-2", receiveMaximum: 65_535)
        let gw = try ChildProcess(try TestEnvironment.gatewayBinary(), ["run", "--config", config, "--log-level", "debug"])
        _ = try await gw.waitForLine(containing: "birth and statuses published")
        #expect(gw.lines.contains { $0.contains("broker connected (127.0.0.1:\(first.port))") }, "the first node first")
        _ = try await gw.waitForLine(containing: "serial port")
        let reader = try FarEnd(pty.b)

        // The first node is killed once its observer has seen 100 of the first 300 scans (the
        // rest still on their way); the other 300 are sent during the failover.
        let count = 600
        for i in 1...300 { _ = await reader.send("QR:\(String(format: "%04d", i))\n") }
        try await onFirst.waitUntil("100 scans on the first node") { Self.scans(onFirst).count >= 100 }
        first.process?.signal(SIGKILL)
        let killedAt = ContinuousClock.now
        for i in 301...count { _ = await reader.send("QR:\(String(format: "%04d", i))\n") }
        _ = try await gw.waitForLine(containing: "broker connected (127.0.0.1:\(second.port))", timeout: .seconds(Double(keepalive) * 1.5 + 1))
        print("cluster: on the second node \(ContinuousClock.now - killedAt) after the first was killed")
        try await onSecond.waitUntil("the last scan on the second node", timeout: .seconds(60)) { Self.scans(onSecond).last == count }

        let a = Self.scans(onFirst), b = Self.scans(onSecond)
        print("cluster: \(a.count) scans on the first node, \(b.count) on the second, \(Set(a).intersection(b).count) on both")
        let missing = Set(1...count).subtracting(a).subtracting(b).sorted()
        #expect(missing.isEmpty, "missing: \(missing.prefix(40)); first node \(a.prefix(40))...; second node \(b.prefix(40))...\ngateway log:\n\(gw.lines.filter { $0.contains("outbox") || $0.contains("MQTT") || $0.contains("broker") }.suffix(60).joined(separator: "\n"))")
        #expect(a == a.sorted() && b == b.sorted(), "out of order on a node")
        #expect(Set(b).count == b.count, "twice on the second node")
        // The new node has the gateway's birth and its command subscription.
        #expect(onSecond.payloads("gateway/cl/status").last == "online")
        try await onSecond.client.publish(to: "gateway/cl/nosuch/x/set", string: "1", qos: .atLeastOnce)
        _ = try await gw.waitForLine(containing: "nosuch", timeout: .seconds(10))

        await onFirst.client.closeAbruptly()
        await onSecond.client.disconnect()
        _ = await gw.stop()
        await pty.stop()
        await first.shutdown()
        await second.shutdown()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
