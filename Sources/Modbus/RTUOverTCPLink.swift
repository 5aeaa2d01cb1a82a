#if canImport(Glibc)
import Glibc
#endif

/// RTU frames over a TCP stream: a serial device server (Moxa NPort, USR-TCP232, Waveshare) in
/// "TCP server / raw" mode, which passes the bytes of its RS-485 line through unchanged.
/// libmodbus cannot frame this (its issue #192); this does, with ``RTUFrame``. Blocking, used
/// only by the bus thread that owns it.
///
/// - The answer's length comes from its function code and byte count; its CRC, unit and
///   function are checked.
/// - No first byte within the response timeout: the connection is closed, so an answer that
///   comes late can never be read as the next request's (the next request reconnects).
/// - A garbled answer (bad CRC, another unit, a wrong length): the stream is drained until the
///   line has been quiet for the byte timeout, and the connection kept.
/// - A connection the server closed while idle is replaced before the next request.
public final class RTUOverTCPLink {
    let host: String
    let port: Int
    let responseTimeout: Duration
    let byteTimeout: Duration
    private var fd: Int32 = -1

    public init(host: String, port: Int, responseTimeout: Duration, byteTimeout: Duration) {
        self.host = host
        self.port = port
        self.responseTimeout = responseTimeout
        self.byteTimeout = byteTimeout
    }

    deinit { close() }

    var isOpen: Bool { fd >= 0 }

    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// One transaction: the request PDU to `unit`, the answer PDU back (exceptions included).
    public func exchange(unit: Int, pdu: [UInt8], name: String) throws(ModbusError) -> [UInt8] {
        if fd < 0 { try connect() }
        drainQuietly(for: .zero)  // anything unasked-for left on the stream
        // The device server closed the idle connection (many do after a while): a new one, so
        // that the request is not sent on a closed descriptor and failed as "outcome unknown".
        if fd < 0 { try connect() }
        let frame = RTUFrame.seal(unit: unit, pdu: pdu)
        try send(frame, name: name)
        var answer: [UInt8] = []
        var deadline = ContinuousClock.now + responseTimeout
        while true {
            switch RTUFrame.responseLength(answer) {
            case .complete(let n) where answer.count >= n:
                do throws(ModbusError) {
                    let pdu = try RTUFrame.open(answer[..<n], unit: unit, function: name)
                    if answer.count > n { drainQuietly(for: byteTimeout) }
                    return pdu
                } catch {
                    drainQuietly(for: byteTimeout)
                    throw error
                }
            case .unknown:
                drainQuietly(for: byteTimeout)
                throw .badResponse(function: name, detail: "answer with function code \(answer.count > 1 ? answer[1] : 0)")
            default:
                break
            }
            let got = try receive(into: &answer, until: deadline, name: name)
            if !got {
                close()  // a late answer must not be read as the next request's
                throw .timeout(function: name)
            }
            // After the first byte, the rest must follow within the byte timeout of each other.
            deadline = ContinuousClock.now + byteTimeout
        }
    }

    // MARK: socket

    private func connect() throws(ModbusError) {
        fd = try TCPConnection.open(host: host, port: port, timeout: responseTimeout, target: "rtu-tcp://\(host):\(port)")
    }

    private func send(_ bytes: [UInt8], name: String) throws(ModbusError) {
        var off = 0
        let deadline = ContinuousClock.now + responseTimeout
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            let e = errno
            if n < 0 && (e == EAGAIN || e == EINTR) && ContinuousClock.now < deadline {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 10)
                continue
            }
            close()
            throw .connectionLost(function: name, errno: e, detail: String(cString: strerror(e)))
        }
    }

    /// Appends what arrives before `deadline`; false when nothing did.
    private func receive(into buffer: inout [UInt8], until deadline: ContinuousClock.Instant, name: String) throws(ModbusError) -> Bool {
        while true {
            let left = deadline - .now
            let ms = max(0, Int32(clamping: (left.nanoseconds + 999_999) / 1_000_000))
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&p, 1, ms)
            if n < 0 { if errno == EINTR { continue }; break }
            if n == 0 { return false }
            var chunk = [UInt8](repeating: 0, count: 300)
            let r = recv(fd, &chunk, chunk.count, 0)
            if r > 0 { buffer += chunk[0..<r]; return true }
            if r < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            break
        }
        let e = errno
        close()
        throw .connectionLost(function: name, errno: e == 0 ? ECONNRESET : e, detail: "the serial device server closed the connection")
    }

    /// Reads and drops bytes until the stream has been quiet for `quiet` (at most 64 KiB, 2 s).
    private func drainQuietly(for quiet: Duration) {
        guard fd >= 0 else { return }
        let end = ContinuousClock.now + .seconds(2)
        var dropped = 0
        var chunk = [UInt8](repeating: 0, count: 512)
        while ContinuousClock.now < end && dropped < 65_536 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = Int32(clamping: quiet.nanoseconds / 1_000_000)
            guard poll(&p, 1, ms) == 1 else { return }
            let r = recv(fd, &chunk, chunk.count, 0)
            if r <= 0 {
                if r < 0 && (errno == EAGAIN || errno == EINTR) { if quiet == .zero { return }; continue }
                close()
                return
            }
            dropped += r
        }
    }
}

/// A TCP connection opened without libmodbus (non-blocking, `TCP_NODELAY`), for the framings we do
/// ourselves: RTU over TCP, and the scan's Modbus TCP.
public enum TCPConnection {
    /// Connects to `host:port` (every address it resolves to, in turn) within `timeout` each.
    public static func open(host: String, port: Int, timeout: Duration, target: String) throws(ModbusError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else {
            throw .connectFailed(target: target, errno: ENOENT, detail: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(res) }
        var lastErrno: Int32 = ECONNREFUSED
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), a.pointee.ai_protocol)
            guard s >= 0 else { lastErrno = errno; continue }
            if Glibc.connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 {
                guard errno == EINPROGRESS else { lastErrno = errno; Glibc.close(s); continue }
                var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
                let ms = Int32(clamping: timeout.nanoseconds / 1_000_000)
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                guard poll(&p, 1, max(1, ms)) == 1, getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) == 0, err == 0 else {
                    lastErrno = err != 0 ? err : ETIMEDOUT
                    Glibc.close(s)
                    continue
                }
            }
            var one: Int32 = 1
            setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            return s
        }
        throw .connectFailed(target: target, errno: lastErrno, detail: String(cString: strerror(lastErrno)))
    }
}
