import GatewayConfig
import Logging
import MQTT

/// The optional capabilities, made in this one place: each is one line of ``list(units:values:)``
/// (plus the outbox, which the data path needs before the units exist). The runtime runs the
/// list through the ``GatewayFeature`` hooks and names none of them.
struct GatewayFeatures: Sendable {
    let configuration: GatewayConfiguration
    let client: MQTTClient
    let topics: TopicLayout
    let telemetry: GatewayTelemetry?
    let version: String
    let logger: Logger
    /// Data kept for the broker while it is away (nil: `outbox_max_mb = 0`).
    let outbox: Outbox?
    /// Values, events and statuses: through the outbox when there is one.
    let publisher: BrokerPublisher

    init(configuration: GatewayConfiguration, client: MQTTClient, topics: TopicLayout, board: StatusBoard,
         telemetry: GatewayTelemetry?, version: String, logger: Logger) {
        self.configuration = configuration
        self.client = client
        self.topics = topics
        self.telemetry = telemetry
        self.version = version
        self.logger = logger
        let g = configuration.gateway
        outbox = g.outboxMaxMB > 0
            ? Outbox(settings: .init(path: g.stateDirectory + "/outbox", maxBytes: Int(g.outboxMaxMB * 1_048_576), sync: .milliseconds(g.outboxSyncMs)),
                     client: client, telemetry: telemetry, logger: logger)
            : nil
        publisher = BrokerPublisher(client: client, topics: topics, board: board, outbox: outbox, telemetry: telemetry)
    }

    /// The features in the order they act at a connect (after the statuses are published).
    /// `values`: moved on after Home Assistant's birth, so every poller publishes its values again.
    func list(units: RunningUnits, values: ValuesGeneration) -> [any GatewayFeature] {
        var features: [any GatewayFeature] = [FailsafeFeature(failsafe: Failsafe(client: client, topics: topics, logger: logger), units: units)]
        if let outbox { features.append(outbox) }
        if configuration.homeAssistant.enabled { features.append(homeAssistant(values: values)) }
        if let telemetry { features.append(telemetry) }
        return features
    }

    /// After Home Assistant's birth: the statuses again, and every poller publishes its current
    /// values at its next poll.
    private func homeAssistant(values: ValuesGeneration) -> HomeAssistantPublisher {
        let publisher = publisher
        return HomeAssistantPublisher(configuration: configuration, topics: topics, version: version, client: client, logger: logger,
                                      republish: {
                                          await publisher.publishStatuses()
                                          values.advance()
                                      })
    }
}
