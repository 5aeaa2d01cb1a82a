import LineSettings
import Modbus
import Serial

#if canImport(Glibc)
import Glibc
#endif

/// What came back for one request.
public enum ProbeAnswer: Equatable, Sendable {
    /// A well-formed answer from the unit asked: its PDU (function code first; an exception has
    /// the function code's high bit set).
    case pdu([UInt8])
    /// Nothing within the timeout.
    case silence
    /// Bytes that are not a valid answer (wrong CRC, another unit, a wrong baud rate).
    case garbled
    /// The link itself failed (connection refused, port vanished).
    case failed(String)

    /// A value or an exception: someone is there.
    public var isAnswer: Bool { if case .pdu = self { true } else { false } }
}

/// A line the scan asks questions on, one at a time. Blocking; one thread at a time.
public protocol ProbeLink: AnyObject {
    /// Sends `pdu` to `unit` and waits up to `timeout` for the answer.
    func exchange(unit: Int, pdu: [UInt8], timeout: Duration) -> ProbeAnswer
    /// Changes the line's speed and parity (serial lines only; others ignore it).
    func setLine(baud: Int, parity: Parity) throws(ScanError)
}

public struct ScanError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Where a scan runs: a serial port (RTU), a Modbus TCP device or gateway, or a serial device
/// server carrying RTU frames over TCP.
public enum ScanTarget: Sendable, Equatable, CustomStringConvertible {
    case rtu(path: String, dataBits: Int, stopBits: Int)
    case tcp(host: String, port: Int)
    case rtuOverTCP(host: String, port: Int)

    public var isSerial: Bool { if case .rtu = self { true } else { false } }

    public var description: String {
        switch self {
        case .rtu(let path, _, _): path
        case .tcp(let h, let p): "tcp \(h):\(p)"
        case .rtuOverTCP(let h, let p): "rtu-tcp \(h):\(p)"
        }
    }
}

/// The real link: a tty or a TCP socket, with Modbus TCP (MBAP) or RTU framing. Our own framing,
/// not libmodbus's: libmodbus cannot read FC 43 answers, nor RTU frames over TCP.
public final class WireLink: ProbeLink {
    public let target: ScanTarget
    private var fd: Int32 = -1
    private var transaction: UInt16 = 0
    private var line: (baud: Int, parity: Parity) = (9600, .none)
    /// `.rtuOverTCP`: the bus's own RTU-over-TCP framing (connects at the first probe).
    private var stream: RTUOverTCPLink?
    private let probeTimeout: Duration

    /// `probeTimeout`: how long an answer may take (the RTU-over-TCP link fixes it once).
    public init(target: ScanTarget, probeTimeout: Duration = .milliseconds(200)) {
        self.target = target
        self.probeTimeout = probeTimeout
    }

    deinit { closeLink() }

    public func setLine(baud: Int, parity: Parity) throws(ScanError) {
        line = (baud, parity)
        guard target.isSerial else { return }
        closeLink()
        try open()
    }

    /// Opens the line now (so a port another process holds is reported before the scan starts).
    public func open() throws(ScanError) {
        guard fd < 0, stream == nil else { return }
        switch target {
        case .rtu(let path, let dataBits, let stopBits):
            // Root passes the holder's exclusive flag (TIOCEXCL) and would garble its frames:
            // ask the line whether someone holds it first.
            if Self.heldExclusively(path) { throw Self.busy(path) }
            do {
                fd = try SerialPort.open(SerialSettings(path: path, baud: line.baud, parity: line.parity, dataBits: dataBits, stopBits: stopBits))
            } catch let e {
                if case .open(_, let code) = e, code == EBUSY { throw Self.busy(path) }
                throw ScanError("\(e)")
            }
        case .tcp(let host, let port):
            fd = try Self.connect(host: host, port: port, timeout: .seconds(3))
        case .rtuOverTCP(let host, let port):
            if stream == nil {
                stream = RTUOverTCPLink(host: host, port: port, responseTimeout: probeTimeout, byteTimeout: .milliseconds(50))
            }
        }
    }

    static func busy(_ path: String) -> ScanError {
        ScanError("\(path) is in use by another process (a running gateway holds its lines): stop it, or scan another line")
    }

    /// Whether another open file holds the tty exclusively (TIOCGEXCL).
    static func heldExclusively(_ path: String) -> Bool {
        let fd = Glibc.open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 { return errno == EBUSY }
        defer { Glibc.close(fd) }
        var flag: Int32 = 0
        return ioctl(fd, 0x8004_5440 /* TIOCGEXCL */, &flag) == 0 && flag != 0
    }

