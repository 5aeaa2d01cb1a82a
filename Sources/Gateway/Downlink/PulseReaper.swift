import GatewayConfig
import Logging
import Modbus
import Synchronization

/// Where a pulse's off goes, as the pulse started: the bus, unit, table and address of the on.
/// Kept in the pulse journal's line, so the off never goes anywhere else, even after a reload
/// moved or removed the point.
struct PulseTarget: Hashable, Sendable {
    var bus: String
    var unit: Int
    var coil: Bool
    var address: Int
    /// Registers written as zero (1 for a coil).
    var width: Int
    /// Write with FC 15/16 (the device's `write_multiple`).
    var multiple: Bool

    init(bus: String, unit: Int, coil: Bool, address: Int, width: Int, multiple: Bool) {
        self.bus = bus
        self.unit = unit
        self.coil = coil
        self.address = address
        self.width = width
        self.multiple = multiple
    }

    /// Point `point` of `device` as configured now.
    init(device: DeviceSettings, point: PointSettings) {
        self.init(bus: device.bus, unit: device.unit, coil: point.table == .coil, address: point.address, width: point.width,
                  multiple: device.writeMultiple)
    }

    /// The journal line: `<device>/<point> bus=plc unit=1 coil=0 width=1 multiple=0`.
    func line(device: String, point: String) -> String {
        "\(PulseJournal.key(device: device, point: point)) bus=\(bus) unit=\(unit) \(coil ? "coil" : "holding")=\(address) width=\(width) multiple=\(multiple ? 1 : 0)"
    }

    /// A journal line read back: its `<device>/<point>` and its target (nil: a line of an earlier
    /// release, the name only, or one that cannot be read).
    static func parse(_ line: String) -> (key: String, target: PulseTarget?) {
        let fields = line.split(separator: " ")
        let key = String(fields.first ?? "")
        var values: [Substring: Int] = [:]
        var bus: String?
        for f in fields.dropFirst() {
            guard let eq = f.firstIndex(of: "=") else { return (key, nil) }
            let name = f[..<eq], value = f[f.index(after: eq)...]
            if name == "bus" { bus = String(value) } else if let n = Int(value) { values[name] = n } else { return (key, nil) }
        }
        guard let bus, let unit = values["unit"], let width = values["width"], let multiple = values["multiple"],
              let address = values["coil"] ?? values["holding"], (values["coil"] == nil) != (values["holding"] == nil) else { return (key, nil) }
        return (key, PulseTarget(bus: bus, unit: unit, coil: values["coil"] != nil, address: address, width: width, multiple: multiple != 0))
    }

    /// Writes the off (coil false, registers zero) through `bus`.
    func writeOff(on bus: any DeviceBus, deadline: ContinuousClock.Instant) async throws {
        try await bus.write(coil ? .coil(false) : .registers(Array(repeating: 0, count: width)), unit: unit, address: address,
                            multiple: multiple, deadline: deadline)
    }
}

extension ModbusBus {
    /// One write at high priority: a coil (FC 5, or 15 with `multiple`, the device's
    /// `write_multiple`), one register (FC 6, or 16 with `multiple`) or several (FC 16).
    func write(_ data: WritePlan.Data, unit: Int, address: Int, multiple: Bool, deadline: ContinuousClock.Instant) async throws {
        switch data {
        case .coil(let on):
            if multiple {
                try await writeCoils(unit: unit, address: address, values: [on], priority: .high, deadline: deadline)
            } else {
                try await writeCoil(unit: unit, address: address, value: on, priority: .high, deadline: deadline)
            }
        case .registers(let regs):
            if regs.count == 1 && !multiple {
                try await writeRegister(unit: unit, address: address, value: regs[0], priority: .high, deadline: deadline)
            } else {
                try await writeRegisters(unit: unit, address: address, values: regs, priority: .high, deadline: deadline)
            }
        }
    }
}

