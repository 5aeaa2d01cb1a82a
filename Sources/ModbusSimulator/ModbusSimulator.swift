import CModbus
import Modbus

#if canImport(Glibc)
import Glibc
#endif

// The ModbusSimulator module: the Modbus device behind `gateway simulate`, the tests and the
// benchmarks (TCP or RTU, several units, drifting values, counters, holes, a request log with
// monotonic stamps). libmodbus's server API on a thread of its own; not part of `gateway run`.

/// The tables of one simulated unit. Addresses `0..<size` exist; anything past is answered with
/// ILLEGAL DATA ADDRESS, so tests can create holes by sizing tables.
public struct SimulatedUnit: Sendable, Equatable {
    public var coilCount = 10_000
    public var discreteCount = 10_000
    public var holdingCount = 10_000
    public var inputCount = 10_000
    public var coils: [Int: Bool] = [:]
    public var discrete: [Int: Bool] = [:]
    public var holding: [Int: UInt16] = [:]
    public var input: [Int: UInt16] = [:]
    /// What Read Device Identification (FC 43/14) answers: vendor, product code, revision. Nil:
    /// FC 43 is answered with ILLEGAL FUNCTION, as most simple devices do.
    public var identification: SimulatedIdentity?
    /// Every request gets an exception (ILLEGAL DATA ADDRESS): a device that is there but whose
    /// map starts elsewhere.
    public var exceptionsOnly = false
    /// Delay before this unit's answers (overrides the simulator's latency).
    public var latency: Duration?

    public init() {}

    func size(_ kind: RegisterKind) -> Int {
        switch kind { case .coil: coilCount; case .discrete: discreteCount; case .holding: holdingCount; case .input: inputCount }
    }
}

/// The time an RTU line takes: 11 bit times per character (start, 8 data, parity or a second
/// stop bit, stop), and the 3.5-character silence between frames (1.75 ms above 19200 baud, as
/// the Modbus serial line specification fixes it).
struct WireTiming {
    let character: Duration
    let silence: Duration

    init(baud: Int) {
        character = .nanoseconds(11 * 1_000_000_000 / max(1, baud))
        silence = baud > 19_200 ? .microseconds(1750) : character * 3.5
    }

    func time(characters n: Int) -> Duration { character * n }

    /// Writes `bytes` as the wire delivers them, the first complete one character after `start`;
    /// returns when the last one was complete.
    func transmit(_ bytes: [UInt8], to fd: Int32, from start: ContinuousClock.Instant) -> ContinuousClock.Instant {
        for (i, b) in bytes.enumerated() {
            let due = start + character * (i + 1)
            let wait = due - ContinuousClock.now
            if wait > .zero { usleep(UInt32(clamping: wait.nanoseconds / 1000)) }
            var byte = b
            _ = write(fd, &byte, 1)
        }
        return start + character * bytes.count
    }
}

/// FC 43 basic objects.
public struct SimulatedIdentity: Sendable, Equatable {
    public var vendor: String
    public var product: String
    public var revision: String
    public init(vendor: String, product: String, revision: String) {
        self.vendor = vendor
        self.product = product
        self.revision = revision
    }
}

/// A value that changes by itself, for demos and tests.
public struct ScriptedChange: Sendable, Equatable {
    public enum Behaviour: Sendable, Equatable {
        /// Adds 1 every period (wraps at the register's width; a bit toggles).
        case counter
        /// Moves by `step` every period between `min` and `max`, back and forth.
        case drift(min: Int, max: Int, step: Int)
    }
    public var unit: Int
    public var kind: RegisterKind
    public var address: Int
    public var behaviour: Behaviour
    public var period: Duration

    public init(unit: Int, kind: RegisterKind, address: Int, behaviour: Behaviour, period: Duration) {
        self.unit = unit
        self.kind = kind
        self.address = address
        self.behaviour = behaviour
        self.period = period
    }
}

