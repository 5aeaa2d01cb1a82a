import GatewayConfig
import Logging
import Modbus
import MQTT
import Prometheus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the operations listener shows: Prometheus metrics and the live status of every device,
/// point and recent command. Made only when `[http] listen` is on; the runtime holds it as an
/// optional, so a gateway without the listener pays nothing on its poll and command paths.
///
/// Every label comes from the configuration (device, point, bus names) or from a fixed set
/// (results, outcomes, QoS), never from a payload or a topic a client chose, so the number of
/// series is bounded by the configuration. Metric handles are made once, at start, and kept by
/// the code that updates them (``DeviceMeter``): the poll path does no registry lookup.
public final class GatewayTelemetry: Sendable {
    public let registry = PrometheusCollectorRegistry()
    public let gatewayID: String
    public let version: String
    let startedWall: Double
    /// Device and bus meters; a reload adds and removes some (``reconfigure(_:)``).
    private struct Meters: Sendable {
        var devices: [String: DeviceMeter] = [:]
        /// Devices in configuration order (the status page's order).
        var order: [DeviceMeter] = []
        var buses: [String: BusMeter] = [:]
    }
    private let meters = Mutex(Meters())
    var deviceOrder: [DeviceMeter] { meters.withLock { $0.order } }
    private let commands = Mutex(RecentCommands())
    private let lastRenderSize = Mutex(16_384)

    // MQTT (read from the client at scrape time, and from its events).
    let mqttConnectedGauge: Gauge
    let mqttConnects: Counter
    private let mqttDisconnects: [String: Counter]
    let mqttQueued: Gauge
    let mqttInFlight: Gauge
    let mqttDropped: ScrapedCounter
    let mqttDroppedIncoming: ScrapedCounter
    let mqttPublished: [ScrapedCounter]
    let mqttAckRoundTrip: DurationHistogram
    private let mqttBroker = Mutex<(connected: Bool, since: Double?, lastError: String?)>((false, nil, nil))

    // Process (read at scrape time).
    private let residentBytes: Gauge
    private let privateBytes: Gauge
    private let cpuSeconds: ScrapedCounter
    private let openFDs: Gauge
    private let startTime: Gauge

    // Commands.
    private let answerSeconds: DurationHistogram
    private let writeSeconds: DurationHistogram
    let pulsesActive: Gauge
    let journalWritable: Gauge

    // Outbox.
    private let outboxMessages: Gauge
    private let outboxBytes: Gauge
    private let outboxDropped: ScrapedCounter
    private let outboxWriteErrors: ScrapedCounter
    private let outboxOldest = Mutex<Int64?>(nil)
    private let outboxOldestAge: Gauge

    // Reloads.
    private let reloads: [String: Counter]
    private let reloadSucceeded: Gauge
    static let reloadResults = ["applied", "unchanged", "refused", "invalid"]

    /// Names of the Modbus devices (`bus` set) and serial devices (`bus` nil), with their points
    /// and units, in configuration order.
    public struct DeviceDescription: Sendable {
        public var name: String
        public var bus: String?
        public var points: [(name: String, unit: String?)]
        /// Points whose value is never shown (`secret = true`), by index.
        public var secret: Set<Int>
        public init(name: String, bus: String?, points: [(name: String, unit: String?)], secret: Set<Int> = []) {
            self.name = name
            self.bus = bus
            self.points = points
            self.secret = secret
        }
    }

