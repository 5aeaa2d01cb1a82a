import Gateway
import GatewayConfig

#if canImport(Glibc)
import Glibc
#endif

/// The MQTT password is read here, at the edge, not by the domain: `password_file` (first line)
/// or env `GATEWAY_MQTT_PASSWORD`; nil when neither. A `password_file` that cannot be read is an
/// error (never a silent fallback to no password): `run` exits with a configuration error.
func mqttPassword(for settings: MQTTSettings) throws(PasswordFileError) -> [UInt8]? {
    if let file = settings.passwordFile { return try readPasswordFile(file, key: "mqtt.password_file") }
    if let env = getenv("GATEWAY_MQTT_PASSWORD") { return Array(String(cString: env).utf8) }
    return nil
}

/// The operations listener's basic-auth password (`[http] password_file`), nil when none.
func httpPassword(for settings: HTTPSettings) throws(PasswordFileError) -> [UInt8]? {
    try settings.passwordFile.map { file throws(PasswordFileError) in try readPasswordFile(file, key: "http.password_file") }
}

/// The key of signed commands (`[gateway] command_key_file`): its first line, at least
/// ``CommandSigner/minimumKeyBytes`` long. A file other users may read or write is refused: the
/// key is what stands between a leaked broker password and the doors.
func commandKey(file: String, key: String = "gateway.command_key_file") throws(PasswordFileError) -> [UInt8] {
    var st = stat()
    guard stat(file, &st) == 0 else { throw PasswordFileError("\(key): cannot read '\(file)': \(String(cString: strerror(errno)))") }
    if st.st_mode & 0o007 != 0 {
        throw PasswordFileError("\(key): '\(file)' is accessible to other users (mode \(String(st.st_mode & 0o777, radix: 8))): chmod o-rwx it (0600 or 0640)")
    }
    let bytes = try readPasswordFile(file, key: key)
    guard bytes.count >= CommandSigner.minimumKeyBytes else {
        throw PasswordFileError("\(key): the key in '\(file)' is \(bytes.count) bytes; at least \(CommandSigner.minimumKeyBytes) are needed (e.g. `openssl rand -hex 32`)")
    }
    return bytes
}

/// The first line of `file`, without its line end.
private func readPasswordFile(_ file: String, key: String) throws(PasswordFileError) -> [UInt8] {
    guard let f = fopen(file, "re") else {
        throw PasswordFileError("\(key): cannot read '\(file)': \(String(cString: strerror(errno)))")
    }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 4096)
    guard fgets(&line, 4096, f) != nil else {
        guard ferror(f) == 0 else { throw PasswordFileError("\(key): cannot read '\(file)': \(String(cString: strerror(errno)))") }
        return []   // an empty file: an empty password
    }
    var bytes = line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    while let last = bytes.last, last == 10 || last == 13 { bytes.removeLast() }
    return bytes
}

struct PasswordFileError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
