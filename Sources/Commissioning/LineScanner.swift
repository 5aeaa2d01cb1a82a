import LineSettings

// `gateway scan`: which unit ids answer on a line, at which speed and parity, and what each says
// about itself. Only reads: FC 1-4 at address 0, FC 17 (Report Server ID), FC 43/14 (Read Device
// Identification). Never a write.

/// One line setting the scan tries.
public struct LineSetting: Sendable, Equatable, CustomStringConvertible {
    public var baud: Int
    public var parity: Parity
    public init(baud: Int, parity: Parity) { self.baud = baud; self.parity = parity }
    public var description: String { "\(baud) \(parity.rawValue)" }

    /// The order installers meet them in: 9600 and 19200 first, 8N1 before 8E1 (most devices
    /// ship 8N1 although the standard says 8E1), odd parity last.
    public static func searchOrder(bauds: [Int]?, parities: [Parity]?) -> [LineSetting] {
        let b = bauds ?? [9600, 19200, 38400, 115200, 4800, 57600, 2400]
        let p = parities ?? [.none, .even, .odd]
        var out: [LineSetting] = []
        for parity in p where parity != .odd { for baud in b { out.append(LineSetting(baud: baud, parity: parity)) } }
        if p.contains(.odd) { for baud in b { out.append(LineSetting(baud: baud, parity: .odd)) } }
        // Keep the two common speeds together across parities: 9600 N, 9600 E, 19200 N, ...
        return out.sorted { a, c in
            let ia = b.firstIndex(of: a.baud) ?? 0, ic = b.firstIndex(of: c.baud) ?? 0
            let oa = a.parity == .odd ? 1 : 0, oc = c.parity == .odd ? 1 : 0
            if oa != oc { return oa < oc }
            if ia != ic { return ia < ic }
            return (p.firstIndex(of: a.parity) ?? 0) < (p.firstIndex(of: c.parity) ?? 0)
        }
    }
}

/// What a table answered at address 0.
public enum TableAnswer: Sendable, Equatable {
    case value(UInt16)
    case exception(UInt8)
    case silence

    public var answeredWithValue: Bool { if case .value = self { true } else { false } }
}

/// FC 43 / MEI 14 objects 0-2 (and the rest of the basic and regular set when given).
public struct DeviceIdentification: Sendable, Equatable {
    public var vendor: String?
    public var productCode: String?
    public var revision: String?
    public var vendorURL: String?
    public var productName: String?
    public var modelName: String?
    public init() {}
}

/// FC 17: the server id byte, the run indicator and the device-specific bytes after them.
public struct ServerID: Sendable, Equatable {
    public var id: UInt8
    public var running: Bool?
    /// The additional data, as text when it is printable ASCII.
    public var text: String?
    public var bytes: [UInt8]
}

/// One unit that answered.
public struct FoundUnit: Sendable, Equatable {
    public var unit: Int
    /// What the presence probe got: a value or an exception code.
    public var probe: TableAnswer
    public var identification: DeviceIdentification?
    public var serverID: ServerID?
    public var tables: [(table: String, answer: TableAnswer)]

    public static func == (a: FoundUnit, b: FoundUnit) -> Bool {
        a.unit == b.unit && a.probe == b.probe && a.identification == b.identification && a.serverID == b.serverID
            && a.tables.map(\.table) == b.tables.map(\.table) && a.tables.map(\.answer) == b.tables.map(\.answer)
    }

    /// Whether every table answered with an exception or not at all.
    public var answersOnlyExceptions: Bool { !tables.contains { $0.answer.answeredWithValue } }
}

public struct ScanPlan: Sendable {
    public var units: [Int]
    /// Settings to try on a serial line, in order; the first that gets a valid answer is kept.
    /// One entry (or none, off a serial line) when the setting is known.
    public var settings: [LineSetting]
    public var probeTimeout: Duration
    /// Also ask what each device is (FC 43, FC 17, the four tables).
    public var identify = true

    public init(units: [Int], settings: [LineSetting], probeTimeout: Duration) {
        self.units = units
        self.settings = settings
        self.probeTimeout = probeTimeout
    }

    /// The longest the scan can take (every probe timing out), for the line said before it starts.
    public var worstCase: Duration {
        probeTimeout * (units.count * max(1, settings.count))
    }
}

public struct ScanResult: Sendable, Equatable {
    /// The setting that got answers (nil off a serial line, or when nothing answered).
    public var setting: LineSetting?
    public var units: [FoundUnit]
    /// Probes sent and garbled answers seen (a hint of a wrong setting when nothing answers).
    public var probes = 0
    public var garbled = 0
}

/// Runs a scan over a ``ProbeLink``. Progress lines go to `progress` (stderr in the CLI).
public struct LineScanner {
    public let plan: ScanPlan
    public init(plan: ScanPlan) { self.plan = plan }