    public init(gatewayID: String, version: String, devices: [DeviceDescription], buses: [String]) {
        self.gatewayID = gatewayID
        self.version = version
        startedWall = Self.wallClock()
        let r = registry
        r.gauge(name: "gateway_info", labels: [("version", version), ("id", gatewayID)],
                    help: "The gateway's version and id (always 1)").set(1.0)
        residentBytes = r.gauge(name: "process_resident_memory_bytes", help: "Resident memory size in bytes")
        privateBytes = r.gauge(name: "gateway_process_private_bytes",
                               help: "The gateway's own memory in bytes (Private_Dirty of /proc/self/smaps_rollup: heap, stacks, written data; what the kernel cannot take back)")
        cpuSeconds = ScrapedCounter(r.counter(name: "process_cpu_seconds_total", help: "User and system CPU time spent in seconds"))
        openFDs = r.gauge(name: "process_open_fds", help: "Open file descriptors")
        startTime = r.gauge(name: "process_start_time_seconds", help: "Start time of the process since the Unix epoch, in seconds")
        startTime.set(startedWall)

        mqttConnectedGauge = r.gauge(name: "gateway_mqtt_connected", help: "1 while the MQTT session is up")
        mqttConnects = r.counter(name: "gateway_mqtt_connects_total", help: "Successful MQTT connects")
        var disconnects: [String: Counter] = [:]
        for reason in Self.disconnectReasons {
            disconnects[reason] = r.counter(name: "gateway_mqtt_disconnects_total", labels: [("reason", reason)], help: "MQTT connections lost, by reason class")
        }
        mqttDisconnects = disconnects
        mqttQueued = r.gauge(name: "gateway_mqtt_queue_depth", help: "Messages waiting to be sent to the broker")
        mqttInFlight = r.gauge(name: "gateway_mqtt_in_flight", help: "QoS 1/2 messages sent and not yet acknowledged")
        mqttDropped = ScrapedCounter(r.counter(name: "gateway_mqtt_dropped_total", help: "Outgoing messages dropped from the full queue"))
        mqttDroppedIncoming = ScrapedCounter(r.counter(name: "gateway_mqtt_dropped_incoming_total",
                                                           help: "Incoming messages dropped (oversized, or the reader too far behind)"))
        mqttPublished = ["0", "1", "2"].map {
            ScrapedCounter(r.counter(name: "gateway_mqtt_published_total", labels: [("qos", $0)], help: "PUBLISH packets sent to the broker, by QoS"))
        }
        mqttAckRoundTrip = r.durations(name: "gateway_mqtt_ack_seconds", buckets: Self.fastBuckets,
                                                   help: "PUBLISH to PUBACK (QoS 1) or PUBCOMP (QoS 2)")

        answerSeconds = r.durations(name: "gateway_command_answer_seconds", buckets: Self.fastBuckets,
                                                help: "A command's arrival to its answer")
        writeSeconds = r.durations(name: "gateway_command_write_seconds", buckets: Self.fastBuckets,
                                               help: "A command's arrival to the end of its write on the device")
        pulsesActive = r.gauge(name: "gateway_pulses_active", help: "Pulses switched on and not yet off")
        journalWritable = r.gauge(name: "gateway_pulse_journal_writable", help: "1 when the pulse journal in state_dir can be written")
        outboxMessages = r.gauge(name: "gateway_outbox_messages", help: "Messages kept in the outbox for the broker")
        outboxBytes = r.gauge(name: "gateway_outbox_bytes", help: "Bytes of topics and payloads kept in the outbox")
        outboxDropped = ScrapedCounter(r.counter(name: "gateway_outbox_dropped_total", help: "Messages dropped from the full outbox (oldest first)"))
        outboxWriteErrors = ScrapedCounter(r.counter(name: "gateway_outbox_write_errors_total",
                                                     help: "Times the outbox could not be written (a full disk, an I/O error), once per episode"))
        outboxOldestAge = r.gauge(name: "gateway_outbox_oldest_age_seconds", help: "Age of the oldest message in the outbox (0 when empty)")
        var reloads: [String: Counter] = [:]
        for result in Self.reloadResults {
            reloads[result] = r.counter(name: "gateway_config_reloads_total", labels: [("result", result)],
                                        help: "Configuration reloads (SIGHUP), by result: applied, unchanged, refused (cannot change live), invalid")
        }
        self.reloads = reloads
        reloadSucceeded = r.gauge(name: "gateway_config_last_reload_successful", help: "0 when the last reload was refused or invalid (the earlier configuration runs)")
        reloadSucceeded.set(1.0)

        reconfigure(devices: devices, buses: buses)
    }

    /// Every device, point and bus of `configuration`.
    public convenience init(configuration c: GatewayConfiguration, version: String) {
        self.init(gatewayID: c.gateway.id, version: version, devices: Self.devices(of: c), buses: c.buses.map(\.name))
    }

    static func devices(of c: GatewayConfiguration) -> [DeviceDescription] {
        let modbus = c.devices.map { d in
            DeviceDescription(name: d.name, bus: d.bus, points: d.points.map { ($0.name, $0.unit) },
                              secret: Set(d.points.indices.filter { d.points[$0].secret }))
        }
        let serial = c.serialDevices.map { d in DeviceDescription(name: d.name, bus: nil, points: d.points.map { ($0.name, nil) }) }
        return modbus + serial
    }

