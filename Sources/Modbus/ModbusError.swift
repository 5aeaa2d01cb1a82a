import CModbus

#if canImport(Glibc)
import Glibc
#endif

/// A Modbus exception code returned by a device (the peer understood the request and refused it).
public enum ModbusException: UInt8, Sendable, Error, CustomStringConvertible {
    case illegalFunction = 1
    case illegalDataAddress = 2
    case illegalDataValue = 3
    case slaveDeviceFailure = 4
    case acknowledge = 5
    case slaveDeviceBusy = 6
    case negativeAcknowledge = 7
    case memoryParityError = 8
    case gatewayPathUnavailable = 10
    case gatewayTargetFailedToRespond = 11

    public var description: String {
        switch self {
        case .illegalFunction: "illegal function"
        case .illegalDataAddress: "illegal data address"
        case .illegalDataValue: "illegal data value"
        case .slaveDeviceFailure: "slave device failure"
        case .acknowledge: "acknowledge"
        case .slaveDeviceBusy: "slave device busy"
        case .negativeAcknowledge: "negative acknowledge"
        case .memoryParityError: "memory parity error"
        case .gatewayPathUnavailable: "gateway path unavailable"
        case .gatewayTargetFailedToRespond: "gateway target device failed to respond"
        }
    }
}

/// Everything that can go wrong on a Modbus bus.
///
/// Caller mistakes (`invalidArgument`, `valueOutOfRange`) are kept apart from peer failures
/// (`exception`, `timeout`, `badCRC`, `connectionLost`, ...). A write that failed with `timeout` or
/// `connectionLost` may or may not have reached the device: see ``isOutcomeUnknown``.
public enum ModbusError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The device answered with a Modbus exception.
    case exception(ModbusException, function: String)
    /// No (complete) answer within the response timeout.
    case timeout(function: String)
    /// The answer's CRC was wrong (RTU).
    case badCRC(function: String)
    /// The answer did not fit the request (wrong length, wrong unit, wrong function).
    case badResponse(function: String, detail: String)
    /// Could not open the connection / serial port.
    case connectFailed(target: String, errno: Int32, detail: String)
    /// The connection dropped during a transaction.
    case connectionLost(function: String, errno: Int32, detail: String)
    /// The bus is busy: the request waited longer than its deadline in the queue.
    case busBusy
    /// The bus is closed (shut down).
    case closed
    /// Bad arguments from the caller; nothing was sent.
    case invalidArgument(String)
    /// A value that does not fit the data type; nothing was sent.
    case valueOutOfRange(String)
    /// Any other libmodbus error.
    case other(function: String, errno: Int32, detail: String)

    public var description: String {
        switch self {
        case .exception(let e, let f): "\(f): device answered exception \(e.rawValue) (\(e))"
        case .timeout(let f): "\(f): timeout, no answer from the device"
        case .badCRC(let f): "\(f): bad CRC in the answer"
        case .badResponse(let f, let d): "\(f): bad response: \(d)"
        case .connectFailed(let t, let e, let d):
            "cannot connect to \(t): \(d) (errno \(e))\(e == EBUSY ? ": another program (another gateway?) holds the port (exclusive access)" : "")"
        case .connectionLost(let f, let e, let d): "\(f): connection lost: \(d) (errno \(e))"
        case .busBusy: "bus busy: request not started before its deadline"
        case .closed: "bus closed"
        case .invalidArgument(let s): "invalid argument: \(s)"
        case .valueOutOfRange(let s): "value out of range: \(s)"
        case .other(let f, let e, let d): "\(f): \(d) (errno \(e))"
        }
    }

    /// True when a write may have reached the device although no valid answer came back.
    public var isOutcomeUnknown: Bool {
        switch self {
        case .timeout, .connectionLost, .badCRC, .badResponse: true
        default: false
        }
    }

    /// True when the device (or the connection to it) gave no answer at all, as opposed to a
    /// garbled answer or an exception.
    public var isNoAnswer: Bool {
        switch self {
        case .timeout, .connectFailed, .connectionLost: true
        default: false
        }
    }

    /// Maps an errno left by a failing libmodbus call (read it right after the call).
    static func fromErrno(_ e: Int32, function: String) -> ModbusError {
        let detail = String(cString: modbus_strerror(e))
        let base = Int32(MODBUS_ENOBASE)
        if e > base && e <= base + 11, let exc = ModbusException(rawValue: UInt8(e - base)) {
            return .exception(exc, function: function)
        }
        switch e {
        case ETIMEDOUT: return .timeout(function: function)
        case cmodbus_embbadcrc(): return .badCRC(function: function)
        case cmodbus_embbaddata(), cmodbus_embbadexc(), cmodbus_embmdata(), cmodbus_embbadslave():
            return .badResponse(function: function, detail: detail)
        case ECONNRESET, EPIPE, ECONNREFUSED, EBADF, ENOTCONN, ECONNABORTED, EIO, ENXIO, ENODEV,
            EHOSTUNREACH, ENETUNREACH:
            return .connectionLost(function: function, errno: e, detail: detail)
        case EINVAL: return .invalidArgument("\(function): \(detail)")
        default: return .other(function: function, errno: e, detail: detail)
        }
    }
}
