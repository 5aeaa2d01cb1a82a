/// What every serial line shares, whoever speaks on it: Modbus RTU (libmodbus) and raw serial
/// devices (termios). One parity and one list of baud rates, so `gateway check`, the Modbus
/// buses and the serial devices accept the same settings.

/// Parity of a serial line, by the letter integrators write (`8N1`, `8E1`).
public enum Parity: String, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    case none = "N", even = "E", odd = "O"

    /// "N", "e", "O"...: the letter in either case; nil for anything else.
    public init?(letter: String) { self.init(rawValue: letter.uppercased()) }

    public var description: String { rawValue }
}

/// Baud rates a line can be set to.
public enum BaudRate {
    /// The standard rates that both termios (`B*` constants) and libmodbus set on Linux.
    /// libmodbus sets any other rate as 9600, saying so only in debug mode, so the config
    /// refuses them rather than let a bus run at a speed nobody asked for.
    public static let supported = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600]

    public static func isSupported(_ baud: Int) -> Bool { supported.contains(baud) }

    /// "1200, 2400, ..." for error messages.
    public static var supportedList: String { supported.map(String.init).joined(separator: ", ") }
}
