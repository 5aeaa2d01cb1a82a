import MQTT

/// Something that acts when the broker connection comes and goes: the statuses are published
/// again, readiness is told, and every ``GatewayFeature`` (the outbox drains, the fail-safe stops
/// or starts counting, Home Assistant's configs go out again, the metrics say so). The
/// ``ConnectionWatcher`` calls each in turn at every connect and every loss, naming none.
protocol BrokerListener: Sendable {
    /// The broker is reached (every connect; the command subscription is made by then).
    func brokerConnected() async
    /// The broker is lost, for this reason.
    func brokerLost(reason: MQTTDisconnectReason) async
}

extension BrokerListener {
    func brokerConnected() async {}
    func brokerLost(reason: MQTTDisconnectReason) async {}
}

extension WakeSignal: BrokerListener {
    /// The first connect wakes whoever waits for it (systemd's READY=1).
    func brokerConnected() async { push() }
}

/// Every device's current status, again at each connect (statuses are not kept while away).
struct StatusRepublisher: BrokerListener {
    let publish: @Sendable () async -> Void

    func brokerConnected() async { await publish() }
}