    /// After a reload: meters for the devices and buses of `c`. A device whose name, bus and
    /// points stay keeps its meter (and its live status); the series of devices and buses that
    /// are gone are removed from the exposition.
    func reconfigure(_ c: GatewayConfiguration) {
        reconfigure(devices: Self.devices(of: c), buses: c.buses.map(\.name))
    }

    private func reconfigure(devices: [DeviceDescription], buses: [String]) {
        let r = registry
        meters.withLock { m in
            var next = Meters()
            for d in devices {
                let meter = m.devices[d.name].flatMap { $0.describes(d) ? $0 : nil } ?? DeviceMeter(d, registry: r)
                next.devices[d.name] = meter
                next.order.append(meter)
            }
            for b in buses { next.buses[b] = m.buses[b] ?? BusMeter(bus: b, registry: r) }
            for (name, old) in m.devices where next.devices[name] == nil { old.unregister() }
            for (name, old) in m.buses where next.buses[name] == nil { old.unregister() }
            m = next
        }
    }

    /// The outbox after a write or a delivered batch.
    func outbox(count: Int, bytes: Int, dropped: Int, oldestTs: Int64?, writeErrors: Int) {
        outboxMessages.set(Double(count))
        outboxBytes.set(Double(bytes))
        outboxDropped.update(Double(dropped))
        outboxWriteErrors.update(Double(writeErrors))
        outboxOldest.withLock { $0 = oldestTs }
    }

    /// A reload's result (one of ``reloadResults``).
    func reloaded(_ result: String) {
        reloads[result]?.increment()
        reloadSucceeded.set(result == "applied" || result == "unchanged" ? 1.0 : 0.0)
    }

    /// The meter of a configured device (nil for any other name).
    func device(_ name: String) -> DeviceMeter? { meters.withLock { $0.devices[name] } }
    func bus(_ name: String) -> BusMeter? { meters.withLock { $0.buses[name] } }

    // MARK: MQTT

    static let disconnectReasons = ["closed_by_broker", "keepalive", "protocol_error", "network", "taken_over", "other"]

    func mqttConnected(_ up: Bool, reason: MQTTDisconnectReason? = nil) {
        mqttConnectedGauge.set(up ? 1.0 : 0.0)
        if up { mqttConnects.increment() } else if let reason { mqttDisconnects[Self.reasonClass(reason)]?.increment() }
        mqttBroker.withLock { b in
            b.connected = up
            b.since = Self.wallClock()
            if let reason { b.lastError = reason.description }
        }
    }

    var mqttState: (connected: Bool, since: Double?, lastError: String?) { mqttBroker.withLock { $0 } }

    /// A fixed set of classes for the free-text reasons the client reports.
    /// The `reason` label of `gateway_mqtt_disconnects_total`, from the case (the transport's
    /// own words only tell a network failure from another).
    static func reasonClass(_ reason: MQTTDisconnectReason) -> String {
        switch reason {
        case .brokerDisconnected(.sessionTakenOver, _): return "taken_over"
        case .keepaliveTimeout: return "keepalive"
        case .malformedPacket, .protocolError: return "protocol_error"
        case .closedByBroker, .brokerDisconnected: return "closed_by_broker"
        case .transport(let error, _):
            let r = error.lowercased()
            let network = ["reset", "refused", "unreachable", "timed out", "network", "errno", "broken pipe"].contains { r.contains($0) }
            return network ? "network" : "other"
        case .reconfigured, .shutdown: return "other"
        }
    }

    // MARK: commands

    /// One answered command, for the metrics and the status page's list of the last 50.
    func commandAnswered(device: String, point: String, value: String, answer: CommandAnswer,
                         receivedAt: ContinuousClock.Instant, wroteAt: ContinuousClock.Instant?) {
        let now = ContinuousClock.now
        let outcome: String
        switch answer {
        case .ok: outcome = "ok"
        case .readBackFailed: outcome = "ok_readback_failed"
        case .refused(let refusal): outcome = refusal.outcome
        }
        if let meter = self.device(device) {
            meter.command(point: point, outcome: outcome)
        }
        answerSeconds.recordNanoseconds((now - receivedAt).nanoseconds)
        if let wroteAt { writeSeconds.recordNanoseconds((wroteAt - receivedAt).nanoseconds) }
        // A refused command's value is not shown: it may be anything (a mistyped PIN, garbage).
        let shown = if case .refused = answer { "" } else { String(value.prefix(64)) }
        let entry = RecentCommands.Entry(at: Self.wallClock(), device: device, point: point, value: shown,
                                         answer: answer.json(), latencyMs: Double((now - receivedAt).nanoseconds) / 1e6)
        commands.withLock { $0.append(entry) }
    }

