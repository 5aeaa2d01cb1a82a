import Synchronization
import TestSupport
@testable import Modbus

#if canImport(Glibc)
import Glibc
#endif

/// A Modbus device on TCP the test scripts: each request (counted from 1 over all connections) is
/// answered with what `answer` returns for it, or not at all (nil). Modbus TCP (MBAP) framing, or
/// RTU frames over TCP (`rtu`: a serial device server). One connection at a time, on a thread of
/// its own; blocking I/O never runs on Swift's cooperative pool.
final class ScriptedModbusPeer: Sendable {
    let port: Int
    private let state = Locked<(connections: Int, closes: Int, requests: [[UInt8]], stopped: Bool)>((0, 0, [], false))
    private let done = ConditionLock(false)
    /// Pushed at every request and every close, for the waits below.
    private let changed = Signal()

    var connections: Int { state.withLock { $0.connections } }
    /// Connections this device closed by itself (`closeAfter`).
    var closes: Int { state.withLock { $0.closes } }
    var requests: [[UInt8]] { state.withLock { $0.requests } }

    /// `closeAfter`: the requests after whose answer the device closes the connection (as a PLC
    /// does with a connection left idle).
    init(rtu: Bool = false, closeAfter: Set<Int> = [], answer: @escaping @Sendable (_ request: [UInt8], _ index: Int) -> [UInt8]?) throws {
        let listening = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listening, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(listening, 4) == 0 else { Glibc.close(listening); throw FixtureError("cannot listen: errno \(errno)") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listening, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let state = self.state, done = self.done, changed = self.changed
        startThread(name: "scripted-peer") {
            var conn: Int32 = -1
            var buffer: [UInt8] = []
            let end = ContinuousClock.now + .seconds(60)
            while !state.withLock({ $0.stopped }), ContinuousClock.now < end {
                var fds = [pollfd(fd: listening, events: Int16(POLLIN), revents: 0), pollfd(fd: conn, events: Int16(POLLIN), revents: 0)]
                guard poll(&fds, 2, 20) > 0 else { continue }
                if fds[0].revents != 0 {
                    let c = accept(listening, nil, nil)
                    if c >= 0 {
                        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                        if conn >= 0 { Glibc.close(conn) }
                        conn = c
                        buffer = []
                        state.withLock { $0.connections += 1 }
                    }
                }
                guard conn >= 0, fds[1].revents != 0 else { continue }
                var chunk = [UInt8](repeating: 0, count: 512)
                let n = recv(conn, &chunk, chunk.count, 0)
                guard n > 0 else { Glibc.close(conn); conn = -1; continue }
                buffer += chunk[0..<n]
                while let whole = rtu ? Self.rtuRequestLength(buffer) : Self.mbapRequestLength(buffer), buffer.count >= whole {
                    let request = Array(buffer[0..<whole])
                    buffer.removeFirst(whole)
                    let index = state.withLock { s -> Int in s.requests.append(request); return s.requests.count }
                    changed.push()
                    if let reply = answer(request, index) {
                        _ = reply.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    }
                    if closeAfter.contains(index) {
                        Glibc.close(conn)
                        conn = -1
                        buffer = []
                        state.withLock { $0.closes += 1 }
                        changed.push()
                        break
                    }
                }
            }
            if conn >= 0 { Glibc.close(conn) }
            Glibc.close(listening)
            done.withLockSignalling { $0 = true }
        }
    }

    func close() {
        state.withLock { $0.stopped = true }
        _ = done.wait(timeout: .seconds(5)) { $0 ? true : nil }
    }

    /// Waits (bounded) until `count` requests have come.
    func waitForRequests(_ count: Int, timeout: Duration = .seconds(10)) async throws {
        try await waitUntil(timeout, "\(count) requests") { $0.requests.count >= count }
    }

    /// Waits (bounded) until the device has closed `count` connections by itself.
    func waitForCloses(_ count: Int, timeout: Duration = .seconds(10)) async throws {
        try await waitUntil(timeout, "\(count) closes") { $0.closes >= count }
    }

    private func waitUntil(_ timeout: Duration, _ what: String,
                           _ condition: ((connections: Int, closes: Int, requests: [[UInt8]], stopped: Bool)) -> Bool) async throws {
        let end = ContinuousClock.now + timeout
        while true {
            let generation = changed.generation
            if state.withLock({ condition($0) }) { return }
            guard ContinuousClock.now < end else { throw FixtureError("no \(what) within \(timeout)") }
            await changed.wait(after: generation, until: end)
        }
    }

    /// A whole MBAP request's length, once its header has come.
    static func mbapRequestLength(_ b: [UInt8]) -> Int? {
        b.count >= 6 ? 6 + (Int(b[4]) << 8 | Int(b[5])) : nil
    }

    /// A whole RTU request's length (unit, function, data, CRC), once its first bytes have come:
    /// the functions the gateway sends.
    static func rtuRequestLength(_ b: [UInt8]) -> Int? {
        guard b.count >= 2 else { return nil }
        switch b[1] {
        case 15, 16: return b.count >= 7 ? 9 + Int(b[6]) : nil
        case 23: return b.count >= 11 ? 13 + Int(b[10]) : nil
        default: return 8
        }
    }

    /// The right answer to an RTU `request`: an echo for a single write, zeros for a register read.
    static func rtuAnswer(to request: [UInt8]) -> [UInt8] {
        let fc = request[1]
        let count = Int(request[4]) << 8 | Int(request[5])
        let pdu: [UInt8] = fc == 3 || fc == 4 ? [fc, UInt8(count * 2)] + [UInt8](repeating: 0, count: count * 2) : Array(request[1..<6])
        return RTUFrame.seal(unit: Int(request[0]), pdu: pdu)
    }

    /// The right answer to `request` (an echo for a write, zeros or `registers` for a read), or
    /// `pdu`, under `transaction` (the request's unless given).
    static func answer(to request: [UInt8], transaction: UInt16? = nil, pdu: [UInt8]? = nil, registers: [UInt16]? = nil) -> [UInt8] {
        let fc = request[7]
        let count = Int(request[10]) << 8 | Int(request[11])
        let body: [UInt8]
        if let pdu {
            body = pdu
        } else {
            switch fc {
            case 1, 2: body = [fc, UInt8((count + 7) / 8)] + [UInt8](repeating: 0, count: (count + 7) / 8)
            case 3, 4:
                let regs = registers ?? [UInt16](repeating: 0, count: count)
                body = [fc, UInt8(regs.count * 2)] + regs.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
            case 5, 6: body = Array(request[7..<12])
            default: body = Array(request[7..<12])   // 15, 16: function, address, quantity
            }
        }
        let tid = transaction.map { [UInt8($0 >> 8), UInt8($0 & 0xFF)] } ?? Array(request[0..<2])
        return tid + [0, 0, UInt8((body.count + 1) >> 8), UInt8((body.count + 1) & 0xFF), request[6]] + body
    }
}
