import Foundation
import MQTT
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// RS-485 lines reached through serial device servers (`type = "rtu-tcp"`), end to end: Mosquitto,
/// `gateway simulate --rtu-tcp`, `gateway run`.
@Suite("Serial device servers end to end (rtu-tcp)", .serialized)
struct SerialServerTests {
    @Test("a line behind a serial device server: two units polled and a command written, as on any bus")
    func rtuOverTCPBus() async throws {
        let rig = try await Rig.start(points: "", simArgs: ["--unit", "3", "--unit", "4", "--set", "3/holding:100=215", "--set", "4/discrete:1=1"],
                                      bodyWithPort: { port in
            """
            [[bus]]
            name = "nport"
            type = "rtu-tcp"
            host = "127.0.0.1"
            port = \(port)
            timeout_ms = 300
            [[device]]
            name = "thermostat"
            bus = "nport"
            unit = 3
            poll_ms = 50
              [[device.point]]
              name = "setpoint"
              register = "holding"
              address = 100
              type = "int16"
              scale = 0.1
              writable = true
            [[device]]
            name = "door"
            bus = "nport"
            unit = 4
            poll_ms = 50
              [[device.point]]
              name = "closed"
              register = "discrete"
              address = 1
            """
        }, simRTUOverTCP: true)
        try await rig.waitFor("gateway/e2e/thermostat/setpoint", "21.5")
        try await rig.waitFor("gateway/e2e/door/closed", "true")
        try await rig.observer.publish(to: "gateway/e2e/thermostat/setpoint/set", payload: Array("19".utf8), qos: .atLeastOnce)
        let writes = try await rig.sim.waitForWrites(1)
        #expect(writes.first.map { [$0.unit, $0.fc, $0.address] + $0.values } == [3, 6, 100, 190])
        try await rig.waitFor("gateway/e2e/thermostat/setpoint", "19")
        try await rig.waitFor("gateway/e2e/thermostat/setpoint/set/result", #"{"ok":true,"value":19}"#)
        await rig.shutdown()
    }
}
