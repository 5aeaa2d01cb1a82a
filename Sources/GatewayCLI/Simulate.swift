import ArgumentParser
import Dispatch
import GatewayConfig
import LineSettings
import Modbus
import ModbusSimulator

#if canImport(Glibc)
import Glibc
#endif

struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a built-in Modbus device (TCP, or RTU on a tty) for demos and tests.",
        discussion: """
        Prints "listening tcp HOST:PORT" (or "listening rtu PATH") once it serves, then one JSON line per
        accepted write: {"write":{"unit":1,"fc":5,"kind":"coil","address":0,"values":[1],"ts_ms":...,"mono_ms":...}}.
        Lines on stdin change values live: "set [UNIT/]KIND:ADDR=VALUE", the answer delay: "latency MS", or
        put a noise byte ahead of the next N answers (RTU): "noise N".
        Examples:
          gateway simulate --tcp 127.0.0.1:1502 --unit 1 --unit 3 --set holding:100=215 --set 3/coil:0=1
          gateway simulate --tcp 127.0.0.1:0 --counter input:10@1000 --drift holding:100:180:260:1@500
          gateway simulate --rtu /dev/pts/5 --baud 19200 --unit 3 --unit 4
          gateway simulate --tcp 127.0.0.1:1502 --unit 1 --unit 2 --profile 1/eastron-sdm120 --profile 2/xy-md02
          gateway simulate --rtu-tcp 127.0.0.1:4001 --unit 5 --exceptions 5
        """)

    @Option(help: "Listen on HOST:PORT (port 0 picks a free one).") var tcp: String?
    @Option(help: "Serve the units on this serial port (RTU) instead.") var rtu: String?
    @Option(name: .customLong("rtu-tcp"), help: "Listen on HOST:PORT and speak RTU frames over TCP (a serial device server).") var rtuTCP: String?
    @Option(help: "[UNIT/]NAME: serve the points of this device profile (its example values and its identification).") var profile: [String] = []
    @Option(help: "UNIT: answer every request with an exception (a device whose map starts elsewhere).") var exceptions: [Int] = []
    @Option(help: "UNIT:MS: this unit answers MS late.") var slow: [String] = []
    @Flag(name: .customLong("wire-timing"), help: "RTU: take the wire's time at --baud (11 bits per character, 3.5 characters of silence between frames); a pty pair then behaves like the line.")
    var wireTiming = false
    @Option(help: "RTU baud rate.") var baud: Int = 19200
    @Option(help: "RTU parity: N, E or O.") var parity: String = "N"

    @Option(help: "Unit id to serve (repeatable; default 1).") var unit: [Int] = []
    @Option(help: "Table size for every table (addresses 0..<size exist).") var size: Int = 10_000
    @Option(name: .customLong("holding-size"), help: "Override the holding table size.") var holdingSize: Int?
    @Option(name: .customLong("set"), help: "Initial value [UNIT/]KIND:ADDR=VALUE (KIND: coil, discrete, holding, input).")
    var sets: [String] = []
    @Option(help: "Counter [UNIT/]KIND:ADDR[@MS]: +1 (or toggle) every MS (default 1000).") var counter: [String] = []
    @Option(name: .customLong("latency-ms"), help: "Delay every answer this long (a slow device; one request at a time).")
    var latencyMs: Int = 0
    @Flag(name: .customLong("log-requests"), help: "Print every request received: {\"request\":{\"unit\":1,\"fc\":3,\"mono_us\":...}}.")
    var logRequests = false
    @Option(help: "Drift [UNIT/]KIND:ADDR:MIN:MAX[:STEP][@MS]: moves STEP every MS between MIN and MAX.") var drift: [String] = []

    func validate() throws {
        guard [tcp, rtu, rtuTCP].compactMap({ $0 }).count <= 1 else { throw ValidationError("give one of --tcp, --rtu, --rtu-tcp") }
        if let tcp { _ = try parseHostPort(tcp) }
        if let rtuTCP { _ = try parseHostPort(rtuTCP) }
        if wireTiming && rtu == nil { throw ValidationError("--wire-timing is for --rtu lines") }
        for u in exceptions where !unitIDs.contains(u) { throw ValidationError("--exceptions \(u) is not one of --unit") }
        _ = try slowUnits()
        guard Parity(letter: parity) != nil else { throw ValidationError("--parity must be N, E or O") }
        guard BaudRate.isSupported(baud) else { throw ValidationError("--baud \(baud) is not one of \(BaudRate.supportedList)") }
        guard (1...65536).contains(size) else { throw ValidationError("--size must be 1-65536") }
        for u in unit where !(0...255).contains(u) { throw ValidationError("--unit \(u) is outside 0-255") }
        if rtu != nil || rtuTCP != nil, let bad = unitIDs.first(where: { !(1...247).contains($0) }) {
            throw ValidationError("--unit \(bad): RTU unit ids are 1-247")
        }
        _ = try parsedSets()
        _ = try scripts()
    }

    var unitIDs: [Int] { unit.isEmpty ? [1] : unit }

    func slowUnits() throws -> [Int: Int] {
        var out: [Int: Int] = [:]
        for s in slow {
            let p = s.split(separator: ":")
            guard p.count == 2, let u = Int(p[0]), let ms = Int(p[1]), unitIDs.contains(u), (0...60_000).contains(ms) else {
                throw ValidationError("--slow '\(s)': expected UNIT:MS with UNIT one of --unit")
            }
            out[u] = ms
        }
        return out
    }

    /// Fills `unit` from a profile: each point's `example` (raw = (example - offset) / scale,
    /// encoded by its type and order), and the profile's identification.
    static func apply(_ profile: DeviceProfile, to unit: inout SimulatedUnit) throws {
        if profile.identification.vendor != nil || profile.identification.product != nil {
            unit.identification = SimulatedIdentity(vendor: profile.identification.vendor ?? profile.vendor,
                                                    product: profile.identification.product ?? profile.model,
                                                    revision: profile.identification.revision ?? "1.0")
        }
        for p in profile.points {
            let example = profile.examples[p.name] ?? 0
            let kind: RegisterKind = switch p.table { case .coil: .coil; case .discrete: .discrete; case .holding: .holding; case .input: .input }
            if p.table.isBit {
                let v = example != 0
                if kind == .coil { unit.coils[p.address] = v } else { unit.discrete[p.address] = v }
                continue
            }
            if let bit = p.bit {
                let old = (kind == .holding ? unit.holding[p.address] : unit.input[p.address]) ?? 0
                let v = example != 0 ? old | (1 << bit) : old & ~(1 << bit)
                if kind == .holding { unit.holding[p.address] = v } else { unit.input[p.address] = v }
                continue
            }
            guard let type = DataType(name: p.type.rawValue, stringRegisters: p.length) else { continue }
            let raw = (example - p.offset) / p.scale
            let value: ModbusValue = type == .float32 || type == .float64 ? .double(raw) : (raw < 0 ? .int(Int64(raw.rounded())) : .uint(UInt64(raw.rounded())))
            let order = RegisterOrder(word: p.wordOrderLittle ? .little : .big, byte: p.byteOrderLittle ? .little : .big)
            let regs: [UInt16]
            do { regs = try RegisterCodec.encode(value, as: type, order: order) } catch {
                throw ValidationError("profile \(profile.name): point \(p.name): example \(example) does not fit \(p.type.rawValue)")
            }
            for (i, r) in regs.enumerated() {
                if kind == .holding { unit.holding[p.address + i] = r } else { unit.input[p.address + i] = r }
            }
        }
    }

    func profiles() throws -> [(unit: Int?, profile: DeviceProfile)] {
        let library = ProfileLibrary.standard(configFile: nil)
        return try profile.map { spec in
            let (u, name) = try splitUnit(spec)
            do {
                return (u, try library.load(String(name)))
            } catch {
                throw ValidationError("--profile '\(spec)': \(error)")
            }
        }
    }

    func parsedSets() throws -> [(unit: Int?, kind: RegisterKind, address: Int, value: UInt16)] {
        try sets.map { s in
            let (u, rest) = try splitUnit(s)
            guard let eq = rest.firstIndex(of: "=") else { throw ValidationError("--set '\(s)': expected KIND:ADDR=VALUE") }
            let (kind, addr) = try parseTarget(String(rest[..<eq]), whole: s)
            let v = String(rest[rest.index(after: eq)...])
            let value: UInt16
            if let x = UInt16(v) { value = x } else if let x = Int16(v) { value = UInt16(bitPattern: x) }
            else if v == "true" { value = 1 } else if v == "false" { value = 0 }
            else { throw ValidationError("--set '\(s)': value must be 0-65535, -32768..-1, true or false") }
            return (u, kind, addr, value)
        }
    }

    func scripts() throws -> [ScriptedChange] {
        var out: [ScriptedChange] = []
        for s in counter {
            let (u, rest) = try splitUnit(s)
            let (spec, ms) = try splitPeriod(rest, whole: s)
            let (kind, addr) = try parseTarget(spec, whole: s)
            for id in u.map({ [$0] }) ?? unitIDs {
                out.append(ScriptedChange(unit: id, kind: kind, address: addr, behaviour: .counter, period: .milliseconds(ms)))
            }
        }
        for s in drift {
            let (u, rest) = try splitUnit(s)
            let (spec, ms) = try splitPeriod(rest, whole: s)
            let parts = spec.split(separator: ":").map(String.init)
            guard parts.count == 4 || parts.count == 5, let lo = Int(parts[2]), let hi = Int(parts[3]), lo < hi else {
                throw ValidationError("--drift '\(s)': expected KIND:ADDR:MIN:MAX[:STEP][@MS] with MIN < MAX")
            }
            let step = parts.count == 5 ? Int(parts[4]) ?? 0 : 1
            guard step > 0 else { throw ValidationError("--drift '\(s)': STEP must be positive") }
            let (kind, addr) = try parseTarget(parts[0] + ":" + parts[1], whole: s)
            guard !kind.isBit else { throw ValidationError("--drift '\(s)': only registers drift") }
            for id in u.map({ [$0] }) ?? unitIDs {
                out.append(ScriptedChange(unit: id, kind: kind, address: addr, behaviour: .drift(min: lo, max: hi, step: step),
                                          period: .milliseconds(ms)))
            }
        }
        return out
    }

    private func splitUnit(_ s: String) throws -> (Int?, Substring) {
        guard let slash = s.firstIndex(of: "/") else { return (nil, Substring(s)) }
        guard let u = Int(s[..<slash]), unitIDs.contains(u) else { throw ValidationError("'\(s)': unit before '/' must be one of --unit") }
        return (u, s[s.index(after: slash)...])
    }

    private func splitPeriod(_ s: Substring, whole: String) throws -> (String, Int) {
        guard let at = s.firstIndex(of: "@") else { return (String(s), 1000) }
        guard let ms = Int(s[s.index(after: at)...]), ms >= 1 else { throw ValidationError("'\(whole)': @MS must be a positive integer") }
        return (String(s[..<at]), ms)
    }

    private func parseTarget(_ s: String, whole: String) throws -> (RegisterKind, Int) {
        let p = s.split(separator: ":")
        let names: [String: RegisterKind] = ["coil": .coil, "coils": .coil, "discrete": .discrete, "holding": .holding, "input": .input]
        guard p.count == 2, let kind = names[String(p[0])], let a = Int(p[1]), (0..<65536).contains(a) else {
            throw ValidationError("'\(whole)': expected KIND:ADDR with KIND coil, discrete, holding or input")
        }
        return (kind, a)
    }

    func run() throws {
        var units: [Int: SimulatedUnit] = [:]
        for id in unitIDs {
            var u = SimulatedUnit()
            u.coilCount = size; u.discreteCount = size; u.inputCount = size
            u.holdingCount = holdingSize ?? size
            units[id] = u
        }
        for (u, p) in try profiles() {
            for id in u.map({ [$0] }) ?? unitIDs { try Self.apply(p, to: &units[id, default: SimulatedUnit()]) }
        }
        for u in exceptions { units[u]?.exceptionsOnly = true }
        for (u, ms) in try slowUnits() { units[u]?.latency = .milliseconds(ms) }
        for s in try parsedSets() {
            for id in s.unit.map({ [$0] }) ?? unitIDs {
                switch s.kind {
                case .coil: units[id]?.coils[s.address] = s.value != 0
                case .discrete: units[id]?.discrete[s.address] = s.value != 0
                case .holding: units[id]?.holding[s.address] = s.value
                case .input: units[id]?.input[s.address] = s.value
                }
            }
        }
        let endpoint: ModbusSimulator.Endpoint
        if let rtu {
            endpoint = .rtu(RTUSettings(path: rtu, baud: baud, parity: Parity(letter: parity) ?? .none))
        } else if let rtuTCP {
            let (h, p) = try parseHostPort(rtuTCP)
            endpoint = .rtuOverTCP(host: h, port: p)
        } else {
            let (h, p) = try parseHostPort(tcp ?? "127.0.0.1:1502")
            endpoint = .tcp(host: h, port: p)
        }

        // SIGTERM/SIGINT stop the simulator cleanly (exit 0): handled by dispatch sources.
        let stopSignal = DispatchSemaphore(value: 0)
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { stopSignal.signal() }
            src.resume()
            sources.append(src)
        }

        let sim: ModbusSimulator
        do {
            var onRequest: SimulatedRequestObserver?
            if logRequests {
                onRequest = { (unit: Int, fc: Int, us: Int64) in
                    emit("{\"request\":{\"unit\":\(unit),\"fc\":\(fc),\"mono_us\":\(us)}}")
                }
            }
            sim = try ModbusSimulator(endpoint: endpoint, units: units, scripts: try scripts(), latency: .milliseconds(max(0, latencyMs)),
                                      wireTiming: wireTiming, onRequest: onRequest) { w in
                emit(#"{"write":{"unit":\#(w.unit),"fc":\#(w.function),"kind":"\#(w.kind)","address":\#(w.address),"values":[\#(w.values.map(String.init).joined(separator: ","))],"ts_ms":\#(w.unixMilliseconds),"mono_ms":\#(w.monotonicMilliseconds),"mono_us":\#(w.monotonicMicroseconds)}}"#)
            }
        } catch {
            emitError("error: \(error)")
            throw ExitCode(1)
        }
        switch endpoint {
        case .tcp(let h, _): emit("listening tcp \(h.contains(":") ? "[\(h)]" : h):\(sim.boundPort ?? 0) units \(unitIDs.sorted().map(String.init).joined(separator: ","))")
        case .rtuOverTCP(let h, _): emit("listening rtu-tcp \(h.contains(":") ? "[\(h)]" : h):\(sim.boundPort ?? 0) units \(unitIDs.sorted().map(String.init).joined(separator: ","))")
        case .rtu(let s): emit("listening rtu \(s.path) unit\(unitIDs.count > 1 ? "s" : "") \(unitIDs.sorted().map(String.init).joined(separator: ","))")
        }

        let box = SimBox(sim)
        Self.startStdinReader(box: box, units: unitIDs)
        stopSignal.wait()
        sim.stop()
        sources.forEach { $0.cancel() }
        emit("stopped")
    }

    final class SimBox: Sendable {
        let sim: ModbusSimulator
        init(_ s: ModbusSimulator) { sim = s }
    }

    static func startStdinReader(box: SimBox, units: [Int]) {
        var tid = pthread_t()
        let ctx = Unmanaged.passRetained(StdinContext(box: box, units: units)).toOpaque()
        pthread_create(&tid, nil, { raw in
            let c = Unmanaged<StdinContext>.fromOpaque(raw!).takeRetainedValue()
            while let line = readLine() {
                if line.hasPrefix("noise ") {
                    guard let n = Int(line.dropFirst("noise ".count)), (1...1000).contains(n) else {
                        emitError("stdin: ignored '\(line)' (expected: noise N, 1...1000)")
                        continue
                    }
                    c.box.sim.addNoise(answers: n)
                    emit("noise \(n)")
                    continue
                }
                if line.hasPrefix("latency ") {
                    guard let ms = Int(line.dropFirst("latency ".count)), ms >= 0, ms <= 60_000 else {
                        emitError("stdin: ignored '\(line)' (expected: latency MS, 0...60000)")
                        continue
                    }
                    c.box.sim.setLatency(.milliseconds(ms))
                    emit("latency \(ms)")
                    continue
                }
                let t = line.trimmingPrefix("set ").description
                guard line.hasPrefix("set "),
                      let parsed = try? Simulate.parse(["--set", t] + c.units.flatMap { ["--unit", String($0)] }).parsedSets() else {
                    emitError("stdin: ignored '\(line)' (expected: set [UNIT/]KIND:ADDR=VALUE or latency MS)")
                    continue
                }
                for s in parsed {
                    for u in s.unit.map({ [$0] }) ?? c.units {
                        c.box.sim.set(unit: u, kind: s.kind, address: s.address, value: s.value)
                    }
                }
                emit("set \(t)")
            }
            return nil
        }, ctx)
        pthread_detach(tid)
    }

    final class StdinContext: Sendable {
        let box: SimBox
        let units: [Int]
        init(box: SimBox, units: [Int]) { self.box = box; self.units = units }
    }
}
