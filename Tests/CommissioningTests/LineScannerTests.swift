import Commissioning
import GatewayConfig
import LineSettings
import Modbus
import Testing

/// A serial line in memory: devices that answer only when the line runs at their setting, and
/// garble everything otherwise (as a device at another baud rate does).
final class FakeLine: ProbeLink {
    struct Device {
        var setting: LineSetting
        /// Answers FC 1-4 with this value, or with exception 2 when nil.
        var value: UInt16?
        var identification: (vendor: String, product: String)?
    }
    var devices: [Int: Device]
    var current = LineSetting(baud: 9600, parity: .none)
    var settingsTried: [LineSetting] = []
    var requests: [(unit: Int, function: UInt8)] = []
    /// Absent units answered with exception 0x0B, as a Modbus TCP gateway does.
    var behindGateway = false

    init(devices: [Int: Device]) { self.devices = devices }

    func setLine(baud: Int, parity: Parity) throws(ScanError) {
        current = LineSetting(baud: baud, parity: parity)
        settingsTried.append(current)
    }

    func exchange(unit: Int, pdu: [UInt8], timeout: Duration) -> ProbeAnswer {
        requests.append((unit, pdu[0]))
        if behindGateway && devices[unit] == nil { return .pdu([pdu[0] | 0x80, 0x0B]) }
        guard let d = devices[unit] else {
            // Devices at another setting still see bytes and answer garbage now and then.
            return devices.values.contains { $0.setting != current } && unit % 7 == 0 ? .garbled : .silence
        }
        guard d.setting == current else { return .garbled }
        switch pdu[0] {
        case 1, 2:
            guard let v = d.value else { return .pdu([pdu[0] | 0x80, 2]) }
            return .pdu([pdu[0], 1, UInt8(v & 1)])
        case 3, 4:
            guard let v = d.value else { return .pdu([pdu[0] | 0x80, 2]) }
            return .pdu([pdu[0], 2, UInt8(v >> 8), UInt8(v & 0xFF)])
        case 17:
            return .pdu([17, 5, UInt8(unit), 0xFF, 0x41, 0x42, 0x43])
        case 43:
            guard let id = d.identification else { return .pdu([0xAB, 1]) }
            let v = Array(id.vendor.utf8), p = Array(id.product.utf8)
            return .pdu([43, 14, 1, 1, 0, 0, 2, 0, UInt8(v.count)] + v + [1, UInt8(p.count)] + p)
        default:
            return .pdu([pdu[0] | 0x80, 1])
        }
    }
}