    private func closeLink() {
        stream?.close()
        // Give the exclusive flag back: a pty keeps it after the close while its master lives.
        if fd >= 0 && target.isSerial { _ = ioctl(fd, UInt(TIOCNXCL)) }
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    public func exchange(unit: Int, pdu: [UInt8], timeout: Duration) -> ProbeAnswer {
        do throws(ScanError) {
            try open()
        } catch {
            return .failed(error.description)
        }
        let deadline = ContinuousClock.now + timeout
        switch target {
        case .tcp:
            return exchangeMBAP(unit: unit, pdu: pdu, deadline: deadline)
        case .rtu:
            return exchangeRTU(unit: unit, pdu: pdu, deadline: deadline)
        case .rtuOverTCP:
            guard let stream else { return .failed("\(target): not open") }
            do {
                let answer = try stream.exchange(unit: unit, pdu: pdu, name: "probe")
                return answer.first.map { Self.answers($0, pdu[0]) } == true ? .pdu(answer) : .garbled
            } catch {
                switch error {
                case .timeout: return .silence
                case .badCRC, .badResponse: return .garbled
                default: return .failed("\(error)")
                }
            }
        }
    }

    // MARK: RTU

    private func exchangeRTU(unit: Int, pdu: [UInt8], deadline: ContinuousClock.Instant) -> ProbeAnswer {
        discardPending()
        guard writeAll(RTUFrame.seal(unit: unit, pdu: pdu)) else { return lost() }
        var frame: [UInt8] = []
        while true {
            switch RTUFrame.responseLength(frame) {
            case .complete(let n) where frame.count >= n:
                let whole = Array(frame.prefix(n))
                guard RTUFrame.checks(whole), Int(whole[0]) == unit, Self.answers(whole[1], pdu[0]) else {
                    settle()
                    return .garbled
                }
                return .pdu(Array(whole[1..<(n - 2)]))
            case .unknown:
                settle()
                return .garbled
            default:
                break
            }
            switch readSome(into: &frame, deadline: deadline) {
            case .ok: continue
            case .timeout:
                if !frame.isEmpty { settle() }
                return frame.isEmpty ? .silence : .garbled
            case .closed: return lost()
            }
        }
    }

    /// After a garbled or late frame: wait for the line to go quiet, then drop what came.
    private func settle() {
        var scratch: [UInt8] = []
        while case .ok = readSome(into: &scratch, deadline: .now + .milliseconds(20)) {
            if scratch.count > 4096 { break }
            scratch.removeAll(keepingCapacity: true)
        }
    }

    private func discardPending() {
        _ = tcflush(fd, TCIFLUSH)
    }

    // MARK: Modbus TCP

    private func exchangeMBAP(unit: Int, pdu: [UInt8], deadline: ContinuousClock.Instant) -> ProbeAnswer {
        transaction &+= 1
        let tid = transaction
        let length = pdu.count + 1
        let request = [UInt8(tid >> 8), UInt8(tid & 0xFF), 0, 0, UInt8(length >> 8), UInt8(length & 0xFF), UInt8(truncatingIfNeeded: unit)] + pdu
        guard writeAll(request) else { return lost() }
        var buffer: [UInt8] = []
        while true {
            if buffer.count >= 7 {
                let len = Int(buffer[4]) << 8 | Int(buffer[5])
                guard buffer[2] == 0, buffer[3] == 0, (2...254).contains(len) else {
                    closeLink()  // out of step with the stream: start again on a new connection
                    return .garbled
                }
                if buffer.count >= 6 + len {
                    let answerTID = UInt16(buffer[0]) << 8 | UInt16(buffer[1])
                    let frame = Array(buffer[0..<(6 + len)])
                    buffer.removeFirst(6 + len)
                    if answerTID != tid { continue }  // a late answer to an earlier probe
                    guard Int(frame[6]) == unit, Self.answers(frame[7], pdu[0]) else { return .garbled }
                    return .pdu(Array(frame[7...]))
                }
            }
            switch readSome(into: &buffer, deadline: deadline) {
            case .ok: continue
            case .timeout:
                // A late answer would arrive on this connection: the next probe gets a new one.
                closeLink()
                return buffer.isEmpty ? .silence : .garbled
            case .closed: return lost()
            }
        }
    }

    /// The answer's function code fits the request's: the same, or any exception (some devices
    /// answer an internal failure with function 0x80 whatever was asked: still a device).
    static func answers(_ function: UInt8, _ asked: UInt8) -> Bool {
        function == asked || function & 0x80 != 0
    }

    // MARK: bytes

    private enum ReadResult { case ok, timeout, closed }

    private func readSome(into buffer: inout [UInt8], deadline: ContinuousClock.Instant) -> ReadResult {
        while true {
            let left = deadline - .now
            let ms = max(0, Int32(clamping: left.nanoseconds / 1_000_000))
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&p, 1, ms)
            if n < 0 { if errno == EINTR { continue }; return .closed }
            if n == 0 { return .timeout }
            var chunk = [UInt8](repeating: 0, count: 512)
            let r = read(fd, &chunk, chunk.count)
            if r > 0 { buffer += chunk[0..<r]; return .ok }
            if r < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            if r < 0 && errno == EIO && target.isSerial {
                // A pty whose other end is closed: nobody is there.
                return .timeout
            }
            return .closed
        }
    }

    private func writeAll(_ bytes: [UInt8]) -> Bool {
        var off = 0
        var spins = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n > 0 { off += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) && spins < 1000 {
                spins += 1
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 100)
                continue
            }
            return false
        }
        return true
    }

    private func lost() -> ProbeAnswer {
        closeLink()
        return .failed("\(target): connection lost")
    }

    private static func connect(host: String, port: Int, timeout: Duration) throws(ScanError) -> Int32 {
        do {
            return try TCPConnection.open(host: host, port: port, timeout: timeout, target: "\(host):\(port)")
        } catch {
            throw ScanError("\(error)")
        }
    }
}
