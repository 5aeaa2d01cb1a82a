import ArgumentParser
import Commissioning
import GatewayConfig
import LineSettings

struct Scan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Find the units that answer on a line, and what they are (commissioning). Never writes.",
        discussion: """
        A unit that answers anything (a value or an exception) is present. For each it asks Read Device
        Identification (FC 43), Report Server ID (FC 17) and which of the four tables answer at address 0,
        and names the profile whose identification matches.
        Examples:
          gateway scan --rtu /dev/ttyUSB0 --baud auto --parity auto --toml >> gateway.toml
          gateway scan --tcp 192.168.1.20 --units 1-10
          gateway scan --rtu-tcp 192.168.1.30:4001 --json
        """)

    @Option(help: "Modbus RTU serial port, e.g. /dev/ttyUSB0.") var rtu: String?
    @Option(help: "Modbus TCP device or gateway, HOST[:PORT] (default port 502).") var tcp: String?
    @Option(name: .customLong("rtu-tcp"), help: "Serial device server carrying RTU frames over TCP, HOST:PORT.") var rtuTCP: String?
    @Option(help: "RTU baud rate, or auto (tries 9600, 19200, 38400, 115200, 4800, 57600, 2400).") var baud = "9600"
    @Option(help: "RTU parity N, E or O, or auto.") var parity = "N"
    @Option(name: .customLong("data-bits"), help: "RTU data bits (5-8).") var dataBits = 8
    @Option(name: .customLong("stop-bits"), help: "RTU stop bits (1 or 2).") var stopBits = 1
    @Option(help: "Unit ids to probe: 1-247, or a list such as 1,2,10-20.") var units = "1-247"
    @Option(name: .customLong("timeout-ms"), help: "How long to wait for each answer.") var timeoutMs = 200
    @Flag(help: "Print a [[bus]] and [[device]] snippet for gateway.toml.") var toml = false
    @Flag(help: "Print JSON.") var json = false
    @Option(help: "Configuration file whose profiles/ directory is searched first.") var config = "gateway.toml"

    func validate() throws {
        guard [rtu, tcp, rtuTCP].compactMap({ $0 }).count == 1 else {
            throw ValidationError("give exactly one of --rtu PATH, --tcp HOST[:PORT], --rtu-tcp HOST:PORT")
        }
        guard !(toml && json) else { throw ValidationError("give --toml or --json, not both") }
        _ = try target()
        _ = try settings()
        _ = try unitIDs()
        guard (10...10_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms must be 10 to 10000") }
    }

    func target() throws -> ScanTarget {
        if let rtu { return .rtu(path: rtu, dataBits: dataBits, stopBits: stopBits) }
        if let tcp {
            if tcp.contains(":") && !tcp.hasSuffix("]") {
                let (h, p) = try parseHostPort(tcp)
                return .tcp(host: h, port: p)
            }
            return .tcp(host: tcp.hasPrefix("[") ? String(tcp.dropFirst().dropLast()) : tcp, port: 502)
        }
        let (h, p) = try parseHostPort(rtuTCP ?? "")
        return .rtuOverTCP(host: h, port: p)
    }

    func settings() throws -> [LineSetting] {
        guard rtu != nil else { return [] }
        var bauds: [Int]?
        if baud != "auto" {
            guard let b = Int(baud), BaudRate.isSupported(b) else { throw ValidationError("--baud must be auto or one of \(BaudRate.supportedList)") }
            bauds = [b]
        }
        var parities: [Parity]?
        if parity != "auto" {
            guard let p = Parity(letter: parity) else { throw ValidationError("--parity must be N, E, O or auto") }
            parities = [p]
        }
        return LineSetting.searchOrder(bauds: bauds, parities: parities)
    }

    func unitIDs() throws -> [Int] {
        var out: [Int] = []
        for part in units.split(separator: ",") {
            let ends = part.split(separator: "-", maxSplits: 1).map { Int($0) }
            guard let lo = ends.first ?? nil, let hi = ends.count == 2 ? ends[1] : lo, lo <= hi, (0...255).contains(lo), (0...255).contains(hi) else {
                throw ValidationError("--units '\(units)': expected ids 0-255 such as 1-247 or 1,2,10-20")
            }
            for u in lo...hi where !out.contains(u) { out.append(u) }
        }
        guard !out.isEmpty else { throw ValidationError("--units is empty") }
        return out
    }

    func run() throws {
        let target = try target()
        let plan = ScanPlan(units: try unitIDs(), settings: try settings(), probeTimeout: .milliseconds(timeoutMs))
        let link = WireLink(target: target, probeTimeout: .milliseconds(timeoutMs))
        do {
            if let first = plan.settings.first { try link.setLine(baud: first.baud, parity: first.parity) } else { try link.open() }
        } catch {
            emitError("error: \(error)")
            throw ExitCode(1)
        }
        let settingsWord = plan.settings.count > 1 ? " at \(plan.settings.count) line settings" : (plan.settings.first.map { " at \($0)" } ?? "")
        emitError("scanning \(target): \(plan.units.count) unit id(s)\(settingsWord), \(timeoutMs) ms per probe: at most \(Self.words(plan.worstCase)) (plus a few seconds per unit found)")
        let result: ScanResult
        do {
            result = try LineScanner(plan: plan).run(on: link) { emitError($0) }
        } catch {
            emitError("error: \(error)")
            throw ExitCode(1)
        }
        let report = ScanReport(target: target, result: result, library: .standard(configFile: config))
        if toml { emit(report.toml()) } else if json { emit(report.json) } else { emit(report.table) }
        if result.units.isEmpty {
            emitError(result.garbled > 0 ? "nothing answered cleanly, but \(result.garbled) garbled answers came: try --baud auto --parity auto"
                                        : "nothing answered: check the wiring (A/B), the termination, the unit ids and the line settings")
            throw ExitCode(3)
        }
    }

    static func words(_ d: Duration) -> String {
        let s = d.components.seconds
        return s >= 120 ? "\(s / 60) min \(s % 60) s" : "\(max(1, s)) s"
    }
}

