import NIOCore

/// The supervisor: one task per client that reconnects with backoff after a drop (and at
/// once after ``MQTTClient/reconfigure(_:)``), until ``MQTTClient/disconnect(timeout:)``.
extension MQTTClient {
    func startSupervisor(connected: Bool) {
        supervisor = Task { await self.supervise(connected: connected) }
    }

    func supervise(connected initiallyConnected: Bool) async {
        var connected = initiallyConnected
        var backoff = Backoff(policy: configuration.reconnect ?? .default)
        var firstAttempt = !initiallyConnected
        while state != .shutdown && !Task.isCancelled {
            if connected {
                await waitUntilDisconnected()
                connected = false
                if state == .shutdown || configuration.reconnect == nil { break }
            }
            if reconnectAtOnce {
                reconnectAtOnce = false
            } else if !firstAttempt {
                var delay = backoff.nextDelay(random: Double.random(in: 0..<1))
                if takenOverByReason || quickDrops >= 3 {
                    delay = configuration.reconnect?.maximumDelay ?? delay
                    eventSink.yield(.sessionTakenOver)
                    logger.error("another client is using client id '\(configuration.clientIdentifier)' and the broker keeps switching between us: backing off \(delay) before reconnecting")
                }
                eventSink.yield(.reconnecting(attempt: backoff.attempt, delay: delay))
                try? await Task.sleep(for: delay)
                if state == .shutdown || Task.isCancelled { break }
            }
            firstAttempt = false
            do {
                _ = try await establish()
                backoff.reset()
                connected = true
            } catch let error as MQTTError where error.isPermanent {
                // Bad credentials, banned, id refused: retrying at once cannot help and would
                // hammer the broker. Said plainly each time; then the longest backoff.
                logger.error("MQTT connect to \(configuration.host):\(configuration.port) refused: \(error); this needs a configuration change (retrying every \(configuration.reconnect?.maximumDelay ?? .seconds(30)))")
                backoff.exhaust()
            } catch {
                if backoff.attempt <= 1 || backoff.attempt % 20 == 0 {
                    logger.warning("MQTT connect to \(configuration.host):\(configuration.port) failed: \(error); retrying")
                }
            }
        }
    }

    func waitUntilDisconnected() async {
        guard state == .connected else { return }
        await withCheckedContinuation { disconnectWaiters.append($0) }
    }
}
