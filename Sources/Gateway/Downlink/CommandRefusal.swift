import GatewayConfig

/// Why a command was not executed, or not completely: one case per reason, each with its one
/// answer text (``reason``) and the outcome the metrics count it under (``outcome``). Nothing is
/// written to a device for any of them, except ``outcomeUnknown(_:)`` (the write may have reached it).
public enum CommandRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    // The dispatcher.
    case unknownDevice(String)
    /// A reload is stopping or starting the device.
    case restarting(device: String)
    /// The device already has ``CommandRequest/pendingPerDevice`` commands waiting.
    case queueFull(device: String)

    // The command checks (``CommandPipeline``).
    case retained
    /// The payload is not a command: the parser's words.
    case badPayload(String)
    case unknownPoint(String, device: String)
    /// A serial device's `[[device.command]]` of that name does not exist; `known`: those that do.
    case unknownCommand(String, device: String, known: [String])
    case notWritable(point: String)
    /// The value does not fit the point or command: the check's words.
    case badValue(String)
    /// Commands are signed and this one is not validly signed (one answer whatever failed).
    case signatureRequired
    /// A signed or timed command while the system clock is not yet set (``ClockSync``).
    case clockNotSynchronised
    /// `command_max_age_ms` is set and the command has no `ts`.
    case timestampRequired
    case tooOld(ageMs: Int64, maxAgeMs: Int)
    case aheadOfClock(aheadMs: Int64)
    /// Its MQTT 5 message expiry has passed.
    case expired

    // The device.
    case deviceOffline(String)
    case notPolledYet(String)
    /// A Modbus bus could not start it within one response timeout.
    case busBusy(timeout: Duration)
    /// A serial line could not start it within `response_timeout_ms`.
    case lineBusy(timeoutMs: Int)
    /// It waited behind a write the serial line did not take.
    case lineStalled
    /// The write may or may not have reached the device: never retried.
    case outcomeUnknown(String)
    /// The device refused it, or it was not sent: the error's words.
    case failed(String)
    case notSent(String)
    /// A serial device's value cannot be asked for (`/get`).
    case notReadable(String)

    /// The text of a `secret = true` point's refusal: `sent` (what the command asked) masked.
    indirect case masked(CommandRefusal, sent: [String])

    public var reason: String {
        switch self {
        case .unknownDevice(let d): "unknown device '\(d)'"
        case .restarting(let d): "device '\(d)' is restarting for a configuration reload (not queued; try again)"
        case .queueFull(let d): "busy: device '\(d)' already has \(CommandRequest.pendingPerDevice) commands waiting (not queued)"
        case .retained: "retained command refused (publish commands without the retain flag)"
        case .badPayload(let why), .badValue(let why), .failed(let why): why
        case .unknownPoint(let p, let d): "unknown point '\(p)' on device '\(d)'"
        case .unknownCommand(let c, let d, let known):
            "unknown command '\(c)' on device '\(d)'\(known.isEmpty ? "" : " (commands: \(known.joined(separator: ", ")))")"
        case .notWritable(let p): "point '\(p)' is not writable"
        case .signatureRequired: "not accepted: a valid signed command is required (value, ts, id, sig)"
        case .clockNotSynchronised: "gateway clock not synchronised"
        case .timestampRequired: "command_max_age_ms is set: send JSON {\"value\": ..., \"ts\": <unix ms>}"
        case .tooOld(let age, let max): "stale command: sent \(age) ms ago (command_max_age_ms = \(max))"
        case .aheadOfClock(let ahead): "command ts is \(ahead) ms ahead of the gateway's clock"
        case .expired: "stale command: its MQTT message expiry has passed"
        case .deviceOffline(let d): "device '\(d)' is offline"
        case .notPolledYet(let d): "device '\(d)' has not answered a poll yet"
        case .busBusy(let timeout): "bus busy: the command could not start within \(timeout)"
        case .lineBusy(let ms): "busy: the command could not start within \(ms) ms (not sent)"
        case .lineStalled: "busy: it waited behind a write the line did not take (not sent)"
        case .outcomeUnknown(let why): "outcome unknown: \(why)"
        case .notSent(let why): "not sent: \(why)"
        case .notReadable(let name): "'\(name)' of a serial device cannot be read on demand: its values come as the device sends them"
        case .masked(let refusal, let sent): sent.filter { !$0.isEmpty }.reduce(refusal.reason) { $0.replacing($1, with: "(secret)") }
        }
    }

    public var description: String { reason }

    /// The `outcome` label of `gateway_commands_total`: `outcome_unknown`, `busy` (nothing was
    /// tried: try again later) or `refused`.
    public var outcome: String {
        switch self {
        case .outcomeUnknown: "outcome_unknown"
        case .queueFull, .busBusy, .lineBusy, .lineStalled: "busy"
        case .masked(let refusal, _): refusal.outcome
        default: "refused"
        }
    }
}
