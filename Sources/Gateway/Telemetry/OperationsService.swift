import GatewayConfig
import Logging
import Operations
import ServiceLifecycle

/// The operations listener (`[http] listen`): `/metrics` (Prometheus text format), `/healthz`,
/// the status page `/` and its data `/api/status`. Added to the service group by the CLI when
/// the listener is on; when the address cannot be bound it says so and the gateway runs on
/// without it (polling and commands matter more than their dashboard).
public struct OperationsService: Service {
    let runtime: GatewayRuntime
    let telemetry: GatewayTelemetry
    let address: ListenAddress
    let credentials: HTTPListener.Credentials?
    let logger: Logger

    public init(runtime: GatewayRuntime, telemetry: GatewayTelemetry, address: ListenAddress, username: String?, password: [UInt8]?,
                logger: Logger) {
        self.runtime = runtime
        self.telemetry = telemetry
        self.address = address
        self.credentials = username.map { HTTPListener.Credentials(username: $0, password: password ?? []) }
        self.logger = logger
    }

    public func run() async throws {
        let listener: HTTPListener
        do {
            listener = try await HTTPListener.start(host: address.host, port: address.port, credentials: credentials, logger: logger) {
                [runtime, telemetry] request in
                await Self.respond(to: request, runtime: runtime, telemetry: telemetry)
            }
        } catch {
            logger.error("http: cannot listen on \(address.host):\(address.port): \(error); running without metrics, health check and status page")
            return
        }
        logger.info("http: listening on \(address.host):\(listener.port ?? address.port) (/metrics, /healthz, /api/status, /)")
        try? await gracefulShutdown()
        await listener.close()
    }

    static func respond(to request: HTTPRequest, runtime: GatewayRuntime, telemetry: GatewayTelemetry) async -> HTTPResponse {
        switch request.path {
        case "/metrics":
            return HTTPResponse(contentType: "text/plain; version=0.0.4; charset=utf-8", body: telemetry.render(mqtt: await runtime.mqttSnapshot()))
        case "/healthz":
            let problems = await runtime.healthProblems()
            if problems.isEmpty { return .text("ok\n") }
            let body = "{\"status\":\"unhealthy\",\"reasons\":[\(problems.map(JSONValue.quoted).joined(separator: ","))]}"
            return HTTPResponse(status: .serviceUnavailable, contentType: "application/json", body: Array(body.utf8))
        case "/api/status":
            let body = telemetry.statusJSON(mqtt: await runtime.mqttSnapshot(), problems: await runtime.healthProblems())
            return HTTPResponse(contentType: "application/json", body: body)
        case "/", "/index.html":
            return HTTPResponse(contentType: "text/html; charset=utf-8", body: StatusPage.html,
                                headers: [("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'")])
        default:
            return .text("not found: try /, /metrics, /healthz or /api/status\n", status: .notFound)
        }
    }
}

/// systemd's side (`Type=notify`): `READY=1` after the first connect to the broker, or after
/// ``readyAtMost`` when the broker is away (boot does not hang on it); `WATCHDOG=1` every half
/// `WatchdogSec=` while every loop makes progress (``Liveness``); `STOPPING=1` at shutdown.
/// The watchdog does not depend on the broker: a restart does not bring a broker back, and a
/// gateway without one still ends pulses. Added by the CLI when `$NOTIFY_SOCKET` is set.
public struct SystemdService: Service {
    let runtime: GatewayRuntime
    let notifier: SystemdNotifier
    let logger: Logger
    public static let readyAtMost: Duration = .seconds(10)

    public init(runtime: GatewayRuntime, notifier: SystemdNotifier, logger: Logger) {
        self.runtime = runtime
        self.notifier = notifier
        self.logger = logger
    }

    public func run() async throws {
        // Graceful shutdown cancels the waits below at once.
        let connected = await cancelWhenGracefulShutdown { await runtime.firstConnect.wait(after: 0, until: .now + Self.readyAtMost) }
        notifier.notify("READY=1\nSTATUS=\(connected ? "connected to the broker" : "broker not reachable yet")")
        if let interval = notifier.watchdogInterval {
            await cancelWhenGracefulShutdown { await feedWatchdog(every: interval) }
        } else {
            try? await gracefulShutdown()
        }
        notifier.notify("STOPPING=1")
    }

    /// `WATCHDOG=1` every `interval` while no loop is stalled. Each interval skipped is logged
    /// at debug level (the first one as an error, once per stall).
    private func feedWatchdog(every interval: Duration) async {
        logger.info("systemd watchdog: WATCHDOG=1 every \(interval) while every loop makes progress")
        var starving = false
        while !Task.isCancelled {
            let stalled = runtime.liveness?.stalled() ?? []
            let why = stalled.map { "\($0.name) stalled for \($0.late)" }.joined(separator: ", ")
            if stalled.isEmpty {
                notifier.notify("WATCHDOG=1")
                if starving { logger.notice("systemd watchdog: every loop makes progress again") }
                starving = false
            } else if !starving {
                starving = true
                logger.error("systemd watchdog not fed: \(why); systemd will restart the gateway")
            } else {
                logger.debug("systemd watchdog: ping skipped: \(why)")
            }
            do { try await Task.sleep(for: interval) } catch { return }
        }
    }
}

extension GatewayRuntime {
    public var isConnected: Bool { get async { await client.isConnected } }

    /// The MQTT client's counters now.
    public func mqttSnapshot() async -> ScrapeSnapshot {
        let c = client, services = services
        return ScrapeSnapshot(connected: await c.isConnected, published: await c.publishedCount, pulsesActive: services.journal.current.count,
                            queued: await c.queuedCount, inFlight: await c.inFlightCount,
                            dropped: await c.droppedCount, droppedIncoming: await c.droppedIncomingCount,
                            clockSynchronised: services.commands.clockSync.synchronised(logging: services.gateway.requireSyncedClock),
                            clockRequired: services.gateway.requireSyncedClock, journalWritable: services.journal.path != nil)
    }

    /// Why the gateway is not healthy (empty: healthy): the broker away, or a loop that stopped.
    public func healthProblems() async -> [String] {
        var out: [String] = []
        if await !client.isConnected { out.append("mqtt: not connected to the broker") }
        for s in liveness?.stalled() ?? [] { out.append("\(s.name): no progress for \(s.late) past its bound") }
        return out
    }
}
