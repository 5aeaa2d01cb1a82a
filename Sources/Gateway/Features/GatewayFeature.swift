import GatewayConfig
import MQTT

/// An optional capability the runtime runs without naming it (fail-safe, outbox, Home Assistant,
/// metrics). Every hook has a default that does nothing; a feature implements the moments it
/// acts at. The runtime calls them in this order:
/// 1. ``starting()``, before the client connects;
/// 2. ``unitsStarted()``, once the devices are polled and take commands;
/// 3. meanwhile: ``run()`` in a task of its own, ``brokerConnected()`` and
///    ``brokerLost(reason:)`` (``BrokerListener``), the messages of its own subscriptions
///    (``takes(_:)``, ``receive(_:)``), ``reloaded(from:to:)`` after a reload;
/// 4. on a graceful stop: ``stopping()`` (no more commands), ``pollingStopped()`` (the commanders
///    still run), ``stopped()`` (every unit has ended; before `offline` is published).
///
/// The list is made in one place, ``GatewayFeatures/make(_:)``: one line per feature.
protocol GatewayFeature: BrokerListener {
    func starting() async
    func unitsStarted()
    /// Runs until the gateway stops (``stopping()`` ends it, or cancellation).
    func run() async
    /// True for a topic of one of its own subscriptions: the message goes to ``receive(_:)``.
    func takes(_ topic: String) -> Bool
    /// Called on the MQTT client's loop as the message is read: must never wait.
    func receive(_ message: MQTTMessage)
    func reloaded(from old: GatewayConfiguration, to new: GatewayConfiguration)
    func stopping() async
    func pollingStopped() async
    func stopped() async
}

extension GatewayFeature {
    func starting() async {}
    func unitsStarted() {}
    func run() async {}
    func takes(_ topic: String) -> Bool { false }
    func receive(_ message: MQTTMessage) {}
    func reloaded(from old: GatewayConfiguration, to new: GatewayConfiguration) {}
    func stopping() async {}
    func pollingStopped() async {}
    func stopped() async {}
}
