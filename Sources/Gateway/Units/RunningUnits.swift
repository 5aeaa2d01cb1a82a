import Modbus
import Synchronization

/// What runs now: the plan and its units. Read by the command dispatcher for every command (a
/// dictionary lookup under a lock) and by the fail-safe; changed by start, a reload and stop,
/// one at a time (``GatewayRuntime``'s ``ChangeLock``).
final class RunningUnits: Sendable {
    struct State: Sendable {
        enum Phase: Sendable { case starting, running, stopping }
        var phase = Phase.starting
        var plan: GatewayPlan
        var password: [UInt8]?
        var commandKey: [UInt8]?
        /// What every unit is handed (a reload replaces the settings and the command runner).
        var services: UnitServices
        var buses: [String: BusUnit] = [:]
        var commanders: [String: DeviceCommander] = [:]
        var serial: [String: SerialDeviceRunner] = [:]
        /// Devices a reload is stopping or starting: their commands are refused meanwhile.
        var restarting: Set<String> = []
    }

    private let state: Mutex<State>

    init(_ state: State) { self.state = Mutex(state) }

    func withLock<T: Sendable>(_ body: (inout State) -> T) -> T { state.withLock { body(&$0) } }

    var current: State { state.withLock { $0 } }

    /// Where a command for `device` goes now.
    enum Route {
        case modbus(DeviceCommander), serial(SerialDeviceRunner), restarting, unknown
    }

    func route(_ device: String) -> Route {
        state.withLock { u in
            if u.restarting.contains(device) { return .restarting }
            if let runner = u.serial[device] { return .serial(runner) }
            if let commander = u.commanders[device] { return .modbus(commander) }
            return .unknown
        }
    }

    /// The fail-safe points of the devices running now.
    func failsafeTargets() -> [Failsafe.Target] {
        state.withLock { Failsafe.targets($0.plan, commanders: $0.commanders) }
    }

    func bus(named name: String) -> (any DeviceBus)? { state.withLock { $0.buses[name]?.bus } }
}