    var recentCommands: [RecentCommands.Entry] { commands.withLock { $0.newestFirst } }

    // MARK: scrape

    /// Reads what is cheaper to read than to keep up to date (the process, the client, the
    /// buses), then renders the registry in the Prometheus text format.
    public func render(mqtt: ScrapeSnapshot) -> [UInt8] {
        refreshProcess()
        mqttQueued.set(Double(mqtt.queued))
        mqttInFlight.set(Double(mqtt.inFlight))
        mqttDropped.update(Double(mqtt.dropped))
        mqttDroppedIncoming.update(Double(mqtt.droppedIncoming))
        for (qos, count) in zip(mqttPublished, mqtt.published) { qos.update(Double(count)) }
        pulsesActive.set(Double(mqtt.pulsesActive))
        journalWritable.set(mqtt.journalWritable ? 1.0 : 0.0)
        for meter in meters.withLock({ Array($0.buses.values) }) { meter.refresh() }
        // Sized by the last rendering: one allocation, not a doubling series of them.
        var out: [UInt8] = []
        out.reserveCapacity(lastRenderSize.withLock { $0 } + 4096)
        registry.emit(into: &out)
        emitDeviceSeries(into: &out)
        lastRenderSize.withLock { $0 = out.count }
        return out
    }

    /// The devices' poll series (``DeviceMeter/PollSeries``), one family after another as the
    /// text format asks, after the registry's families.
    func emitDeviceSeries(into out: inout [UInt8]) {
        let devices = deviceOrder.map { meter in
            let s = meter.snapshot
            return (label: Self.labelValue(meter.name), series: s.series, online: s.state == .online)
        }
        guard !devices.isEmpty else { return }
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ sample: ((label: String, series: DeviceMeter.PollSeries, online: Bool)) -> Void) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for d in devices { sample(d) }
        }
        family("gateway_device_online", "gauge", "1 while the device answers (0: offline or not yet seen)") { d in
            text += "gateway_device_online{device=\(d.label)} \(d.online ? 1 : 0)\n"
        }
        family("gateway_device_last_success_timestamp_seconds", "gauge", "When the device last answered (Unix time; 0 = never)") { d in
            text += "gateway_device_last_success_timestamp_seconds{device=\(d.label)} \(d.series.lastSuccess)\n"
        }
        family("gateway_device_poll_period_seconds", "gauge", "Time between the starts of its last two polls") { d in
            text += "gateway_device_poll_period_seconds{device=\(d.label)} \(d.series.period)\n"
        }
        family("gateway_device_polls_total", "counter", "Polls by result") { d in
            for (i, result) in DeviceMeter.pollResults.enumerated() where d.series.polls[i] > 0 {
                text += "gateway_device_polls_total{device=\(d.label),result=\"\(result)\"} \(d.series.polls[i])\n"
            }
        }
        family("gateway_device_poll_duration_seconds", "histogram", "How long one poll of the device took") { d in
            var cumulative: UInt64 = 0
            for (i, bound) in Self.pollBuckets.enumerated() {
                cumulative += d.series.durations[i]
                text += "gateway_device_poll_duration_seconds_bucket{device=\(d.label),le=\"\(Double(bound.nanoseconds) / 1e9)\"} \(cumulative)\n"
            }
            cumulative += d.series.durations[Self.pollBuckets.count]
            text += "gateway_device_poll_duration_seconds_bucket{device=\(d.label),le=\"+Inf\"} \(cumulative)\n"
            text += "gateway_device_poll_duration_seconds_sum{device=\(d.label)} \(Double(d.series.durationSumNanoseconds) / 1e9)\n"
            text += "gateway_device_poll_duration_seconds_count{device=\(d.label)} \(cumulative)\n"
        }
        out.append(contentsOf: text.utf8)
    }

    /// A label value in the text format: quoted, with backslash, quote and newline escaped.
    static func labelValue(_ v: String) -> String {
        var s = "\""
        for c in v.unicodeScalars {
            switch c {
            case "\\": s += "\\\\"
            case "\"": s += "\\\""
            case "\n": s += "\\n"
            default: s.unicodeScalars.append(c)
            }
        }
        return s + "\""
    }

    private func refreshProcess() {
        let oldest = outboxOldest.withLock { $0 }
        outboxOldestAge.set(oldest.map { max(0, Double(unixMilliseconds() - $0) / 1000) } ?? 0)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        cpuSeconds.update(Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
                       + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6)
        if let text = ConfigLoader.readFile("/proc/self/statm").map({ String(decoding: $0, as: UTF8.self) }) {
            let fields = text.split(separator: " ")
            if fields.count > 1, let pages = Double(fields[1]) { residentBytes.set(pages * Double(sysconf(Int32(_SC_PAGESIZE)))) }
        }
        if let bytes = Self.privateDirtyBytes() { privateBytes.set(Double(bytes)) }
        if let dir = opendir("/proc/self/fd") {
            var n = 0
            while readdir(dir) != nil { n += 1 }
            closedir(dir)
            openFDs.set(Double(max(0, n - 3)))   // ".", ".." and the directory's own fd
        }
    }

    /// `Private_Dirty` of `/proc/self/smaps_rollup`, in bytes: memory only this process holds and
    /// has written (heap, stacks, written data), which the kernel can neither drop nor share.
    static func privateDirtyBytes() -> Int? {
        guard let bytes = ConfigLoader.readFile("/proc/self/smaps_rollup") else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("Private_Dirty:") {
            let fields = line.split(separator: " ")
            return fields.count >= 2 ? Int(fields[1]).map { $0 * 1024 } : nil   // "Private_Dirty:  1234 kB"
        }
        return nil
    }

    /// Unix time in seconds (ms resolution is plenty for ages on a status page).
    static func wallClock() -> Double { Double(unixMilliseconds()) / 1000 }

    /// Fewer buckets for the per-device histogram (it is repeated for every device): 5 ms to 2.5 s.
    static let pollBuckets: [Duration] = [.milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(2.5)]

    /// 1 ms to 10 s: commands and acks on a LAN take a few ms, a dead unit's timeout a second.
    static let fastBuckets: [Duration] = [.milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                          .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
                                          .seconds(1), .seconds(2.5), .seconds(5), .seconds(10)]
}

