import Logging
import MQTT

/// How the gateway leaves the broker at a graceful stop.
enum Farewell {
    /// The last word: `offline` on every status topic, ahead of any telemetry backlog. Once the
    /// broker has acknowledged them all, the backlog gets what is left of `within` and the
    /// client disconnects cleanly. If they are not acknowledged in time (a broker that stopped
    /// reading, a full in-flight window), the socket is closed without DISCONNECT, so that the
    /// broker publishes the will: a stop never leaves `online` retained.
    static func leave(_ client: MQTTClient, offline topics: [String], within timeout: Duration, logger: Logger) async {
        let deadline = ContinuousClock.now + timeout
        // The deadline holds even when the stop itself is cancelled: the sleep is not the
        // caller's to cancel (only ours, once the outcome is known).
        let timer = Task.detached { try? await Task.sleep(until: deadline, clock: .continuous) }
        let acknowledged = await withTaskGroup(of: Bool?.self) { group -> Bool in
            // In the order given (the devices', then the gateway's own): queued in one step, so
            // that whoever sees the gateway offline has seen its devices offline before.
            group.addTask {
                let results = await client.publishInOrder(topics.map { ($0, StatusPayload.offline.bytes) }, qos: .atLeastOnce,
                                                          retain: true, ahead: true)
                return results.allSatisfy { if case .success = $0 { true } else { false } }
            }
            group.addTask {   // nil: the deadline came first
                await timer.value
                return nil
            }
            let first = await group.next() ?? nil
            timer.cancel()
            if first == true { return true }
            // Not acknowledged: no clean DISCONNECT (it would cancel the will). Closing also ends
            // the publishes still waiting.
            await client.closeAbruptly()
            return false
        }
        if acknowledged {
            await client.disconnect(timeout: max(deadline - .now, .milliseconds(100)))
        } else {
            logger.warning("offline statuses not acknowledged within \(timeout): closed the connection without DISCONNECT, so the broker publishes the will (offline)")
        }
    }
}