/// A write the simulator accepted, for the write log.
public struct SimulatedWrite: Sendable, Equatable {
    public var unit: Int
    public var function: Int
    public var kind: RegisterKind
    public var address: Int
    public var values: [UInt16]
    /// Wall-clock time, milliseconds since 1970.
    public var unixMilliseconds: Int64
    /// Monotonic time, milliseconds (for spacing between writes).
    public var monotonicMilliseconds: Int64
    /// Monotonic time, microseconds (CLOCK_MONOTONIC, for latency benchmarks).
    public var monotonicMicroseconds: Int64 = 0
}

/// Every request the simulator receives (for tests of ordering): unit, function code, and
/// CLOCK_MONOTONIC microseconds when it arrived.
public typealias SimulatedRequestObserver = @Sendable (_ unit: Int, _ function: Int, _ monotonicMicroseconds: Int64) -> Void

func monotonicMicroseconds() -> Int64 {
    var mt = timespec()
    clock_gettime(CLOCK_MONOTONIC, &mt)
    return Int64(mt.tv_sec) * 1_000_000 + Int64(mt.tv_nsec) / 1000
}

/// A Modbus device on libmodbus's server API: TCP (several clients, several unit ids) or RTU (one
/// unit on a serial line). Runs on its own thread.
public final class ModbusSimulator: Sendable {
    public enum Endpoint: Sendable, Equatable {
        /// Listen on `host:port`; port 0 picks a free port (see ``boundPort``).
        case tcp(host: String, port: Int)
        /// Serve units on a serial line (RTU framing).
        case rtu(RTUSettings)
        /// Listen on `host:port` and speak RTU frames over TCP, as a serial device server in
        /// "TCP server / raw" mode does with the devices behind it.
        case rtuOverTCP(host: String, port: Int)
    }

    public let endpoint: Endpoint
    /// The TCP port actually bound (useful with port 0); nil for RTU.
    public let boundPort: Int?
    private let wake: (read: Int32, write: Int32)
    private let shared: ConditionLock<Shared>

    private struct Shared {
        var pendingSets: [(unit: Int, kind: RegisterKind, address: Int, value: UInt16)] = []
        var pendingLatencyMicroseconds: UInt32?
        var pendingNoise = 0
        var stopped = false
        var finished = false
        var units: [Int: SimulatedUnit]
    }

    /// Opens the endpoint (throws if it cannot) and starts serving on a new thread.
    /// `onWrite` runs on the simulator thread for every accepted write, `onRequest` for every
    /// request. `latency` delays every answer (a slow device; the simulator serves one request at
    /// a time, like a device on a shared line).
    /// `wireTiming` (RTU line only): answers take the time the wire would, at the line's baud
    /// rate: every character 11 bit times, 3.5 characters of silence between frames (1.75 ms
    /// above 19200 baud), a request counted from its first byte (and not before the line was
    /// free). A pty ignores the baud rate; with this, a pty pair behaves like the line.
    public init(endpoint: Endpoint, units: [Int: SimulatedUnit], scripts: [ScriptedChange] = [], latency: Duration = .zero,
                wireTiming: Bool = false,
                onRequest: SimulatedRequestObserver? = nil,
                onWrite: @escaping @Sendable (SimulatedWrite) -> Void = { _ in }) throws(ModbusError) {
        guard !units.isEmpty else { throw .invalidArgument("the simulator needs at least one unit") }
        self.endpoint = endpoint
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw .other(function: "pipe", errno: errno, detail: "cannot create a pipe") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        self.wake = (fds[0], fds[1])
        self.shared = ConditionLock(Shared(units: units))

        let server: Server
        do throws(ModbusError) {
            server = try Server.open(endpoint, units: units)
        } catch {
            close(fds[0]); close(fds[1])
            throw error
        }
        self.boundPort = server.boundPort
        let shared = self.shared
        let wakeRead = fds[0]
        // The Server is created here and handed to the thread, which becomes its only user.
        let handoff = SendableHandoff(server)
        startThread(name: "modbus-sim") {
            let server = handoff.take()
            server.latencyMicroseconds = ModbusSimulator.microseconds(latency)
            if wireTiming, case .rtu(let line) = endpoint { server.wire = WireTiming(baud: line.baud) }
            server.onRequest = onRequest
            server.run(wakeFD: wakeRead, shared: shared, scripts: scripts, onWrite: onWrite)
        }
    }