/// What the runtime reports at scrape time: the MQTT client's counters and the pulses on.
public struct ScrapeSnapshot: Sendable {
    public var connected: Bool
    /// PUBLISH packets sent, by QoS 0, 1, 2.
    public var published: [Int]
    /// Pulses on and not yet off (not MQTT, but read at the same time).
    public var pulsesActive: Int
    public var queued: Int
    public var inFlight: Int
    public var dropped: Int
    public var droppedIncoming: Int
    /// Whether the system clock is synchronised (``ClockSync``), and whether timed commands wait for it.
    public var clockSynchronised = true
    public var clockRequired = true
    /// Whether the pulse journal in `state_dir` can be written.
    public var journalWritable = true
}

/// The last 50 commands, newest last.
struct RecentCommands: Sendable {
    struct Entry: Sendable {
        var at: Double
        var device: String
        var point: String
        var value: String
        var answer: String
        var latencyMs: Double
    }
    static let capacity = 50
    private var ring: [Entry] = []
    private var next = 0

    mutating func append(_ e: Entry) {
        if ring.count < Self.capacity { ring.append(e) } else { ring[next] = e }
        next = (next + 1) % Self.capacity
    }

    var newestFirst: [Entry] {
        guard ring.count == Self.capacity else { return ring.reversed() }
        return (ring[next...] + ring[..<next]).reversed()
    }
}

/// One device's metrics and live status, kept by its poller (or serial runner) and commander.
final class DeviceMeter: Sendable {
    let name: String
    let bus: String?
    let pointNames: [String]
    let units: [String?]
    /// Points whose value the status page shows as "(secret)".
    let secret: Set<Int>
    /// Command counters by point and outcome, made when an outcome first happens.
    private let commandCounters = Mutex<[String: Counter]>([:])
    private let registry: PrometheusCollectorRegistry
    let frames: [String: Counter]
    let reopens: Counter?

    struct Status: Sendable {
        var state = DeviceHealth.State.unknown
        var lastPollWall: Double?
        var lastSuccessWall: Double?
        var lastError: String?
        var values: [String?]
        var valueWall: [Double?]
        /// The poll series of `/metrics` (``PollSeries``).
        var series = PollSeries()
    }

