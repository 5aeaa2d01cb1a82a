import LineSettings

/// Settings of an RTU (RS-485 / RS-232) line.
public struct RTUSettings: Sendable, Equatable {
    /// Serial device path, e.g. `/dev/ttyUSB0`.
    public var path: String
    /// Baud rate (default 19200).
    public var baud: Int
    public var parity: Parity
    public var dataBits: Int
    public var stopBits: Int
    /// Ask the driver for RS-485 mode (`TIOCSRS485`); off by default: most USB adapters switch direction themselves.
    public var rs485Mode: Bool
    /// Let libmodbus toggle RTS around each request (adapters that need it); off by default.
    public var rtsToggle: Bool

    public init(path: String, baud: Int = 19200, parity: Parity = .none, dataBits: Int = 8, stopBits: Int = 1,
                rs485Mode: Bool = false, rtsToggle: Bool = false) {
        self.path = path
        self.baud = baud
        self.parity = parity
        self.dataBits = dataBits
        self.stopBits = stopBits
        self.rs485Mode = rs485Mode
        self.rtsToggle = rtsToggle
    }
}

/// How a bus reaches its devices.
public enum ModbusTransport: Sendable, Equatable, CustomStringConvertible {
    /// Modbus TCP to `host:port` (IPv4, IPv6 or a name).
    case tcp(host: String, port: Int)
    /// Modbus RTU on a serial line.
    case rtu(RTUSettings)
    /// RTU frames over TCP to a serial device server (`rtu-tcp`), framed by the gateway itself.
    case rtuOverTCP(host: String, port: Int)

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .rtu(let s): "rtu://\(s.path)@\(s.baud)\(s.parity.rawValue)\(s.dataBits)\(s.stopBits)"
        case .rtuOverTCP(let host, let port): host.contains(":") ? "rtu-tcp://[\(host)]:\(port)" : "rtu-tcp://\(host):\(port)"
        }
    }

    var isRTU: Bool { if case .rtu = self { true } else { false } }
}

/// A bus: one physical line or TCP connection, shared by its devices.
public struct BusConfiguration: Sendable, Equatable {
    /// Name used in logs (`bus` metadata).
    public var name: String
    public var transport: ModbusTransport
    /// How long to wait for the first byte of an answer (default 1000 ms).
    public var responseTimeout: Duration
    /// Longest silence allowed between two bytes of an answer (default 500 ms; RTU frames end on silence).
    public var byteTimeout: Duration

    public init(name: String, transport: ModbusTransport, responseTimeout: Duration = .milliseconds(1000),
                byteTimeout: Duration = .milliseconds(500)) {
        self.name = name
        self.transport = transport
        self.responseTimeout = responseTimeout
        self.byteTimeout = byteTimeout
    }
}
