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
        let acknowledged = await withTaskGroup(of: Outcome.self) { group -> Bool in
            // In the order given (the devices', then the gateway's own): queued in one step, so
            // that whoever sees the gateway offline has seen its devices offline before.
            group.addTask {
                let results = await client.publishInOrder(topics.map { ($0, StatusPayload.offline.bytes) }, qos: .atLeastOnce,
                                                          retain: true, ahead: true)
                return .published(all: results.allSatisfy { if case .success = $0 { true } else { false } })
            }
            group.addTask {
                do { try await Task.sleep(until: deadline, clock: .continuous) } catch { return .timerCancelled }
                return .deadline
            }
            while let outcome = await group.next() {
                switch outcome {
                case .published(all: true):
                    group.cancelAll()
                    return true
                case .published(all: false), .deadline:
                    // Not acknowledged: no clean DISCONNECT (it would cancel the will). Closing
                    // also ends the publishes still waiting.
                    await client.closeAbruptly()
                    group.cancelAll()
                    return false
                case .timerCancelled:
                    continue   // a cancelled stop: the publishes' own outcome decides
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

    private enum Outcome: Sendable {
        case published(all: Bool)
        case deadline
        case timerCancelled
    }
}
