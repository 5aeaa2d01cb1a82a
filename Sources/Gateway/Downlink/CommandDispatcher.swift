import Logging
import MQTT

/// Takes every incoming message on the MQTT client's loop as it is read
/// (``MQTTClient/onMessage(_:)``): a message of a feature's own subscription goes to it; a
/// command (`<base>/<device>/<point>/set|get`) goes to its device's queue at once, before the
/// broker's acknowledgement is flushed, with no task in between; what cannot be queued is
/// refused here. Never waits: a dispatch stuck on a lock shows in the liveness check.
struct CommandDispatcher: Sendable {
    let topics: TopicLayout
    let units: RunningUnits
    /// Features with subscriptions of their own (Home Assistant's birth and configs).
    let features: [any GatewayFeature]
    let logger: Logger

    /// Command subscriptions at QoS 2; with MQTT 5 no retained commands at subscribe (retain
    /// handling 2) and retain-as-published, so a live retained command is seen and refused.
    var subscriptions: [MQTTSubscription] {
        topics.commandFilters.map { MQTTSubscription($0, qos: .exactlyOnce, retainAsPublished: true, retainHandling: .doNotSend) }
    }

    /// Hands the client's messages to ``dispatch(_:)`` from now on.
    func install(on client: MQTTClient, liveness: Liveness?) async {
        let loop = liveness?.register("command dispatcher")
        await client.onMessage { message in
            loop?.expect(within: .seconds(5))
            defer { loop?.idle() }
            dispatch(message)
        }
    }

    func dispatch(_ message: MQTTMessage) {
        let receivedAt = ContinuousClock.now
        for feature in features where feature.takes(message.topic) {
            feature.receive(message)
            return
        }
        guard let command = topics.parse(message.topic) else {
            logger.debug("ignoring a message on \(message.topic.logSafe)")
            return
        }
        let device = command.device, point = command.point, isSet = command.kind == .set
        let taken: Bool
        switch units.route(device) {
        case .serial(let runner):
            taken = runner.submit(isSet ? .set(message, command: point, receivedAt: receivedAt) : .get(message, point: point))
        case .modbus(let commander):
            taken = commander.submit(isSet ? .set(message, point: point, receivedAt: receivedAt)
                                           : .get(message, point: point, receivedAt: receivedAt))
        case .restarting:
            return refuse(message, isSet: isSet, receivedAt: receivedAt, why: .restarting(device: device))
        case .unknown:
            return refuse(message, isSet: isSet, receivedAt: receivedAt, why: .unknownDevice(device))
        }
        if !taken { refuse(message, isSet: isSet, receivedAt: receivedAt, why: .queueFull(device: device)) }
    }

    private func refuse(_ message: MQTTMessage, isSet: Bool, receivedAt: ContinuousClock.Instant, why: CommandRefusal) {
        let services = units.withLock { $0.services }
        services.commands.refuseUnqueued(message, isSet: isSet, receivedAt: receivedAt, why: why, executor: services.executor, logger: logger)
    }
}