/// Switches off the pulses that no point of the configuration running now owns: those whose
/// point a reload moved (another address, unit or bus) or removed, while their off could not be
/// written, and those an earlier run left on for such a point. Each off is written to where its
/// pulse's on went (``PulseTarget``), every ``PulseStateMachine/offRetry`` until the device takes
/// it; only then is its journal entry removed. A pulse whose point still exists where it was is
/// its commander's (ordered with that device's commands), never the reaper's.
///
/// One task per such pulse, for as long as its device does not take the off (rare: a device
/// silent across a reload). Stopped with the gateway; what is not off then stays in the journal
/// for the next start.
final class PulseReaper: Sendable {
    private let journal: PulseJournal
    private let logger: Logger
    private let running = Mutex<[String: Task<Void, Never>]>([:])

    init(journal: PulseJournal, logger: Logger) {
        self.journal = journal
        self.logger = logger
    }

    /// The journal lines no pulse point of `plan` owns (its line as configured now), and the
    /// earlier release's lines (name only) of points that are no longer pulse points.
    static func orphans(_ lines: Set<String>, plan: GatewayPlan) -> (adopt: [String], unknown: [String]) {
        var owned: Set<String> = [], keys: Set<String> = []
        for d in plan.devices {
            for p in d.settings.points where p.pulseMs != nil {
                owned.insert(PulseTarget(device: d.settings, point: p).line(device: d.settings.name, point: p.name))
                keys.insert(PulseJournal.key(device: d.settings.name, point: p.name))
            }
        }
        var adopt: [String] = [], unknown: [String] = []
        for line in lines.sorted() where !owned.contains(line) {
            let (key, target) = PulseTarget.parse(line)
            if target != nil { adopt.append(line) } else if !keys.contains(key) { unknown.append(line) }
        }
        return (adopt, unknown)
    }

    /// Takes on the pulses of the journal that no point of `plan` owns now (a no-op for those it
    /// already has). `bus`: the bus of a name running now (nil: no such bus), asked at every
    /// attempt, so a bus a later reload replaces is used. An earlier release's line for a point
    /// that is gone cannot be placed: it is logged and dropped.
    func adoptOrphans(of plan: GatewayPlan, bus: @escaping @Sendable (String) -> (any DeviceBus)?) async {
        let (adopt, unknown) = Self.orphans(journal.current, plan: plan)
        for line in unknown {
            logger.error("pulse journal: \(line) was left on by an earlier run but is no longer a pulse point of this configuration, and the line does not say where it was: not switched off")
            await journal.markOff(line)
        }
        for line in adopt {
            guard let target = PulseTarget.parse(line).target else { continue }
            let timeout = Duration.milliseconds(plan.configuration.buses.first { $0.name == target.bus }?.timeoutMs ?? 1000)
            running.withLock { tasks in
                guard tasks[line] == nil else { return }
                // The task's last step takes this lock: it cannot end before it is recorded here.
                tasks[line] = Task { await self.switchOff(line, target: target, timeout: timeout, bus: bus) }
            }
        }
    }

    private func switchOff(_ line: String, target: PulseTarget, timeout: Duration, bus: @Sendable (String) -> (any DeviceBus)?) async {
        var log = logger
        log[metadataKey: "pulse"] = "\(line)"
        var failures = 0
        while !Task.isCancelled, journal.current.contains(line) {
            if let bus = bus(target.bus) {
                do {
                    try await target.writeOff(on: bus, deadline: .now + timeout)
                    await journal.markOff(line)
                    log.notice("pulse ended: switched off where it was switched on (its point was moved or removed by a reload, or by the configuration of an earlier run)")
                    break
                } catch {
                    failures += 1
                    if failures == 1 {
                        log.error("pulse end FAILED where it was switched on (its point was moved or removed), retrying every \(PulseStateMachine.offRetry) until it is off (and at the next start): \(error)")
                    }
                }
            } else if failures == 0 {
                failures = 1
                log.error("pulse end FAILED: bus '\(target.bus)' is no longer configured; the pulse stays in the journal until a configuration has that bus again")
            }
            try? await Task.sleep(for: PulseStateMachine.offRetry)
        }
        _ = running.withLock { $0.removeValue(forKey: line) }
    }

    /// Stops every retry (the gateway stops); their entries stay in the journal.
    func stop() {
        let tasks = running.withLock { $0 }
        for t in tasks.values { t.cancel() }
    }
}
