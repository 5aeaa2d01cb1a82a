/// What happens to the connection, for logs and tests.
public enum MQTTEvent: Sendable, Equatable {
    case connected(sessionPresent: Bool, version: MQTTVersion)
    case disconnected(reason: String)
    case reconnecting(attempt: Int, delay: Duration)
    /// The broker closed us because another client took our client id (5.0 reason, or repeated
    /// drops right after connecting on 3.1.1). The client backs off to the maximum delay.
    case sessionTakenOver
    case messagesDropped(total: Int)
}
