import Foundation
import Synchronization

/// A write the simulator logged (one JSON line per accepted write).
public struct LoggedWrite: Sendable, Equatable, Decodable {
    public var unit: Int
    public var fc: Int
    public var kind: String
    public var address: Int
    public var values: [Int]
    /// Wall clock, ms since 1970.
    public var ts_ms: Int64
    /// Monotonic ms (for spacing).
    public var mono_ms: Int64
    /// Monotonic µs (CLOCK_MONOTONIC).
    public var mono_us: Int64?
}

/// Our own `gateway simulate`, started as a process on a free loopback port.
public final class GatewaySimulator: Sendable {
    public let process: ChildProcess
    public let host: String
    public let port: Int

    private init(process: ChildProcess, host: String, port: Int) {
        self.process = process
        self.host = host
        self.port = port
    }

    /// How long a simulator may take to say it listens (pymodbus below is given as long).
    public static let startupLimit: Duration = .seconds(30)

    /// Starts `gateway simulate --tcp 127.0.0.1:0 <arguments>` and waits until it listens.
    /// `rtuOverTCP`: RTU frames over TCP (`--rtu-tcp`), as a serial device server speaks.
    /// Start-up is bounded by `startupLimit`, not 10 s: the first full run after a fresh debug
    /// build once timed out four simulators at 10 s while dozens of test processes started cold.
    public static func start(_ arguments: [String] = [], host: String = "127.0.0.1", port: Int = 0, rtuOverTCP: Bool = false) async throws -> GatewaySimulator {
        let bin = try TestEnvironment.gatewayBinary()
        let p = try ChildProcess(bin, ["simulate", rtuOverTCP ? "--rtu-tcp" : "--tcp", "\(host):\(port)"] + arguments)
        let line = try await p.waitForLine(containing: rtuOverTCP ? "listening rtu-tcp" : "listening tcp", timeout: startupLimit)
        guard let portText = line.split(separator: " ").dropFirst(2).first?.split(separator: ":").last, let port = Int(portText) else {
            await p.stop()
            throw FixtureError("cannot read the port from '\(line)'")
        }
        return GatewaySimulator(process: p, host: host, port: port)
    }

    /// Starts `gateway simulate` on a serial line (one unit).
    public static func startRTU(path: String, _ arguments: [String] = []) async throws -> ChildProcess {
        let p = try ChildProcess(try TestEnvironment.gatewayBinary(), ["simulate", "--rtu", path] + arguments)
        try await p.waitForLine(containing: "listening rtu", timeout: startupLimit)
        return p
    }

    /// Changes a value live: `set("holding:100=215")` or `set("3/coil:0=1")`.
    public func set(_ spec: String) async throws {
        process.send("set \(spec)")
        try await process.waitForLine { $0 == "set \(spec)" }
    }

    /// Puts a noise byte ahead of each of the next `answers` RTU answers.
    public func addNoise(answers: Int) async throws {
        process.send("noise \(answers)")
        try await process.waitForLine { $0 == "noise \(answers)" }
    }

    /// Delays every answer from now on by `ms` (0 restores prompt answers).
    public func setLatency(ms: Int) async throws {
        process.send("latency \(ms)")
        try await process.waitForLine { $0 == "latency \(ms)" }
    }

    /// Every write logged so far.
    public var writes: [LoggedWrite] {
        process.lines.compactMap { line in
            guard line.hasPrefix("{\"write\":"), let data = line.data(using: .utf8) else { return nil }
            return (try? JSONDecoder().decode([String: LoggedWrite].self, from: data))?["write"]
        }
    }

    /// Waits (bounded) until at least `count` writes have been logged; returns them all.
    @discardableResult
    public func waitForWrites(_ count: Int, timeout: Duration = .seconds(10)) async throws -> [LoggedWrite] {
        let seen = Mutex(0)
        _ = try await process.waitForLine(timeout: timeout) { line in
            guard line.hasPrefix("{\"write\":") else { return false }
            return seen.withLock { $0 += 1; return $0 >= count }
        }
        return writes
    }

