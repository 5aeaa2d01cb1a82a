@testable import Gateway
import MQTT
import Testing

/// The devices' poll series, kept as numbers with each device's status and written out at the
/// scrape (not objects in the Prometheus registry): what a scrape shows after known polls.
@Suite("Device poll series in /metrics")
struct DeviceSeriesTests {
    static func lines(_ text: [UInt8], _ prefix: String) -> [String] {
        String(decoding: text, as: UTF8.self).split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
    }

    @Test("polls, their durations (cumulative buckets, sum, count), period, online and last success; a name that needs escaping is escaped")
    func series() {
        let t = GatewayTelemetry(gatewayID: "gw", version: "test",
                                 devices: [.init(name: "door", bus: "plc", points: [("p", nil)]), .init(name: "odd\"name", bus: "plc", points: [])],
                                 buses: ["plc"])
        let door = t.device("door")!
        let start = ContinuousClock.now
        door.poll(result: "ok", error: nil, started: start, duration: .milliseconds(3), previousStart: nil)
        door.poll(result: "ok", error: nil, started: start + .seconds(1), duration: .milliseconds(30), previousStart: start)
        door.poll(result: "timeout", error: "timeout", started: start + .milliseconds(2500), duration: .seconds(3), previousStart: start + .seconds(1))
        door.state(.online)
        let text = t.render(mqtt: ScrapeSnapshot(connected: true, published: [0, 0, 0], pulsesActive: 0, queued: 0, inFlight: 0, dropped: 0, droppedIncoming: 0))

        #expect(Self.lines(text, "gateway_device_polls_total{device=\"door\"") == [
            "gateway_device_polls_total{device=\"door\",result=\"ok\"} 2",
            "gateway_device_polls_total{device=\"door\",result=\"timeout\"} 1",
        ])
        #expect(Self.lines(text, "gateway_device_poll_duration_seconds_bucket{device=\"door\"") == [
            "gateway_device_poll_duration_seconds_bucket{device=\"door\",le=\"0.005\"} 1",
            "gateway_device_poll_duration_seconds_bucket{device=\"door\",le=\"0.025\"} 1",
            "gateway_device_poll_duration_seconds_bucket{device=\"door\",le=\"0.1\"} 2",
            "gateway_device_poll_duration_seconds_bucket{device=\"door\",le=\"0.25\"} 2",
            "gateway_device_poll_duration_seconds_bucket{device=\"door\",le=\"1.0\"} 2",
            "gateway_device_poll_duration_seconds_bucket{device=\"door\",le=\"2.5\"} 2",
            "gateway_device_poll_duration_seconds_bucket{device=\"door\",le=\"+Inf\"} 3",
        ])
        #expect(Self.lines(text, "gateway_device_poll_duration_seconds_sum{device=\"door\"}") == ["gateway_device_poll_duration_seconds_sum{device=\"door\"} 3.033"])
        #expect(Self.lines(text, "gateway_device_poll_duration_seconds_count{device=\"door\"}") == ["gateway_device_poll_duration_seconds_count{device=\"door\"} 3"])
        #expect(Self.lines(text, "gateway_device_poll_period_seconds{device=\"door\"}") == ["gateway_device_poll_period_seconds{device=\"door\"} 1.5"])
        #expect(Self.lines(text, "gateway_device_online{") == ["gateway_device_online{device=\"door\"} 1", "gateway_device_online{device=\"odd\\\"name\"} 0"])
        let lastSuccess = Self.lines(text, "gateway_device_last_success_timestamp_seconds{device=\"door\"}").first?.split(separator: " ").last.flatMap { Double($0) }
        #expect((lastSuccess ?? 0) > 1_700_000_000, "the second ok poll's wall time")
        #expect(Self.lines(text, "gateway_device_last_success_timestamp_seconds{device=\"odd\\\"name\"}") == [
            "gateway_device_last_success_timestamp_seconds{device=\"odd\\\"name\"} 0.0",
        ])
        // One HELP and one TYPE per family, each family's samples together.
        for family in ["gateway_device_online", "gateway_device_polls_total", "gateway_device_poll_duration_seconds"] {
            #expect(Self.lines(text, "# TYPE \(family) ").count == 1)
        }
        // Every sample follows its own family's TYPE line (the text format's rule).
        var family = ""
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
            if line.hasPrefix("# TYPE ") { family = String(line.split(separator: " ")[2]); continue }
            if line.hasPrefix("#") { continue }
            let name = line.prefix { $0 != "{" && $0 != " " }
            #expect(name == family || name.hasPrefix(family + "_"), "\(name) is not under its TYPE line (under \(family))")
        }
    }

    @Test("disconnects are counted by the reason's case: taken over, keepalive, protocol error, closed by the broker, network, other")
    func disconnectReasons() {
        let classes: [(MQTTDisconnectReason, String)] = [
            (.brokerDisconnected(.sessionTakenOver, nil), "taken_over"),
            (.keepaliveTimeout, "keepalive"),
            (.malformedPacket("x"), "protocol_error"),
            (.protocolError("y"), "protocol_error"),
            (.closedByBroker, "closed_by_broker"),
            (.brokerDisconnected(.serverShuttingDown, "bye"), "closed_by_broker"),
            (.transport("read(descriptor:pointer:size:): Connection reset by peer (errno: 104)", tls: false), "network"),
            (.transport("handshake failed", tls: true), "other"),
            (.reconfigured, "other"),
        ]
        for (reason, label) in classes { #expect(GatewayTelemetry.reasonClass(reason) == label, "\(reason)") }
        #expect(MQTTDisconnectReason.brokerDisconnected(.sessionTakenOver, "bye").description == "broker sent DISCONNECT: session taken over (0x8E) - bye")
    }
}
