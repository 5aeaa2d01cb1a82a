/// A capability that acts when the broker connection comes and goes: the outbox drains, the
/// fail-safe stops or starts counting, Home Assistant's configs go out again, the metrics say so.
/// The runtime keeps a list of them (``GatewayRuntime/brokerListeners()``) and, at every connect
/// and every loss, calls each in turn, naming none.
protocol BrokerListener: Sendable {
    /// The broker is reached (every connect; the command subscription is made by then).
    func brokerConnected() async
    /// The broker is lost; `reason` as the client says it.
    func brokerLost(reason: String) async
}

extension BrokerListener {
    func brokerConnected() async {}
    func brokerLost(reason: String) async {}
}

extension Outbox: BrokerListener {
    func brokerConnected() async { connected() }
    func brokerLost(reason: String) async {
        disconnected()
        logger.info("data kept in the outbox (\(settings.path)) until the broker is back")
    }
}

extension HomeAssistantPublisher: BrokerListener {
    func brokerConnected() async { connected() }
}

extension GatewayTelemetry: BrokerListener {
    func brokerConnected() async { mqttConnected(true) }
    func brokerLost(reason: String) async { mqttConnected(false, reason: reason) }
}

extension WakeSignal: BrokerListener {
    /// The first connect wakes whoever waits for it (systemd's READY=1).
    func brokerConnected() async { push() }
}

/// The fail-safe counts while the broker is away, over the devices running at the time.
struct FailsafeListener: BrokerListener {
    let failsafe: Failsafe
    let targets: @Sendable () -> [Failsafe.Target]

    func brokerConnected() async { await failsafe.brokerBack() }
    func brokerLost(reason: String) async { failsafe.brokerLost(targets: targets) }
}

/// Every device's current status, again at each connect (statuses are not kept while away).
struct StatusRepublisher: BrokerListener {
    let publish: @Sendable () async -> Void

    func brokerConnected() async { await publish() }
}