    public func stop() async -> Int32 { await process.stop() }
}

/// pymodbus (from PyPI, pinned): an independent Modbus peer.
public final class PymodbusServer: Sendable {
    public let process: ChildProcess
    public let port: Int?

    private init(process: ChildProcess, port: Int?) {
        self.process = process
        self.port = port
    }

    static var script: String { TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/pymodbus_server.py" }

    /// Serves `spec` (see the script's doc) over TCP on a free loopback port.
    /// `rtuFraming`: RTU frames over TCP (a serial device server) instead of Modbus TCP.
    public static func startTCP(spec: String, rtuFraming: Bool = false) async throws -> PymodbusServer {
        let p = try ChildProcess(try TestEnvironment.venvPython(), [script, "--tcp", "127.0.0.1:0", "--spec", spec]
                                 + (rtuFraming ? ["--framer", "rtu"] : []))
        let line = try await p.waitForLine(containing: "listening tcp", timeout: .seconds(30))
        guard let port = line.split(separator: ":").last.flatMap({ Int($0) }) else {
            await p.stop()
            throw FixtureError("cannot read the port from '\(line)'")
        }
        return PymodbusServer(process: p, port: port)
    }

    /// Serves `spec` as RTU on a serial line (several unit ids on one line). `logRequests`: one
    /// line per request received, for a served unit or not (see ``requests(unit:)``).
    public static func startRTU(path: String, baud: Int = 19200, spec: String, logRequests: Bool = false) async throws -> PymodbusServer {
        let p = try ChildProcess(try TestEnvironment.venvPython(), [script, "--rtu", path, "--baud", String(baud), "--spec", spec]
                                 + (logRequests ? ["--log-requests"] : []))
        try await p.waitForLine(containing: "listening rtu", timeout: .seconds(30))
        return PymodbusServer(process: p, port: nil)
    }

    /// Monotonic µs of every request logged so far for `unit` (started with `logRequests`).
    public func requests(unit: Int) -> [Int64] {
        let prefix = "{\"request\":{\"unit\":\(unit),"
        return process.lines.compactMap { line in
            guard line.hasPrefix(prefix), let r = line.range(of: "\"mono_us\":") else { return nil }
            return Int64(line[r.upperBound...].prefix { $0.isNumber })
        }
    }

    public func stop() async -> Int32 { await process.stop() }
}

/// A pair of connected pseudo-terminals made by socat: what is written to one end is read on the
/// other. Stands in for a serial line (it ignores baud rate and parity).
public final class PtyPair: Sendable {
    public let process: ChildProcess
    /// Stable paths (symlinks to /dev/pts/N) of the two ends.
    public let a: String
    public let b: String
    public let directory: String

    private init(process: ChildProcess, a: String, b: String, directory: String) {
        self.process = process
        self.a = a
        self.b = b
        self.directory = directory
    }

    /// Starts socat; `directory` reuses the paths of an earlier pair (a device plugged in again).
    public static func start(directory: String? = nil) async throws -> PtyPair {
        let dir = try directory ?? TestEnvironment.makeTemporaryDirectory("pty")
        let a = dir + "/a", b = dir + "/b"
        let p = try ChildProcess(try TestEnvironment.require("socat"),
                                 ["-d", "-d", "pty,raw,echo=0,link=\(a)", "pty,raw,echo=0,link=\(b)"])
        try await p.waitForLine(containing: "starting data transfer loop")
        return PtyPair(process: p, a: a, b: b, directory: dir)
    }

    /// Stops socat: both ends vanish (like an unplugged USB adapter).
    public func stop(removeDirectory: Bool = true) async {
        await process.stop()
        if removeDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }
}

/// A QR reader's `[[device]]` table: a line-framed serial device `qr` on `port` whose point
/// `scan` takes every line `QR:<text>` (the outbox and cluster tests' numbered messages).
public func qrReaderDevice(port: String) -> String {
    """
    [[device]]
    name = "qr"
    driver = "serial"
    port = "\(port)"
    framing = "line"
      [[device.point]]
      name = "scan"
      match = '^QR:(.+)$'
    """
}