    public func run(on link: some ProbeLink, progress: (String) -> Void = { _ in }) throws(ScanError) -> ScanResult {
        var result = ScanResult(setting: nil, units: [])
        let settings: [LineSetting?] = plan.settings.isEmpty ? [nil] : plan.settings
        for setting in settings {
            if let setting {
                try link.setLine(baud: setting.baud, parity: setting.parity)
            }
            var found: [(Int, TableAnswer)] = []
            for (i, unit) in plan.units.enumerated() {
                if i % 16 == 0 {
                    progress("scanning\(setting.map { " at \($0)" } ?? ""): unit \(unit) (\(i)/\(plan.units.count)), \(found.count) found")
                }
                result.probes += 1
                switch link.exchange(unit: unit, pdu: Self.readPDU(function: 3), timeout: plan.probeTimeout) {
                case .pdu(let pdu) where Self.isGatewayAbsence(pdu):
                    // A Modbus TCP gateway answering for a unit behind it that did not answer.
                    break
                case .pdu(let pdu):
                    found.append((unit, Self.tableAnswer(pdu)))
                case .garbled:
                    result.garbled += 1
                case .silence:
                    break
                case .failed(let why):
                    throw ScanError(why)
                }
            }
            if !found.isEmpty {
                result.setting = setting
                for (unit, probe) in found {
                    var f = FoundUnit(unit: unit, probe: probe, tables: [])
                    if plan.identify { identify(&f, on: link) }
                    result.units.append(f)
                }
                return result
            }
            if settings.count > 1, let setting {
                progress("nothing at \(setting)\(result.garbled > 0 ? " (\(result.garbled) garbled answers so far)" : "")")
            }
        }
        return result
    }

    /// FC 43, FC 17 and the four tables at address 0.
    func identify(_ f: inout FoundUnit, on link: some ProbeLink) {
        f.identification = readIdentification(unit: f.unit, on: link)
        if case .pdu(let pdu) = link.exchange(unit: f.unit, pdu: [17], timeout: plan.probeTimeout) {
            f.serverID = Self.parseServerID(pdu)
        }
        for (name, function) in [("coil", 1), ("discrete", 2), ("holding", 3), ("input", 4)] as [(String, UInt8)] {
            let answer: TableAnswer
            switch link.exchange(unit: f.unit, pdu: Self.readPDU(function: function), timeout: plan.probeTimeout) {
            case .pdu(let pdu): answer = Self.tableAnswer(pdu)
            default: answer = .silence
            }
            f.tables.append((name, answer))
        }
    }

    /// Basic then regular objects, following "more follows" at most 8 times.
    func readIdentification(unit: Int, on link: some ProbeLink) -> DeviceIdentification? {
        var ident = DeviceIdentification()
        var any = false
        var next: UInt8 = 0
        for _ in 0..<8 {
            guard case .pdu(let pdu) = link.exchange(unit: unit, pdu: [43, 14, 1, next], timeout: plan.probeTimeout),
                  let page = Self.parseIdentification(pdu) else { break }
            for (id, text) in page.objects {
                any = true
                switch id {
                case 0: ident.vendor = text
                case 1: ident.productCode = text
                case 2: ident.revision = text
                case 3: ident.vendorURL = text
                case 4: ident.productName = text
                case 5: ident.modelName = text
                default: break
                }
            }
            guard let more = page.next else { break }
            next = more
        }
        return any ? ident : nil
    }

    static func readPDU(function: UInt8) -> [UInt8] { [function, 0, 0, 0, 1] }

    /// Exceptions 0x0A (gateway path unavailable) and 0x0B (gateway target failed to respond):
    /// the gateway is there, the unit is not.
    static func isGatewayAbsence(_ pdu: [UInt8]) -> Bool {
        pdu.count >= 2 && pdu[0] & 0x80 != 0 && (pdu[1] == 0x0A || pdu[1] == 0x0B)
    }

    static func tableAnswer(_ pdu: [UInt8]) -> TableAnswer {
        if pdu[0] & 0x80 != 0 { return .exception(pdu.count > 1 ? pdu[1] : 0) }
        guard pdu.count >= 3 else { return .exception(0) }
        if pdu[0] <= 2 { return .value(UInt16(pdu[2] & 1)) }
        guard pdu.count >= 4 else { return .exception(0) }
        return .value(UInt16(pdu[2]) << 8 | UInt16(pdu[3]))
    }

    /// `0x2B 0x0E code conformity more next count (id len bytes)*`; nil for an exception or a
    /// malformed answer.
    public static func parseIdentification(_ pdu: [UInt8]) -> (objects: [(UInt8, String)], next: UInt8?)? {
        guard pdu.count >= 7, pdu[0] == 43, pdu[1] == 14 else { return nil }
        var objects: [(UInt8, String)] = []
        var at = 7
        for _ in 0..<Int(pdu[6]) {
            guard at + 2 <= pdu.count else { return nil }
            let id = pdu[at], len = Int(pdu[at + 1])
            guard at + 2 + len <= pdu.count else { return nil }
            objects.append((id, printable(pdu[(at + 2)..<(at + 2 + len)])))
            at += 2 + len
        }
        return (objects, pdu[4] == 0xFF ? pdu[5] : nil)
    }

    public static func parseServerID(_ pdu: [UInt8]) -> ServerID? {
        guard pdu.count >= 3, pdu[0] == 17 else { return nil }
        let count = Int(pdu[1])
        guard count >= 1, pdu.count >= 2 + count else { return nil }
        let data = Array(pdu[2..<(2 + count)])
        var s = ServerID(id: data[0], running: nil, text: nil, bytes: [])
        if data.count >= 2 {
            s.running = data[1] == 0xFF ? true : (data[1] == 0 ? false : nil)
            s.bytes = Array(data[2...])
            let text = s.bytes.filter { $0 != 0 }
            if !text.isEmpty && text.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { s.text = String(decoding: text, as: UTF8.self) }
        }
        return s
    }

    static func printable(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.map { ($0 >= 0x20 && $0 < 0x7F) ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
    }
}
