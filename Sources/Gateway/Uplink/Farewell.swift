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
        let acknowledged = await withTaskGroup(of: Bool?.self) { group -> Bool in
            for topic in topics {
                group.addTask {
                    do {
                        try await client.publish(to: topic, payload: StatusPayload.offline.bytes, qos: .atLeastOnce, retain: true, ahead: true)
                        return true
                    } catch {
                        return false
                    }
                }
            }
            group.addTask {   // the timer; nil when it fires
                do { try await Task.sleep(until: deadline, clock: .continuous) } catch { return true }
                return nil
            }
            var acked = 0
            while let result = await group.next() {
                switch result {
                case .some(true):
                    acked += 1
                    if acked == topics.count {
                        group.cancelAll()
                        return true
                    }
                case .some(false), .none:
                    // Not acknowledged: no clean DISCONNECT (it would cancel the will). Closing
                    // also ends the publishes still waiting.
                    await client.closeAbruptly()
                    group.cancelAll()
                    return false
                }
            }
            return false
        }
        if acknowledged {
            await client.disconnect(timeout: max(deadline - .now, .milliseconds(100)))
        } else {
            logger.warning("offline statuses not acknowledged within \(timeout): closed the connection without DISCONNECT, so the broker publishes the will (offline)")
        }
    }
}
