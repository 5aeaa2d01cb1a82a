import NIOCore

/// The supervisor: one task per client that reconnects after a drop (with the backoff and twin
/// detection of ``MQTTConnectionLifecycle``; at once after ``MQTTClient/reconfigure(_:)``),
/// until ``MQTTClient/disconnect(timeout:)``.
extension MQTTClient {
    func startSupervisor(connected: Bool) {
        supervisor = Task { await self.supervise(connected: connected) }
    }

    func supervise(connected initiallyConnected: Bool) async {
        var connected = initiallyConnected
        var firstAttempt = !initiallyConnected
        while !Task.isCancelled {
            if connected {
                await waitUntilDisconnected()
                connected = false
                if configuration.reconnect == nil { break }
                nextServer()   // that node is lost: the next one (when there are several)
            }
            switch firstAttempt ? .now : lifecycle.nextAttempt(random: Double.random(in: 0..<1)) {
            case .stop:
                return
            case .now:
                break
            case .after(let delay, let attempt, let twin):
                if twin {
                    eventSink.yield(.sessionTakenOver)
                    logger.error("another client is using client id '\(configuration.clientIdentifier)' and the broker keeps switching between us: backing off \(delay) before reconnecting")
                }
                eventSink.yield(.reconnecting(attempt: attempt, delay: delay))
                try? await Task.sleep(for: delay)
                if state == .shutdown || Task.isCancelled { return }
            }
            firstAttempt = false
            do {
                _ = try await establish()
                connected = true
            } catch let error as MQTTError where error.isPermanent {
                // Bad credentials, banned, id refused: retrying at once cannot help and would
                // hammer the broker. Said plainly each time; then the longest backoff.
                logger.error("MQTT connect to \(server) refused: \(error); this needs a configuration change (retrying every \(configuration.reconnect?.maximumDelay ?? .seconds(30)))")
                lifecycle.refusedForGood()
                nextServer()
            } catch {
                if state == .shutdown { return }
                if lifecycle.attempt <= 1 || lifecycle.attempt % 20 == 0 || !configuration.alternates.isEmpty {
                    logger.warning("MQTT connect to \(server) failed: \(error); retrying\(configuration.alternates.isEmpty ? "" : " with the next node")")
                }
                nextServer()
            }
        }
    }

    /// The next node of a cluster, round the list.
    func nextServer() {
        guard !configuration.alternates.isEmpty else { return }
        serverIndex = (serverIndex + 1) % servers.count
    }

    func waitUntilDisconnected() async {
        guard state == .connected else { return }
        await withCheckedContinuation { disconnectWaiters.append($0) }
    }
}