    /// A device's poll series: numbers kept with its status and written out by
    /// ``GatewayTelemetry/render(mqtt:)``, not objects in the Prometheus registry (two gauges for
    /// online and the last success, one for the period, a histogram and the poll counters cost
    /// about 2 KiB a device there, and a labels array per poll; heaptrack at 240 devices).
    struct PollSeries: Sendable {
        /// When the device last answered (Unix seconds; 0 = never).
        var lastSuccess = 0.0
        /// Seconds between the starts of its last two polls.
        var period = 0.0
        /// Polls by result, in the order of ``DeviceMeter/pollResults``.
        var polls = InlineArray<6, UInt64>(repeating: 0)
        /// Poll durations: counts at or under each of ``GatewayTelemetry/pollBuckets`` (not
        /// cumulative), then above the last; and their sum in nanoseconds.
        var durations = InlineArray<7, UInt64>(repeating: 0)
        var durationSumNanoseconds: Int64 = 0
    }
    /// The results `gateway_device_polls_total` counts (``DeviceMeter/pollResult(_:_:)``).
    static let pollResults = ["ok", "timeout", "exception", "crc", "busy", "error"]
    private let status: Mutex<Status>

    static let frameResults = ["matched", "unmatched", "oversized", "overflow"]

    init(_ d: GatewayTelemetry.DeviceDescription, registry r: PrometheusCollectorRegistry) {
        name = d.name
        bus = d.bus
        pointNames = d.points.map(\.name)
        units = d.points.map(\.unit)
        secret = d.secret
        registry = r
        let l = [("device", d.name)]
        if d.bus == nil {
            var frames: [String: Counter] = [:]
            for result in Self.frameResults {
                frames[result] = r.counter(name: "gateway_serial_frames_total", labels: l + [("result", result)], help: "Serial frames by result")
            }
            self.frames = frames
            reopens = r.counter(name: "gateway_serial_reopens_total", labels: l, help: "Times the serial port was opened again after it failed")
        } else {
            frames = [:]
            reopens = nil
        }
        status = Mutex(Status(values: Array(repeating: nil, count: d.points.count), valueWall: Array(repeating: nil, count: d.points.count)))
    }

    var snapshot: Status { status.withLock { $0 } }

    /// Made for the same device: same name, bus and points (a reload keeps such a meter).
    func describes(_ d: GatewayTelemetry.DeviceDescription) -> Bool {
        name == d.name && bus == d.bus && pointNames == d.points.map(\.name) && units == d.points.map(\.unit) && secret == d.secret
    }

    /// The device is gone (a reload): its series leave the exposition.
    func unregister() {
        for c in commandCounters.withLock({ Array($0.values) }) + Array(frames.values) {
            registry.unregisterCounter(c)
        }
        if let reopens { registry.unregisterCounter(reopens) }
    }

    func state(_ state: DeviceHealth.State) {
        status.withLock { $0.state = state }
    }

    /// One Modbus poll: its result class (one of ``pollResults``), duration and (on an answer)
    /// the time of success.
    func poll(result: String, error: String?, started: ContinuousClock.Instant, duration: Duration, previousStart: ContinuousClock.Instant?) {
        let kind = Self.pollResults.firstIndex(of: result) ?? Self.pollResults.count - 1   // anything else counts as "error"
        let ns = duration.nanoseconds
        let bucket = GatewayTelemetry.pollBuckets.firstIndex { ns <= $0.nanoseconds } ?? GatewayTelemetry.pollBuckets.count
        let now = GatewayTelemetry.wallClock()
        let answered = result == "ok" || result == "exception"
        status.withLock { s in
            s.series.polls[kind] += 1
            s.series.durations[bucket] += 1
            s.series.durationSumNanoseconds &+= ns
            if let previousStart { s.series.period = Double((started - previousStart).nanoseconds) / 1e9 }
            s.lastPollWall = now
            if answered {
                s.lastSuccessWall = now
                s.series.lastSuccess = now
            }
            if result != "busy" { s.lastError = error }
        }
    }

    /// A serial frame that fed a point (or not).
    func frame(_ result: String) { frames[result]?.increment() }

    func answered() {
        let now = GatewayTelemetry.wallClock()
        status.withLock { s in
            s.lastPollWall = now
            s.lastSuccessWall = now
            s.series.lastSuccess = now
            s.lastError = nil
        }
    }