@Suite struct LineScannerTests {
    @Test func autoFindsTheOneSettingThatAnswersAndStopsThere() throws {
        let setting = LineSetting(baud: 19200, parity: .even)
        let line = FakeLine(devices: [
            3: .init(setting: setting, value: 215, identification: ("Acme", "DOOR-8")),
            9: .init(setting: setting, value: nil, identification: nil),
        ])
        var plan = ScanPlan(units: Array(1...20), settings: LineSetting.searchOrder(bauds: nil, parities: nil), probeTimeout: .milliseconds(50))
        plan.identify = true
        var progress: [String] = []
        let result = try LineScanner(plan: plan).run(on: line) { progress.append($0) }

        #expect(result.setting == setting)
        #expect(result.units.map(\.unit) == [3, 9])
        // 9600 N, 9600 E, 19200 N, 19200 E: the search stops at the first setting that answers.
        #expect(line.settingsTried == [LineSetting(baud: 9600, parity: .none), LineSetting(baud: 9600, parity: .even),
                                       LineSetting(baud: 19200, parity: .none), setting])
        #expect(result.garbled > 0)
        #expect(progress.contains { $0.contains("nothing at 9600 N") })

        let door = result.units[0]
        #expect(door.probe == .value(215))
        #expect(door.identification?.vendor == "Acme")
        #expect(door.identification?.productCode == "DOOR-8")
        #expect(door.serverID?.id == 3)
        #expect(door.serverID?.text == "ABC")
        #expect(door.tables.map(\.answer) == [.value(1), .value(1), .value(215), .value(215)])

        let dumb = result.units[1]
        #expect(dumb.probe == .exception(2))
        #expect(dumb.answersOnlyExceptions)
        #expect(dumb.identification == nil)

        // Only reads: FC 1-4, 17, 43.
        #expect(line.requests.allSatisfy { [1, 2, 3, 4, 17, 43].contains($0.function) })
    }

    @Test func nothingAnsweringTriesEverySettingOnce() throws {
        let line = FakeLine(devices: [:])
        let plan = ScanPlan(units: [1, 2], settings: LineSetting.searchOrder(bauds: [9600, 19200], parities: nil), probeTimeout: .milliseconds(10))
        let result = try LineScanner(plan: plan).run(on: line)
        #expect(result.units.isEmpty)
        #expect(result.setting == nil)
        #expect(line.settingsTried.count == 6)
        #expect(Set(line.settingsTried.map(\.description)).count == 6)
        #expect(line.settingsTried.last?.parity == .odd)
        #expect(result.probes == 12)
    }

    @Test func unitsAGatewaySaysDidNotRespondAreAbsent() throws {
        let line = FakeLine(devices: [4: .init(setting: LineSetting(baud: 9600, parity: .none), value: 1, identification: nil)])
        line.behindGateway = true
        let result = try LineScanner(plan: ScanPlan(units: Array(1...10), settings: [], probeTimeout: .milliseconds(10))).run(on: line)
        #expect(result.units.map(\.unit) == [4])
    }

    @Test func searchOrderPutsCommonSettingsFirst() {
        let order = LineSetting.searchOrder(bauds: nil, parities: nil).map(\.description)
        #expect(Array(order.prefix(4)) == ["9600 N", "9600 E", "19200 N", "19200 E"])
        #expect(order.count == 21)
        #expect(order.suffix(7).allSatisfy { $0.hasSuffix("O") })
    }

    @Test func rtuFrameLengths() {
        // Read holding registers answer: unit 1, fc 3, 4 bytes, data, crc.
        #expect(RTUFrame.responseLength([1, 3, 4]) == .complete(9))
        #expect(RTUFrame.responseLength([1, 0x83]) == .complete(5))
        #expect(RTUFrame.responseLength([1]) == .needAtLeast(2))
        #expect(RTUFrame.responseLength([1, 6]) == .complete(8))
        // FC 43/14 with two objects of 3 and 2 bytes.
        let ident: [UInt8] = [1, 43, 14, 1, 1, 0, 0, 2, 0, 3, 65, 66, 67, 1, 2, 68, 69]
        #expect(RTUFrame.responseLength(Array(ident.prefix(9))) == .needAtLeast(10))
        #expect(RTUFrame.responseLength(ident) == .complete(ident.count + 2))
        #expect(RTUFrame.requestLength([1, 16, 0, 0, 0, 2, 4]) == .complete(13))
        #expect(RTUFrame.responseLength([1, 99]) == .unknown)
        // The CRC of a known frame (read holding 0 x1 from unit 1: 01 03 00 00 00 01 84 0A).
        let sealed = RTUFrame.seal(unit: 1, pdu: [3, 0, 0, 0, 1])
        #expect(sealed == [1, 3, 0, 0, 0, 1, 0x84, 0x0A])
        #expect(RTUFrame.checks(sealed))
        #expect(!RTUFrame.checks([1, 3, 0, 0, 0, 1, 0x84, 0x0B]))
    }

    @Test func malformedIdentificationIsIgnored() {
        #expect(LineScanner.parseIdentification([43, 14, 1, 1, 0, 0, 1, 0, 9, 65]) == nil)
        #expect(LineScanner.parseServerID([17, 9, 1]) == nil)
    }
}