    deinit {
        stop()
        close(wake.write)
    }

    /// Sets a value from outside (takes effect on the simulator thread within one loop turn).
    public func set(unit: Int, kind: RegisterKind, address: Int, value: UInt16) {
        shared.withLock { $0.pendingSets.append((unit, kind, address, value)) }
        var b: UInt8 = 1
        _ = write(wake.write, &b, 1)
    }

    /// Changes the delay before every answer from now on (a device that becomes slow, or an
    /// answer that is lost to the client's timeout).
    public func setLatency(_ latency: Duration) {
        shared.withLock { $0.pendingLatencyMicroseconds = Self.microseconds(latency) }
        var b: UInt8 = 1
        _ = write(wake.write, &b, 1)
    }

    /// Puts a noise byte on the line ahead of each of the next `answers` RTU answers (a garbled
    /// frame, as interference on RS-485 gives). RTU line and RTU over TCP only.
    public func addNoise(answers: Int) {
        shared.withLock { $0.pendingNoise += answers }
        var b: UInt8 = 1
        _ = write(wake.write, &b, 1)
    }

    static func microseconds(_ d: Duration) -> UInt32 {
        UInt32(clamping: max(0, d.nanoseconds / 1000))
    }

    /// Stops serving and closes every connection. Returns once the thread has finished.
    public func stop() {
        let already = shared.withLockSignalling { s -> Bool in
            defer { s.stopped = true }
            return s.stopped
        }
        if !already {
            var b: UInt8 = 0
            _ = write(wake.write, &b, 1)
        }
        _ = shared.wait { $0.finished ? true : nil }
    }

    // MARK: - Server (simulator thread only)

    /// Moves a non-Sendable value to another thread exactly once.
    /// `@unchecked Sendable`: the value is written once before the thread starts and read once by
    /// that thread; no two threads use it at the same time.
    private final class SendableHandoff<T>: @unchecked Sendable {
        private var value: T?
        init(_ v: T) { value = v }
        func take() -> T { defer { value = nil }; return value! }
    }

    private final class Server {
        enum Mode { case tcp, rtuLine, rtuOverTCP }
        /// Answers through libmodbus (`modbus_reply`): a TCP context, or an RTU one whose socket is
        /// set to the line or the client before each answer.
        let ctx: OpaquePointer
        /// Accepts connections for `.rtuOverTCP` (a TCP context; `ctx` is an RTU one).
        let acceptCtx: OpaquePointer?
        let mode: Mode
        var isTCP: Bool { mode == .tcp }
        let listenFD: Int32
        let boundPort: Int?
        var mappings: [Int: UnsafeMutablePointer<modbus_mapping_t>] = [:]
        var sizes: [Int: SimulatedUnit] = [:]
        var clients: [Int32] = []
        /// RTU bytes received and not yet a whole frame, per connection (or the line), and when
        /// the last came (a partial frame older than 100 ms is noise and dropped).
        var pending: [Int32: (bytes: [UInt8], at: ContinuousClock.Instant)] = [:]
        var latencyMicroseconds: UInt32 = 0
        var noisyAnswers = 0
        var onRequest: SimulatedRequestObserver?
        /// Wire timing (RTU line), and when the line is free again.
        var wire: WireTiming?
        var lineFreeAt = ContinuousClock.now
        /// When the first byte of the frame being received came.
        var frameStartedAt: [Int32: ContinuousClock.Instant] = [:]
        /// Answers are built by libmodbus into one end of this pair and read from the other, so
        /// that they can be sent as the wire would (paced) or with a noise byte ahead.
        lazy var replyPair: (Int32, Int32) = {
            var sv: [Int32] = [-1, -1]
            _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv)
            return (sv[0], sv[1])
        }()

