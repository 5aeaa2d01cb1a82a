import Logging
import MQTT

/// Follows the client's connection: the command subscription after the first connect, then at
/// every connect and every loss each ``BrokerListener`` in turn, naming none; a session taken
/// over by a twin is said loudly.
struct ConnectionWatcher: Sendable {
    let client: MQTTClient
    let subscriptions: [MQTTSubscription]
    let listeners: [any BrokerListener]
    let logger: Logger

    /// Until the client's events end or the task is cancelled.
    func run() async {
        var subscribed = false
        var takeovers = 0
        for await event in client.events {
            guard !Task.isCancelled else { return }
            switch event {
            case .connected:
                // The client restores granted subscriptions itself after later reconnects.
                if !subscribed { subscribed = await subscribe() }
                for listener in listeners { await listener.brokerConnected() }
                let node = await client.server
                logger.info("broker connected (\(node)): birth and statuses published")
            case .disconnected(let reason):
                logger.warning("broker lost: \(reason)")
                for listener in listeners { await listener.brokerLost(reason: reason) }
            case .sessionTakenOver:
                // The broker said so (MQTT 5), or it keeps switching between us and a twin. Control
                // is lost as surely as with the broker gone: the fail-safe counts on, by design.
                takeovers += 1
                let id = await client.configuration.clientIdentifier
                logger.error("session taken over by another client with client id '\(id)' (\(takeovers) since start): no commands reach the gateway while it waits to take the session back, and the fail-safe counts this as the broker lost")
            default:
                break
            }
        }
    }

    /// True once the broker took the subscriptions (a refusal is logged and not retried).
    private func subscribe() async -> Bool {
        do {
            let codes = try await client.subscribe(subscriptions)
            if let bad = codes.first(where: { $0.isFailure }) {
                logger.error("broker refused the command subscriptions: \(bad); commands will not work")
            }
            logger.info("subscribed to commands: \(subscriptions.map(\.filter).joined(separator: ", "))")
            return true
        } catch {
            logger.error("subscribing to commands failed: \(error); retrying after the next connect")
            return false
        }
    }
}