struct Profiles: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the device profiles, or show one's points.",
        discussion: "Profiles are searched in profiles/ beside the configuration file (the site's), then in those shipped with the gateway.")

    @Argument(help: "show NAME prints the points of profile NAME.") var words: [String] = []
    @Option(help: "Configuration file whose profiles/ directory is searched first.") var config = "gateway.toml"

    func validate() throws {
        guard words.isEmpty || (words.count == 2 && words[0] == "show") else { throw ValidationError("usage: gateway profiles [show NAME]") }
    }

    func run() throws {
        let library = ProfileLibrary.standard(configFile: config)
        if words.isEmpty {
            let all = library.all()
            if all.isEmpty { emitError("no profiles in \(library.directories.joined(separator: ", "))") }
            for (name, file) in all {
                do {
                    let p = try library.load(name)
                    emit("\(name)  \(p.vendor) \(p.model), \(p.points.count) points  (\(file))")
                } catch {
                    emit("\(name)  INVALID: \(error.description)")
                }
            }
            return
        }
        let profile: DeviceProfile
        do {
            profile = try library.load(words[1])
        } catch {
            emitError(error.description)
            throw ExitCode(2)
        }
        emit("\(profile.name): \(profile.vendor) \(profile.model)")
        emit("file: \(profile.file)")
        emit("register map: \(profile.source)")
        if profile.identification.vendor != nil || profile.identification.product != nil {
            emit("identification (FC 43): vendor \(profile.identification.vendor ?? "*"), product \(profile.identification.product ?? "*")")
        }
        for p in profile.points {
            var parts = ["\(p.table.rawValue) \(p.address)", p.type.rawValue]
            if p.scale != 1 { parts.append("x\(p.scale)") }
            if let u = p.unit { parts.append(u) }
            if p.writable { parts.append("writable") }
            if let ms = p.pulseMs { parts.append("pulse \(ms) ms") }
            if let c = p.ha?.deviceClass { parts.append("ha \(c)") }
            emit("  \(p.name): \(parts.joined(separator: ", "))")
        }
    }
}