        init(ctx: OpaquePointer, acceptCtx: OpaquePointer? = nil, mode: Mode, listenFD: Int32, boundPort: Int?) {
            self.ctx = ctx
            self.acceptCtx = acceptCtx
            self.mode = mode
            self.listenFD = listenFD
            self.boundPort = boundPort
        }

        deinit {
            for c in clients { close(c) }
            if mode != .tcp, replyPair.0 >= 0 { close(replyPair.0); close(replyPair.1) }
            switch mode {
            case .tcp: close(listenFD)
            case .rtuLine: modbus_close(ctx)
            case .rtuOverTCP: close(listenFD)
            }
            modbus_free(ctx)
            if let acceptCtx { modbus_free(acceptCtx) }
            for m in mappings.values { modbus_mapping_free(m) }
        }

        static func listen(host: String, port: Int) throws(ModbusError) -> (OpaquePointer, Int32, Int?) {
            guard let ctx = modbus_new_tcp_pi(host, String(port)) else {
                throw .invalidArgument("cannot create a TCP context for \(host):\(port)")
            }
            let fd = modbus_tcp_pi_listen(ctx, 16)
            if fd == -1 {
                let e = cmodbus_errno()
                modbus_free(ctx)
                throw .connectFailed(target: "listen \(host):\(port)", errno: e, detail: String(cString: modbus_strerror(e)))
            }
            var addr = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let bound: Int? = withUnsafeMutablePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp -> Int? in
                    guard getsockname(fd, sp, &len) == 0 else { return nil }
                    if Int32(sp.pointee.sa_family) == AF_INET6 {
                        return sp.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
                    }
                    return sp.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
                }
            }
            return (ctx, fd, bound)
        }

        static func open(_ endpoint: Endpoint, units: [Int: SimulatedUnit]) throws(ModbusError) -> Server {
            let server: Server
            switch endpoint {
            case .tcp(let host, let port):
                let (ctx, fd, bound) = try listen(host: host, port: port)
                server = Server(ctx: ctx, mode: .tcp, listenFD: fd, boundPort: bound)
            case .rtuOverTCP(let host, let port):
                let (tcp, fd, bound) = try listen(host: host, port: port)
                // Never connected: it only frames answers, written to the client's socket.
                guard let rtu = modbus_new_rtu("/dev/null", 9600, CChar(UInt8(ascii: "N")), 8, 1) else {
                    close(fd); modbus_free(tcp)
                    throw .invalidArgument("cannot create an RTU context")
                }
                server = Server(ctx: rtu, acceptCtx: tcp, mode: .rtuOverTCP, listenFD: fd, boundPort: bound)
            case .rtu(let s):
                guard let ctx = modbus_new_rtu(s.path, Int32(s.baud), CChar(truncatingIfNeeded: UInt8(ascii: s.parity.rawValue.unicodeScalars.first!)),
                                               Int32(s.dataBits), Int32(s.stopBits)) else {
                    throw .invalidArgument("cannot create an RTU context for \(s.path)")
                }
                if modbus_connect(ctx) == -1 {
                    let e = cmodbus_errno()
                    modbus_free(ctx)
                    throw .connectFailed(target: s.path, errno: e, detail: String(cString: modbus_strerror(e)))
                }
                server = Server(ctx: ctx, mode: .rtuLine, listenFD: modbus_get_socket(ctx), boundPort: nil)
            }
            for (id, unit) in units {
                guard let m = modbus_mapping_new(Int32(unit.coilCount), Int32(unit.discreteCount),
                                                 Int32(unit.holdingCount), Int32(unit.inputCount)) else {
                    throw .invalidArgument("cannot allocate the tables of unit \(id)")
                }
                for (a, v) in unit.coils where a < unit.coilCount { m.pointee.tab_bits[a] = v ? 1 : 0 }
                for (a, v) in unit.discrete where a < unit.discreteCount { m.pointee.tab_input_bits[a] = v ? 1 : 0 }
                for (a, v) in unit.holding where a < unit.holdingCount { m.pointee.tab_registers[a] = v }
                for (a, v) in unit.input where a < unit.inputCount { m.pointee.tab_input_registers[a] = v }
                server.mappings[id] = m
                server.sizes[id] = unit
            }
            return server
        }

        func set(unit: Int, kind: RegisterKind, address: Int, value: UInt16) {
            guard let m = mappings[unit], let size = sizes[unit], address >= 0, address < size.size(kind) else { return }
            switch kind {
            case .coil: m.pointee.tab_bits[address] = value != 0 ? 1 : 0
            case .discrete: m.pointee.tab_input_bits[address] = value != 0 ? 1 : 0
            case .holding: m.pointee.tab_registers[address] = value
            case .input: m.pointee.tab_input_registers[address] = value
            }
        }

        func get(unit: Int, kind: RegisterKind, address: Int) -> UInt16? {
            guard let m = mappings[unit], let size = sizes[unit], address >= 0, address < size.size(kind) else { return nil }
            switch kind {
            case .coil: return UInt16(m.pointee.tab_bits[address])
            case .discrete: return UInt16(m.pointee.tab_input_bits[address])
            case .holding: return m.pointee.tab_registers[address]
            case .input: return m.pointee.tab_input_registers[address]
            }
        }

        func run(wakeFD: Int32, shared: ConditionLock<Shared>, scripts: [ScriptedChange],
                 onWrite: @Sendable (SimulatedWrite) -> Void) {
            defer {
                close(wakeFD)
                shared.withLockSignalling { $0.finished = true }
            }
            let clock = ContinuousClock()
            var nextRun = scripts.map { clock.now + $0.period }
            var driftUp = scripts.map { _ in true }
            let query = UnsafeMutablePointer<UInt8>.allocate(capacity: Int(MODBUS_TCP_MAX_ADU_LENGTH))
            defer { query.deallocate() }
            while true {
                var timeoutMs: Int32 = -1
                if let soonest = nextRun.min() {
                    let d = soonest - clock.now
                    timeoutMs = Int32(max(0, min(60_000, d.nanoseconds / 1_000_000)))
                }
                var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)]
                fds += clients.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                let n = poll(&fds, nfds_t(fds.count), timeoutMs)
                if n == -1 && errno != EINTR { break }

                // Outside requests: stop, or set a value.
                if fds[0].revents != 0 {
                    var buf = [UInt8](repeating: 0, count: 64)
                    while read(wakeFD, &buf, 64) > 0 {}
                    let (stop, sets, latency, noise) = shared.withLock { s -> (Bool, [(unit: Int, kind: RegisterKind, address: Int, value: UInt16)], UInt32?, Int) in
                        defer { s.pendingSets.removeAll(); s.pendingLatencyMicroseconds = nil; s.pendingNoise = 0 }
                        return (s.stopped, s.pendingSets, s.pendingLatencyMicroseconds, s.pendingNoise)
                    }
                    noisyAnswers += noise
                    if stop { return }
                    if let latency { latencyMicroseconds = latency }
                    for s in sets { set(unit: s.unit, kind: s.kind, address: s.address, value: s.value) }
                }
                // Scripted changes that are due.
                let now = clock.now
                for i in scripts.indices where nextRun[i] <= now {
                    let sc = scripts[i]
                    nextRun[i] = nextRun[i] + sc.period
                    if nextRun[i] < now { nextRun[i] = now + sc.period }   // no burst after a stall
                    guard let cur = get(unit: sc.unit, kind: sc.kind, address: sc.address) else { continue }
                    switch sc.behaviour {
                    case .counter:
                        set(unit: sc.unit, kind: sc.kind, address: sc.address, value: sc.kind.isBit ? (cur == 0 ? 1 : 0) : cur &+ 1)
                    case .drift(let lo, let hi, let step):
                        var v = Int(Int16(bitPattern: cur))
                        if lo >= 0 { v = Int(cur) }
                        v += driftUp[i] ? step : -step
                        if v >= hi { v = hi; driftUp[i] = false }
                        if v <= lo { v = lo; driftUp[i] = true }
                        set(unit: sc.unit, kind: sc.kind, address: sc.address, value: UInt16(truncatingIfNeeded: v))
                    }
                }
                guard n > 0 else { continue }

                switch mode {
                case .tcp, .rtuOverTCP:
                    if fds[1].revents & Int16(POLLIN) != 0 {
                        var lfd = listenFD
                        let c = modbus_tcp_pi_accept(acceptCtx ?? ctx, &lfd)
                        if c >= 0 { clients.append(c) }
                    }
                    var closed: Set<Int32> = []
                    for pfd in fds.dropFirst(2) where pfd.revents != 0 {
                        if mode == .tcp {
                            modbus_set_socket(ctx, pfd.fd)
                            if !serveOne(query: query, onWrite: onWrite) { closed.insert(pfd.fd) }
                        } else if !serveRTU(fd: pfd.fd, onWrite: onWrite) {
                            closed.insert(pfd.fd)
                        }
                    }
                    for c in closed { close(c); pending[c] = nil }
                    clients.removeAll { closed.contains($0) }
                case .rtuLine:
                    guard fds[1].revents != 0 else { continue }
                    if fds[1].revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 && fds[1].revents & Int16(POLLIN) == 0 {
                        // Other end of the line gone (pty closed): wait for it to come back without spinning.
                        _ = poll(&fds, 1, 50)
                        continue
                    }
                    _ = serveRTU(fd: listenFD, onWrite: onWrite)
                }
            }
        }

        /// Reads what `fd` has and answers every whole RTU frame in it. A frame with a bad CRC
        /// drops what was buffered (the line resynchronises on the next silence); a frame for a
        /// unit not served is not answered, as on a real line. False when the connection closed.
        private func serveRTU(fd: Int32, onWrite: @Sendable (SimulatedWrite) -> Void) -> Bool {
            var chunk = [UInt8](repeating: 0, count: 512)
            let n = read(fd, &chunk, chunk.count)
            if n == 0 { return mode == .rtuLine }
            if n < 0 { return errno == EAGAIN || errno == EINTR || mode == .rtuLine }
            let now = ContinuousClock.now
            var buffer = pending[fd].map { now - $0.at > .milliseconds(100) ? [] : $0.bytes } ?? []
            if buffer.isEmpty { frameStartedAt[fd] = now }
            buffer += chunk[0..<n]
            defer { pending[fd] = buffer.isEmpty ? nil : (buffer, now) }
            while !buffer.isEmpty {
                let length: Int
                switch RTUFrame.requestLength(buffer) {
                case .needAtLeast(let need) where buffer.count < need: return true
                case .complete(let whole) where buffer.count < whole: return true
                case .complete(let whole): length = whole
                default: buffer.removeAll(); return true
                }
                var frame = Array(buffer.prefix(length))
                buffer.removeFirst(length)
                // On the wire, this request took its characters' time from its first byte (or from
                // when the line was free), then the silence that ends a frame.
                let requestEnd = wire.map { w in max(frameStartedAt[fd] ?? now, lineFreeAt) + w.time(characters: frame.count) }
                frameStartedAt[fd] = now
                guard RTUFrame.checks(frame) else { buffer.removeAll(); return true }
                let unit = Int(frame[0])
                guard let mapping = mappings[unit], let size = sizes[unit] else {
                    if let w = wire, let requestEnd { lineFreeAt = requestEnd + w.silence }
                    continue
                }
                onRequest?(unit, Int(frame[1]), monotonicMicroseconds())
                let delay = size.latency.map { ModbusSimulator.microseconds($0) } ?? latencyMicroseconds
                if delay > 0 { usleep(delay) }
                var answer: [UInt8]
                var write: SimulatedWrite?
                if let pdu = specialAnswer(unit: unit, pdu: Array(frame[1..<(frame.count - 2)])) {
                    answer = RTUFrame.seal(unit: unit, pdu: pdu)
                } else {
                    answer = frame.withUnsafeMutableBufferPointer { p in
                        write = describeWrite(query: p.baseAddress!, header: 1, unit: unit)
                        return reply(to: p, mapping: mapping)
                    }
                }
                if noisyAnswers > 0 {
                    noisyAnswers -= 1
                    answer.insert(0xFF, at: 0)
                }
                if let w = wire, let requestEnd {
                    let start = requestEnd + w.silence
                    lineFreeAt = w.transmit(answer, to: fd, from: start) + w.silence
                } else {
                    writeAll(fd, answer)
                }
                if var w = write {
                    w.values = (0..<w.values.count).map { get(unit: unit, kind: w.kind, address: w.address + $0) ?? 0 }
                    // With wire timing, stamped when the answer was complete on the wire.
                    if wire != nil { w.monotonicMicroseconds = monotonicMicroseconds() }
                    onWrite(w)
                }
            }
            return true
        }

        /// libmodbus's answer to an RTU request, read back from the reply pair.
        private func reply(to frame: UnsafeMutableBufferPointer<UInt8>, mapping: UnsafeMutablePointer<modbus_mapping_t>) -> [UInt8] {
            let (into, from) = replyPair
            modbus_set_socket(ctx, into)
            let n = modbus_reply(ctx, frame.baseAddress!, Int32(frame.count), mapping)
            guard n > 0 else { return [] }
            var out = [UInt8](repeating: 0, count: Int(n))
            var got = 0
            while got < Int(n) {
                let r = out[got...].withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
                if r <= 0 { break }
                got += r
            }
            return Array(out.prefix(got))
        }

        /// Answers libmodbus does not give: FC 43/14 from the unit's identification, FC 17 with
        /// the unit id and the product, and the exceptions of an exceptions-only unit.
        private func specialAnswer(unit: Int, pdu: [UInt8]) -> [UInt8]? {
            guard let fc = pdu.first, let size = sizes[unit] else { return nil }
            if size.exceptionsOnly { return [fc | 0x80, 2] }
            switch fc {
            case 17:
                let text = Array((size.identification?.product ?? "gateway-simulate").utf8.prefix(200))
                return [17, UInt8(2 + text.count), UInt8(truncatingIfNeeded: unit), 0xFF] + text
            case 43:
                guard pdu.count >= 4, pdu[1] == 14 else { return [0xAB, 1] }
                guard let id = size.identification else { return [0xAB, 1] }
                guard (1...4).contains(pdu[2]) else { return [0xAB, 3] }
                let objects = [id.vendor, id.product, id.revision].map { Array($0.utf8.prefix(80)) }
                let first = Int(pdu[3]) < objects.count ? Int(pdu[3]) : 0
                var out: [UInt8] = [43, 14, pdu[2], 0x01, 0, 0, UInt8(objects.count - first)]
                for i in first..<objects.count { out += [UInt8(i), UInt8(objects[i].count)] + objects[i] }
                return out
            default:
                return nil
            }
        }

        private func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
            var off = 0
            var tries = 0
            while off < bytes.count && tries < 100 {
                let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if n > 0 { off += n; continue }
                tries += 1
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 10)  // until the socket takes more (bounded: 100 tries)
            }
        }

        /// Receives and answers one request. Returns false when the connection should be closed.
        private func serveOne(query: UnsafeMutablePointer<UInt8>, onWrite: @Sendable (SimulatedWrite) -> Void) -> Bool {
            var rc = modbus_receive(ctx, query)
            if rc == -1 { return false }
            guard rc > 0 else { return true }
            // libmodbus reads a request of a function code it does not know (FC 43) only up to the
            // function code: read the rest that the MBAP length announces, so it is not taken for
            // the start of the next request.
            let announced = 6 + (Int(query[4]) << 8 | Int(query[5]))
            if announced > Int(rc) && announced <= Int(MODBUS_TCP_MAX_ADU_LENGTH) {
                let fd = modbus_get_socket(ctx)
                var got = Int(rc)
                var waits = 0
                while got < announced && waits < 10 {
                    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&p, 1, 100) > 0 else { waits += 1; continue }
                    let n = read(fd, query + got, announced - got)
                    if n <= 0 { return false }
                    got += n
                }
                guard got == announced else { return false }
                rc = Int32(got)
            }
            let header = Int(modbus_get_header_length(ctx))
            let unit = Int(query[header - 1])
            onRequest?(unit, Int(query[header]), monotonicMicroseconds())
            let delay = sizes[unit]?.latency.map { ModbusSimulator.microseconds($0) } ?? latencyMicroseconds
            if delay > 0 { usleep(delay) }
            guard let mapping = mappings[unit] else {
                modbus_reply_exception(ctx, query, UInt32(MODBUS_EXCEPTION_GATEWAY_TARGET))
                return true
            }
            if let pdu = specialAnswer(unit: unit, pdu: Array(UnsafeBufferPointer(start: query + header, count: Int(rc) - header))) {
                let length = pdu.count + 1
                writeAll(modbus_get_socket(ctx), [query[0], query[1], 0, 0, UInt8(length >> 8), UInt8(length & 0xFF), UInt8(unit)] + pdu)
                return true
            }
            let write = describeWrite(query: query, header: header, unit: unit)
            modbus_reply(ctx, query, rc, mapping)
            if var w = write {
                w.values = (0..<w.values.count).map { get(unit: unit, kind: w.kind, address: w.address + $0) ?? 0 }
                onWrite(w)
            }
            return true
        }

        /// Reads a write request's target from the frame (nil for reads or out-of-range writes).
        private func describeWrite(query: UnsafeMutablePointer<UInt8>, header: Int, unit: Int) -> SimulatedWrite? {
            let fc = Int(query[header])
            func u16(_ o: Int) -> Int { Int(query[header + o]) << 8 | Int(query[header + o + 1]) }
            let kind: RegisterKind, address: Int, count: Int
            switch fc {
            case 5: (kind, address, count) = (.coil, u16(1), 1)
            case 6: (kind, address, count) = (.holding, u16(1), 1)
            case 15: (kind, address, count) = (.coil, u16(1), u16(3))
            case 16: (kind, address, count) = (.holding, u16(1), u16(3))
            case 23: (kind, address, count) = (.holding, u16(5), u16(7))
            default: return nil
            }
            guard let size = sizes[unit] ?? sizes.values.first, count > 0, address + count <= size.size(kind) else { return nil }
            var rt = timespec(), mt = timespec()
            clock_gettime(CLOCK_REALTIME, &rt)
            clock_gettime(CLOCK_MONOTONIC, &mt)
            return SimulatedWrite(unit: unit, function: fc, kind: kind, address: address,
                                  values: [UInt16](repeating: 0, count: count),
                                  unixMilliseconds: Int64(rt.tv_sec) * 1000 + Int64(rt.tv_nsec) / 1_000_000,
                                  monotonicMilliseconds: Int64(mt.tv_sec) * 1000 + Int64(mt.tv_nsec) / 1_000_000,
                                  monotonicMicroseconds: Int64(mt.tv_sec) * 1_000_000 + Int64(mt.tv_nsec) / 1000)
        }
    }
}
