/// What happens to the connection, for logs and tests.
public enum MQTTEvent: Sendable, Equatable {
    case connected(sessionPresent: Bool, version: MQTTVersion)
    case disconnected(reason: MQTTDisconnectReason)
    case reconnecting(attempt: Int, delay: Duration)
    /// The broker closed us because another client took our client id (5.0 reason, or repeated
    /// drops right after connecting on 3.1.1). The client backs off to the maximum delay.
    case sessionTakenOver
    case messagesDropped(total: Int)
}

/// Why a connection ended (``MQTTEvent/disconnected(reason:)``): who ended it and how, as a case;
/// ``description`` is the text logged.
public enum MQTTDisconnectReason: Sendable, Equatable, CustomStringConvertible {
    /// No PINGRESP within the keepalive: a half-open link, or a broker that stopped answering.
    case keepaliveTimeout
    /// The broker sent what this client cannot read; the client closed the connection.
    case malformedPacket(String)
    /// The broker broke the protocol; the client closed the connection.
    case protocolError(String)
    /// The client closed it to connect again with new settings.
    case reconfigured
    /// The broker sent DISCONNECT with this reason code (and reason string).
    case brokerDisconnected(MQTTReasonCode, String?)
    /// The broker closed the connection without a word.
    case closedByBroker
    /// The transport failed (`tls`: in the TLS layer): the error's words.
    case transport(String, tls: Bool)
    /// The client was shut down.
    case shutdown

    public var description: String {
        switch self {
        case .keepaliveTimeout: "keepalive timeout (no PINGRESP)"
        case .malformedPacket(let error): "malformed packet from the broker: \(error)"
        case .protocolError(let text): "protocol error: \(text)"
        case .reconfigured: "reconnecting with a new configuration"
        case .brokerDisconnected(let code, let text): "broker sent DISCONNECT: \(code)\(text.map { " - \($0)" } ?? "")"
        case .closedByBroker: "closed by the broker"
        case .transport(let error, _): error
        case .shutdown: "client shut down"
        }
    }

    /// The broker handed the session to another client with this client id.
    public var isSessionTakenOver: Bool {
        if case .brokerDisconnected(.sessionTakenOver, _) = self { true } else { false }
    }
}
