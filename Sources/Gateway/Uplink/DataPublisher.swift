import MQTT

/// Where a unit's data and statuses go: values, events and frames, and its online/offline
/// status. The live one is ``BrokerPublisher``; an in-process test records instead.
protocol DataPublisher: Sendable {
    /// A data message (a value, a frame, an event). `compactable`: a retained value a newer one of
    /// its topic may replace when the outbox is full.
    func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async
    /// Records a device's state and publishes it.
    func publishStatus(_ device: String, _ state: DeviceHealth.State) async
    /// True while the broker is connected (a fail-safe write "while the broker is away" asks).
    var brokerConnected: Bool { get async }
}

extension DataPublisher {
    func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool) async {
        await publishData(to: topic, payload: payload, retain: retain, compactable: compactable, ts: unixMilliseconds())
    }
}

/// The running gateway's publisher: data through the ``Outbox`` (which sends it at once while the
/// broker keeps up), statuses onto the ``StatusBoard`` and to the broker when it is connected.
struct BrokerPublisher: DataPublisher {
    let client: MQTTClient
    let topics: TopicLayout
    let board: StatusBoard
    /// nil: `outbox_max_mb = 0`, data goes straight to the client's bounded queue.
    let outbox: Outbox?
    let telemetry: GatewayTelemetry?

    func publishData(to topic: String, payload: [UInt8], retain: Bool, compactable: Bool, ts: Int64) async {
        if let outbox {
            await outbox.publish(to: topic, payload: payload, retain: retain, compactable: compactable, ts: ts)
        } else {
            try? await client.enqueue(to: topic, payload: payload, qos: .atLeastOnce, retain: retain, properties: Outbox.properties(ts: ts))
        }
    }

    /// Publishes it when connected; else the connect's ``StatusRepublisher`` publishes the board
    /// after the birth.
    func publishStatus(_ device: String, _ state: DeviceHealth.State) async {
        board.set(device, state)
        telemetry?.device(device)?.state(state)
        guard let status = StatusPayload(state), await client.isConnected else { return }
        try? await client.enqueue(to: topics.status(device), payload: status.bytes, qos: .atLeastOnce, retain: true)
    }

    /// The gateway's birth and every known device status (retained): after every connect, and
    /// after Home Assistant's birth.
    func publishStatuses() async {
        try? await client.enqueue(to: topics.status, payload: StatusPayload.online.bytes, qos: .atLeastOnce, retain: true)
        for (device, state) in board.all() {
            guard let status = StatusPayload(state) else { continue }
            try? await client.enqueue(to: topics.status(device), payload: status.bytes, qos: .atLeastOnce, retain: true)
        }
    }

    var brokerConnected: Bool { get async { await client.isConnected } }
}
