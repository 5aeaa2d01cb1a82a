/// Errors of the MQTT client. Caller mistakes (`invalidArgument`) are kept apart from the broker's
/// refusals (`connectionRefused`, `publishRefused`, ...) and from the network (`connectionLost`...).
/// Malformed packets from the broker are ``MQTTPacketError``.
public enum MQTTError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A bad topic, filter, property or setting from the caller; nothing was sent.
    case invalidArgument(String)
    /// The broker refused the CONNECT (e.g. bad user name or password, not authorized).
    case connectionRefused(MQTTReasonCode, reasonString: String?)
    /// TCP/TLS connect failed or timed out.
    case connectFailed(String)
    /// The connection closed while the operation was pending.
    case connectionLost(String)
    /// Not connected and the operation cannot wait (subscribe, unsubscribe).
    case notConnected
    /// The broker answered a QoS 1/2 publish with a failure reason code (5.0).
    case publishRefused(MQTTReasonCode, reasonString: String?)
    /// The message was dropped from the full offline queue (oldest first).
    case droppedFromQueue
    /// The message is larger than the broker's maximum packet size.
    case packetTooLarge(size: Int, maximum: Int)
    /// No answer in time.
    case timeout(String)
    /// The client was shut down.
    case shutdown
    /// The sender took the message back unacknowledged (``MQTTClient/takeBack()``).
    case takenBack
    /// TLS set-up or handshake failed (bad certificate, unknown CA, ...).
    case tls(String)
    /// The broker sent something the protocol forbids.
    case protocolError(String)

    public var description: String {
        switch self {
        case .invalidArgument(let s): "invalid argument: \(s)"
        case .connectionRefused(let r, let s): "connection refused: \(r)\(s.map { " - \($0)" } ?? "")"
        case .connectFailed(let s): "cannot connect: \(s)"
        case .connectionLost(let s): "connection lost: \(s)"
        case .notConnected: "not connected"
        case .publishRefused(let r, let s): "publish refused: \(r)\(s.map { " - \($0)" } ?? "")"
        case .droppedFromQueue: "dropped from the full offline queue"
        case .packetTooLarge(let s, let m): "packet of \(s) bytes exceeds the broker's maximum \(m)"
        case .timeout(let s): "timeout: \(s)"
        case .shutdown: "client shut down"
        case .takenBack: "taken back by its sender before the broker acknowledged it"
        case .tls(let s): "TLS: \(s)"
        case .protocolError(let s): "protocol error: \(s)"
        }
    }

    /// True when retrying with the same settings cannot help (bad credentials, banned, ...).
    public var isPermanent: Bool {
        if case .connectionRefused(let r, _) = self {
            return [.badUserNameOrPassword, .notAuthorized, .banned, .clientIdentifierNotValid, .badAuthenticationMethod].contains(r)
        }
        if case .invalidArgument = self { return true }
        return false
    }
}