    func failed(_ why: String) {
        status.withLock { s in
            s.lastPollWall = GatewayTelemetry.wallClock()
            s.lastError = why
        }
    }

    /// A value as published.
    func value(point: Int, _ value: PointValue) {
        let now = GatewayTelemetry.wallClock()
        status.withLock { s in
            guard point < s.values.count else { return }
            s.values[point] = secret.contains(point) ? "\"(secret)\"" : value.json
            s.valueWall[point] = now
        }
    }

    /// Commands by point and outcome; both come from the configuration or a fixed set, but the
    /// point of a refused command may be any name a client sent: such commands count as `point="?"`.
    func command(point: String, outcome: String) {
        let p = pointNames.contains(point) ? point : "?"
        counter(in: commandCounters, key: p + "\u{0}" + outcome, name: "gateway_commands_total",
                labels: [("device", name), ("point", p), ("outcome", outcome)], help: "Commands answered, by point and outcome").increment()
    }

    /// The counter kept under `key`, made on first use.
    private func counter(in counters: borrowing Mutex<[String: Counter]>, key: String, name: String, labels: [(String, String)],
                         help: String) -> Counter {
        counters.withLock { c -> Counter in
            if let existing = c[key] { return existing }
            let made = registry.counter(name: name, labels: labels, help: help)
            c[key] = made
            return made
        }
    }

    /// Classifies one poll for `gateway_device_polls_total`.
    static func pollResult(_ outcome: GatewayRuntime.PollOutcome, _ results: [Int: ModbusBus.ItemResult]) -> (String, String?) {
        var firstError: ModbusError?
        for r in results.values { if case .failure(let e) = r, e != .busBusy { firstError = e; break } }
        switch outcome {
        case .notStarted: return ("busy", nil)
        case .answered:
            if case .exception? = firstError { return ("exception", "\(firstError!)") }
            return ("ok", firstError.map { "\($0)" })
        case .failed:
            switch firstError {
            case .timeout?: return ("timeout", "\(firstError!)")
            case .badCRC?: return ("crc", "\(firstError!)")
            case .exception?: return ("exception", "\(firstError!)")
            default: return ("error", firstError.map { "\($0)" } ?? "no answer")
            }
        }
    }
}

/// One bus's request counters, read from the bus at scrape time.
final class BusMeter: Sendable {
    let bus: String
    private let requests: ScrapedCounter
    private let errors: ScrapedCounter
    private let refusals: ScrapedCounter
    private let busySeconds: ScrapedCounter
    private let source = Mutex<ModbusBus?>(nil)

    init(bus: String, registry r: PrometheusCollectorRegistry) {
        self.bus = bus
        let l = [("bus", bus)]
        requests = ScrapedCounter(r.counter(name: "gateway_bus_requests_total", labels: l, help: "Requests run on the bus"), registry: r)
        errors = ScrapedCounter(r.counter(name: "gateway_bus_errors_total", labels: l, help: "Requests that failed (no answer, bad answer, exception)"),
                                registry: r)
        refusals = ScrapedCounter(r.counter(name: "gateway_bus_busy_total", labels: l,
                                                help: "Requests not started by their deadline because the bus was busy"), registry: r)
        busySeconds = ScrapedCounter(r.counter(name: "gateway_bus_busy_seconds_total", labels: l,
                                                   help: "Time the bus spent in requests (its utilisation is the rate of this)"), registry: r)
    }

    /// The bus it reads (a reload that changes the bus attaches the new one, whose totals start
    /// at zero again).
    func attach(_ bus: ModbusBus) {
        source.withLock { $0 = bus }
        for c in [requests, errors, refusals, busySeconds] { c.restart() }
    }

    /// The bus is gone (a reload).
    func unregister() {
        for c in [requests, errors, refusals, busySeconds] { c.unregister() }
    }

    func refresh() {
        guard let s = source.withLock({ $0 })?.statistics else { return }
        requests.update(Double(s.requests))
        errors.update(Double(s.errors))
        refusals.update(Double(s.busyRefusals))
        busySeconds.update(Double(s.busyNanoseconds) / 1e9)
    }
}

/// A counter whose source keeps its own running total (the kernel, the MQTT client, a bus):
/// at scrape time it is moved forward by what the total grew since the last scrape.
final class ScrapedCounter: Sendable {
    private let counter: Counter
    private let last = Mutex(0.0)
    private let registry: PrometheusCollectorRegistry?
    init(_ counter: Counter, registry: PrometheusCollectorRegistry? = nil) {
        self.counter = counter
        self.registry = registry
    }

