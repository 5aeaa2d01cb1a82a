import CModbus
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Owns one libmodbus context. Not thread-safe and not `Sendable`: only the bus thread that
/// created it ever touches it. Every call blocks.
final class ModbusConnection {
    private let configuration: BusConfiguration
    private var ctx: OpaquePointer?
    /// `rtu-tcp`: our own framing instead of a libmodbus context.
    private let stream: RTUOverTCPLink?
    private var connected = false
    private var logger: Logger
    /// Transactions started and failed (kept by the bus thread, copied to ``BusStatistics``).
    private(set) var transactions = 0
    private(set) var failures = 0

    init(configuration: BusConfiguration, transactionIDs: MBAPTransactions, logger: Logger) {
        self.configuration = configuration
        self.transactionIDs = transactionIDs
        self.logger = logger
        if case .rtuOverTCP(let host, let port) = configuration.transport {
            stream = RTUOverTCPLink(host: host, port: port, responseTimeout: configuration.responseTimeout,
                                    byteTimeout: min(configuration.byteTimeout, .milliseconds(100)))
        } else {
            stream = nil
        }
    }

    /// Runs one operation on `unit`: our own frame on libmodbus's connection on `tcp`
    /// (``exchangeTCP(unit:_:)``), our own request on libmodbus's RTU line (``exchangeRTU(unit:_:)``),
    /// our own RTU framing on `rtu-tcp`.
    func perform(unit: Int, _ op: ModbusOperation) throws(ModbusError) -> ModbusAnswer {
        if case .tcp = configuration.transport { return try exchangeTCP(unit: unit, op) }
        if let stream {
            guard (0...247).contains(unit) else { throw .invalidArgument("unit id \(unit) is not valid on \(configuration.transport)") }
            transactions += 1
            do {
                return try op.decode(try stream.exchange(unit: unit, pdu: op.requestPDU, name: op.name))
            } catch {
                failures += 1
                throw error
            }
        }
        return try exchangeRTU(unit: unit, op)
    }

    /// RTU through libmodbus: the request is ours (unit id and PDU; libmodbus adds the CRC and
    /// keeps the line's timing), the answer is read by libmodbus (which checks the CRC) and
    /// checked here: the unit, then ``ModbusOperation/decode`` (the echo of FC 5/6, the range of
    /// FC 15/16, the byte count of a read), as on TCP and `rtu-tcp`. libmodbus 3.1.6 took a
    /// single write echoed with another value or address for done.
    private func exchangeRTU(unit: Int, _ op: ModbusOperation) throws(ModbusError) -> ModbusAnswer {
        let request = [UInt8(truncatingIfNeeded: unit)] + op.requestPDU
        let n = try transact(unit: unit, op.name) { ctx -> (Int32, Int32) in
            guard request.withUnsafeBufferPointer({ modbus_send_raw_request(ctx, $0.baseAddress, Int32($0.count)) }) != -1 else { return (-1, 0) }
            let n = modbus_receive_confirmation(ctx, &answer)
            return (n, n)
        }
        do throws(ModbusError) {
            // libmodbus reads past an answer from another unit without a CRC check and returns 0.
            guard n > 0 else { throw .badResponse(function: op.name, detail: "answer from unit \(answer[0]), not \(unit)") }
            return try op.decode(try RTUFrame.open(answer[..<Int(n)], unit: unit, function: op.name))
        } catch {
            failures += 1
            recover(after: error)
            throw error
        }
    }

    // MARK: A request sent by the caller's thread

    /// The socket of a `tcp` connection that is open, else -1. The bus publishes it while its
    /// thread waits for work, so that a command's request can be sent at once from the thread
    /// that has it (``ModbusBus``); this connection then only reads the answer (``confirm``).
    var idleSocket: Int32 {
        guard stream == nil, connected, let ctx, case .tcp = configuration.transport else { return -1 }
        return modbus_get_socket(ctx)
    }

