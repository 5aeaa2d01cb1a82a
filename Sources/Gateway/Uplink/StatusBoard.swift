import Synchronization

/// The payload of a status topic, the gateway's and each device's (retained): `online` or
/// `offline`. The gateway's will is `offline` too.
enum StatusPayload: String, Sendable {
    case online, offline

    var bytes: [UInt8] { Array(rawValue.utf8) }

    /// A device's state as published; nil while it is not known (nothing is published then).
    init?(_ state: DeviceHealth.State) {
        switch state {
        case .online: self = .online
        case .offline: self = .offline
        case .unknown: return nil
        }
    }
}

/// Device statuses as last published (republished after every reconnect). A lock, not an
/// actor: every command reads it on its way to the device, and an actor there cost a hop.
final class StatusBoard: Sendable {
    private let states = Mutex<[String: DeviceHealth.State]>([:])
    func set(_ device: String, _ state: DeviceHealth.State) { states.withLock { $0[device] = state } }
    func remove(_ device: String) { _ = states.withLock { $0.removeValue(forKey: device) } }
    func all() -> [String: DeviceHealth.State] { states.withLock { $0 } }
    func state(_ device: String) -> DeviceHealth.State { states.withLock { $0[device] } ?? .unknown }
}

/// A counter the pollers compare with their own: when it moves, each forgets what it published
/// and publishes every current value at its next poll.
final class ValuesGeneration: Sendable {
    private let value = Atomic<Int>(0)
    var current: Int { value.load(ordering: .relaxed) }
    func advance() { value.add(1, ordering: .relaxed) }
}
