import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Paths and tools the fixtures need.
public enum TestEnvironment {
    /// The package root (this file is Tests/TestSupport/Environment.swift).
    public static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public static let installHint = "run `scripts/install-deps.sh` (or README's test command), which installs libmodbus-dev, mosquitto, mosquitto-clients, socat, openssl and the Python test peers"

    /// The `gateway` executable: $GATEWAY_BIN, else the debug build in .build.
    public static func gatewayBinary() throws -> String {
        if let env = ProcessInfo.processInfo.environment["GATEWAY_BIN"], !env.isEmpty { return env }
        for candidate in [".build/debug/gateway", ".build/x86_64-unknown-linux-gnu/debug/gateway", ".build/aarch64-unknown-linux-gnu/debug/gateway"] {
            let p = packageRoot + "/" + candidate
            if access(p, X_OK) == 0 { return p }
        }
        throw FixtureError("the gateway executable is not built: run `swift build` first (or set GATEWAY_BIN)")
    }

    /// The venv Python with pymodbus / paho-mqtt.
    public static func venvPython() throws -> String {
        let p = packageRoot + "/.venv/bin/python"
        guard access(p, X_OK) == 0 else { throw FixtureError("no Python venv at \(p): \(installHint)") }
        return p
    }

    /// Full path of `tool` on PATH, or a loud error with the install hint. Never a silent skip.
    public static func require(_ tool: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let dirs: [String] = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        for dir in dirs {
            let p = "\(dir)/\(tool)"
            if access(p, X_OK) == 0 { return p }
        }
        throw FixtureError("`\(tool)` is not installed: \(installHint)")
    }

    /// A new private temporary directory.
    public static func makeTemporaryDirectory(_ prefix: String = "gw-test") throws -> String {
        var template = Array((NSTemporaryDirectory() + "/\(prefix)-XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw FixtureError("mkdtemp failed") }
        return String(cString: p)
    }

    /// A TCP port on 127.0.0.1 that is free now and that nobody else in this process was given.
    ///
    /// Ports come from below the kernel's ephemeral range (`ip_local_port_range`), walked by a
    /// process-wide counter: the kernel never hands these out to outgoing connections, so a port
    /// picked here cannot be taken between the pick and the peer's bind by one of the many client
    /// sockets the parallel tests open (that happened with kernel-picked ports: a simulator
    /// failed with EADDRINUSE in a CI run). Each candidate is probed with a plain bind.
    public static func freePort() throws -> Int {
        let (low, high) = portWindow
        for _ in 0..<(high - low) {
            let port = nextPortCandidate.withLock { next -> Int in
                let p = next
                next = next + 1 >= high ? low : next + 1
                return p
            }
            if canBind(port) { return port }
        }
        throw FixtureError("no free TCP port on 127.0.0.1 in \(low)..<\(high)")
    }

    /// [low, high): 10000 up to the start of the ephemeral range.
    private static let portWindow: (Int, Int) = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let ephemeralLow = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { Int($0) } ?? 32768
        let high = max(ephemeralLow, 12000)
        return (min(10000, high - 2000), high)
    }()

    /// Starts at a pid-dependent place so two test processes at once rarely walk the same ports.
    private static let nextPortCandidate: Mutex<Int> = {
        let (low, high) = portWindow
        return Mutex(low + Int(getpid()) * 97 % (high - low))
    }()

    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Runs a short command to completion (bounded) and returns (status, output).
    @discardableResult
    public static func run(_ tool: String, _ args: [String], timeout: Duration = .seconds(30)) async throws -> (status: Int32, output: String) {
        let p = try ChildProcess(try require(tool), args)
        let status = try await p.waitForExit(timeout: timeout)
        // Output readers finish right after exit; the lines read so far are enough for diagnostics.
        return (status, p.lines.joined(separator: "\n"))
    }
}