    /// True when an idle TCP connection cannot carry the next request: the device closed it
    /// (many close a connection left idle for a while), reset it, or sent bytes nobody asked for
    /// (they would be read as the next answer). One non-blocking peek, nothing consumed.
    static func isSpent(_ socket: Int32) -> Bool {
        var byte: UInt8 = 0
        let n = recv(socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        if n >= 0 { return true }
        return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR
    }

    /// Reads and checks the answer to `op`, whose request (`transaction`) another thread sent on
    /// ``idleSocket`` while this connection was idle; `sentWhole` false: only part of it went out.
    /// Errors close the connection as after any transaction (``recover(after:)``): a late or
    /// unread answer must never be taken for the next request's.
    func confirm(_ op: ModbusOperation, transaction: UInt16, sentWhole: Bool) throws(ModbusError) -> ModbusAnswer {
        transactions += 1
        do throws(ModbusError) {
            guard let ctx, connected else {
                throw .connectionLost(function: op.name, errno: ENOTCONN, detail: "the connection closed before the answer was read")
            }
            guard sentWhole else {
                throw .connectionLost(function: op.name, errno: EPIPE, detail: "the request went out only in part")
            }
            let n = modbus_receive_confirmation(ctx, &answer)
            if n == -1 { throw ModbusError.fromErrno(cmodbus_errno(), function: op.name) }
            return try op.decode(try MBAP.open(answer[..<Int(n)], transaction: transaction, function: op.name))
        } catch {
            failures += 1
            recover(after: error)
            throw error
        }
    }

    /// Where ``confirm`` and ``exchangeRTU`` have libmodbus put an answer (MODBUS_TCP_MAX_ADU_LENGTH,
    /// above MODBUS_RTU_MAX_ADU_LENGTH), kept: one a request.
    private var answer = [UInt8](repeating: 0, count: 260)

    /// Where the transaction ids of `tcp` requests come from (shared with the bus's early sends).
    private let transactionIDs: MBAPTransactions

    /// Modbus TCP: the request framed here (`MBAP`) and sent on libmodbus's connection, the answer
    /// read by libmodbus and checked by ``confirm`` - the same path and checks as a request sent at
    /// once by another thread, so an answer is judged alike whichever thread sent its request
    /// (libmodbus 3.1.6 itself does not check the echo of a single write).
    private func exchangeTCP(unit: Int, _ op: ModbusOperation) throws(ModbusError) -> ModbusAnswer {
        guard MBAP.carries(unit: unit) else {
            throw .invalidArgument("unit id \(unit) is not valid on \(configuration.transport)")
        }
        let socket = modbus_get_socket(try ensureConnected())
        let transaction = transactionIDs.next()
        let frame = MBAP.seal(transaction: transaction, unit: unit, pdu: op.requestPDU)
        var sent = 0
        while sent < frame.count {
            let n = frame[sent...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            if n < 0 && errno == EINTR { continue }
            let e = n < 0 ? errno : EPIPE
            transactions += 1
            failures += 1
            let error = ModbusError.connectionLost(function: op.name, errno: e, detail: String(cString: strerror(e)))
            recover(after: error)
            throw error
        }
        return try confirm(op, transaction: transaction, sentWhole: true)
    }

    deinit { close() }

    func close() {
        stream?.close()
        if let ctx {
            // Give the exclusive flag back (a pty keeps it after the close while its master lives).
            if connected, configuration.transport.isRTU { _ = ioctl(modbus_get_socket(ctx), UInt(TIOCNXCL)) }
            if connected { modbus_close(ctx) }
            modbus_free(ctx)
        }
        ctx = nil
        connected = false
    }

    /// Runs one libmodbus call on `unit`; `-1` results go through ``check(_:_:)``.
    func transact<T>(unit: Int, _ function: String, _ body: (OpaquePointer) -> (Int32, T)) throws(ModbusError) -> T {
        let ctx = try ensureConnected()
        guard modbus_set_slave(ctx, Int32(unit)) == 0 else {
            throw .invalidArgument("unit id \(unit) is not valid on \(configuration.transport)")
        }
        transactions += 1
        let (rc, value) = body(ctx)
        if rc == -1 {
            failures += 1
            let e = cmodbus_errno()  // read at once, before anything else can overwrite errno
            let error = ModbusError.fromErrno(e, function: function)
            recover(after: error)
            throw error
        }
        return value
    }

    private func recover(after error: ModbusError) {
        guard let ctx else { return }
        switch error {
        case .connectionLost, .connectFailed:
            logger.debug("closing connection after error", metadata: ["error": "\(error)"])
            close()
        case .timeout, .badCRC, .badResponse:
            if configuration.transport.isRTU {
                // A garbled answer may still be in the buffers: drop it so it is not taken for
                // the answer to the next request.
                _ = modbus_flush(ctx)
            } else {
                // A late answer would arrive on this socket after any flush and be read as the
                // answer to the next request (libmodbus then reports "Invalid data", seen with a
                // device answering after our timeout): start the next request on a new connection.
                logger.debug("closing connection after a lost or bad answer", metadata: ["error": "\(error)"])
                close()
            }
        default:
            break
        }
    }

    private func ensureConnected() throws(ModbusError) -> OpaquePointer {
        if let ctx, connected {
            // A request sent on a connection the device has closed fails although the device is
            // there (a write then reads as "outcome unknown"): open a new one first.
            guard case .tcp = configuration.transport, Self.isSpent(modbus_get_socket(ctx)) else { return ctx }
            logger.debug("the device closed the idle connection (or sent what was not asked): reconnecting")
            close()
        }
        if ctx == nil { ctx = try makeContext() }
        guard let ctx else { throw .closed }
        try checkDescriptorsBelowSelectLimit()
        if modbus_connect(ctx) == -1 {
            let e = cmodbus_errno()
            let detail = String(cString: modbus_strerror(e))
            throw .connectFailed(target: configuration.transport.description, errno: e, detail: detail)
        }
        try keepBelowSelectLimit(ctx)
        connected = true
        if case .rtu(let rtu) = configuration.transport {
            // Exclusive access: a second gateway (or a stray mbpoll) opening the same RS-485 line
            // gets EBUSY instead of mixing its frames with ours.
            if ioctl(modbus_get_socket(ctx), UInt(TIOCEXCL)) != 0 {
                logger.warning("cannot take exclusive access of the serial port (TIOCEXCL)", metadata: ["errno": "\(errno)"])
            }
            if rtu.rs485Mode, modbus_rtu_set_serial_mode(ctx, Int32(MODBUS_RTU_RS485)) == -1 {
                let e = cmodbus_errno()
                logger.warning("RS-485 mode not available on this port", metadata: ["errno": "\(e)"])
            }
            if rtu.rtsToggle, modbus_rtu_set_rts(ctx, Int32(MODBUS_RTU_RTS_UP)) == -1 {
                let e = cmodbus_errno()
                logger.warning("RTS toggling not available on this port", metadata: ["errno": "\(e)"])
            }
        }
        logger.debug("connected", metadata: ["target": "\(configuration.transport)"])
        return ctx
    }

    /// libmodbus waits with `select()` (for the connect and every answer), which takes
    /// descriptors below `FD_SETSIZE` (1024) only: glibc aborts the whole process on a higher one.
    /// Before connecting: if the lowest free descriptor is already that high (a process with
    /// that many open), the connection is refused with the reason instead. (Another thread may
    /// still take the last low one in between: ``keepBelowSelectLimit(_:)`` then moves the
    /// connection's descriptor down if it can.)
    private func checkDescriptorsBelowSelectLimit() throws(ModbusError) {
        let limit = Int32(FD_SETSIZE)
        let lowest = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard lowest >= 0 else { return }   // cannot tell; libmodbus says what fails
        _ = Glibc.close(lowest)
        guard lowest >= limit else { return }
        throw .connectFailed(target: configuration.transport.description, errno: EMFILE,
                             detail: "no descriptor below FD_SETSIZE (\(limit)) is free: libmodbus cannot wait on a higher one (too many files open in this process)")
    }

    /// After connecting: a descriptor that came out at or above `FD_SETSIZE` is moved to the
    /// lowest free one below, or the connection is closed and refused with the reason.
    private func keepBelowSelectLimit(_ ctx: OpaquePointer) throws(ModbusError) {
        let limit = Int32(FD_SETSIZE)
        let fd = modbus_get_socket(ctx)
        guard fd >= limit else { return }
        let low = fcntl(fd, F_DUPFD_CLOEXEC, 3)
        if low >= 0, low < limit {
            _ = Glibc.close(fd)
            modbus_set_socket(ctx, low)
            return
        }
        if low >= 0 { _ = Glibc.close(low) }
        modbus_close(ctx)
        throw .connectFailed(target: configuration.transport.description, errno: EMFILE,
                             detail: "its descriptor \(fd) is at or above FD_SETSIZE (\(limit)) and none below is free: libmodbus cannot wait on it (too many files open in this process)")
    }

    private func makeContext() throws(ModbusError) -> OpaquePointer {
        let made: OpaquePointer?
        switch configuration.transport {
        case .tcp(let host, let port):
            made = modbus_new_tcp_pi(host, String(port))
        case .rtuOverTCP:
            throw .invalidArgument("rtu-tcp is framed without libmodbus")
        case .rtu(let s):
            made = modbus_new_rtu(s.path, Int32(s.baud), CChar(truncatingIfNeeded: UInt8(ascii: s.parity.rawValue.unicodeScalars.first!)),
                                  Int32(s.dataBits), Int32(s.stopBits))
        }
        guard let made else {
            let e = cmodbus_errno()
            throw .invalidArgument("cannot create a context for \(configuration.transport): \(String(cString: modbus_strerror(e)))")
        }
        let (rs, rus) = Self.split(configuration.responseTimeout)
        modbus_set_response_timeout(made, rs, rus)
        let (bs, bus) = Self.split(configuration.byteTimeout)
        modbus_set_byte_timeout(made, bs, bus)
        return made
    }

    private static func split(_ d: Duration) -> (UInt32, UInt32) {
        let us = max(Int64(1000), d.nanoseconds / 1000)
        return (UInt32(us / 1_000_000), UInt32(us % 1_000_000))
    }
}
