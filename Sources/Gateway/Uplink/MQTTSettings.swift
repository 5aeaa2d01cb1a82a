import GatewayConfig
import MQTT

extension MQTTConfiguration {
    /// The client's settings from `[mqtt]`: will `offline` on the gateway's status topic;
    /// `telemetry`: acknowledgement round trips are timed.
    init(gateway configuration: GatewayConfiguration, password: [UInt8]?, telemetry: GatewayTelemetry?) {
        let broker = configuration.mqtt.broker
        self.init(host: broker.host, port: broker.port, tls: broker.tls ? MQTTTLSOptions() : nil,
                  clientIdentifier: configuration.mqtt.clientID ?? "gateway-\(configuration.gateway.id)")
        alternates = configuration.mqtt.alternates.map { MQTTServer(host: $0.host, port: $0.port) }
        version = configuration.mqtt.protocolVersion == 3 ? .v3_1_1 : .v5
        keepAlive = UInt16(configuration.mqtt.keepAlive)
        cleanStart = configuration.mqtt.cleanSession
        username = configuration.mqtt.username
        self.password = password
        will = MQTTWill(topic: TopicLayout(base: configuration.baseTopic).status, payload: StatusPayload.offline.bytes, qos: .atLeastOnce, retain: true)
        if tls != nil {   // mqtts:// (the config checker refuses TLS files with mqtt://)
            tls = MQTTTLSOptions(caFile: configuration.mqtt.caFile, certificateFile: configuration.mqtt.certFile, keyFile: configuration.mqtt.keyFile)
        }
        if let telemetry {
            let histogram = telemetry.mqttAckRoundTrip
            onAcknowledged = { histogram.recordNanoseconds($0.nanoseconds) }
        }
    }
}