    /// Its source starts again from zero.
    func restart() { last.withLock { $0 = 0 } }

    func unregister() { registry?.unregisterCounter(counter) }

    func update(_ total: Double) {
        let delta = last.withLock { l -> Double in
            defer { l = max(l, total) }
            return total - l
        }
        if delta > 0 { counter.increment(by: delta) }
    }
}

extension PrometheusCollectorRegistry {
    // The registry's name-based makers are deprecated in favour of descriptors; these take a
    // metric's full name as its descriptor's name.
    func counter(name: String, labels: [(String, String)] = [], help: String) -> Counter {
        makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    func gauge(name: String, labels: [(String, String)] = [], help: String) -> Gauge {
        makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    func durations(name: String, labels: [(String, String)] = [], buckets: [Duration], help: String) -> DurationHistogram {
        makeDurationHistogram(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels, buckets: buckets)
    }
}

extension GatewayTelemetry {
    /// `/api/status`: the gateway, its MQTT session, its health, every device with its points'
    /// last published values, and the last 50 commands (newest first). Ages in seconds, times in
    /// Unix seconds. Documented in README "Operations".
    public func statusJSON(mqtt: ScrapeSnapshot, problems: [String]) -> [UInt8] {
        let now = Self.wallClock()
        func num(_ d: Double?) -> String { d.map { Scaling.format(($0 * 1000).rounded() / 1000) } ?? "null" }
        func ageOf(_ t: Double?) -> String { num(t.map { max(0, now - $0) }) }
        func str(_ s: String?) -> String { s.map(JSONValue.quoted) ?? "null" }
        let broker = mqttState
        var out = "{\"gateway\":{\"id\":\(JSONValue.quoted(gatewayID)),\"version\":\(JSONValue.quoted(version)),\"started_at\":\(num(startedWall)),\"uptime_s\":\(num(now - startedWall))"
        out += ",\"clock\":{\"synchronised\":\(mqtt.clockSynchronised),\"required\":\(mqtt.clockRequired)}}"
        out += ",\"mqtt\":{\"connected\":\(mqtt.connected),\"since\":\(num(broker.since)),\"last_error\":\(str(broker.lastError)),\"queued\":\(mqtt.queued),\"in_flight\":\(mqtt.inFlight),\"dropped\":\(mqtt.dropped)}"
        out += ",\"health\":{\"ok\":\(problems.isEmpty),\"reasons\":[\(problems.map(JSONValue.quoted).joined(separator: ","))]}"
        out += ",\"devices\":["
        for (i, d) in deviceOrder.enumerated() {
            let s = d.snapshot
            if i > 0 { out += "," }
            out += "{\"name\":\(JSONValue.quoted(d.name)),\"bus\":\(str(d.bus)),\"state\":\"\(s.state.rawValue)\",\"last_poll_age_s\":\(ageOf(s.lastPollWall))"
            out += ",\"last_success_age_s\":\(ageOf(s.lastSuccessWall)),\"last_error\":\(str(s.lastError)),\"points\":["
            for (j, name) in d.pointNames.enumerated() {
                if j > 0 { out += "," }
                out += "{\"name\":\(JSONValue.quoted(name)),\"value\":\(s.values[j] ?? "null"),\"unit\":\(str(d.units[j])),\"age_s\":\(ageOf(s.valueWall[j]))}"
            }
            out += "]}"
        }
        out += "],\"commands\":["
        for (i, c) in recentCommands.enumerated() {
            if i > 0 { out += "," }
            out += "{\"at\":\(num(c.at)),\"device\":\(JSONValue.quoted(c.device)),\"point\":\(JSONValue.quoted(c.point)),\"value\":\(JSONValue.quoted(c.value)),\"answer\":\(c.answer),\"latency_ms\":\(num(c.latencyMs))}"
        }
        out += "]}"
        return Array(out.utf8)
    }
}

/// The metrics as a feature: the connection's state, and the series of the devices a reload
/// brings (before they start).
extension GatewayTelemetry: GatewayFeature {
    func brokerConnected() async { mqttConnected(true) }
    func brokerLost(reason: MQTTDisconnectReason) async { mqttConnected(false, reason: reason) }
    func reloaded(from old: GatewayConfiguration, to new: GatewayConfiguration) { reconfigure(new) }
}
