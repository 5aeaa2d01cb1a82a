import Foundation
import Modbus
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Test fixtures start, answer and stop", .timeLimit(.minutes(2)))
struct FixtureTests {
    @Test("a rig a failed test drops without shutdown kills its gateway and simulator and removes its directory")
    func rigTeardownOnFailure() async throws {
        var children: [ChildProcess] = []
        var directory = ""
        do {
            let rig = try await Rig.start(points: "[[device.point]]\nname = \"c\"\nregister = \"coil\"\naddress = 0\n", simArgs: [])
            try await rig.waitFor("gateway/e2e/dev/status", "online")
            children = [rig.gateway, rig.sim.process]
            directory = String(rig.configPath.dropLast("/gateway.toml".count))
            #expect(access(directory, F_OK) == 0)
        }   // the rig is released here, as when a test throws before its shutdown
        for child in children {
            // Killed by the rig although this test still holds the process (bounded wait for its exit).
            #expect(try await child.waitForExit(timeout: .seconds(10)) != 0, "\(child.command) was not killed")
        }
        #expect(access(directory, F_OK) == -1, "\(directory) still there")
    }

    @Test("a child's exit is seen while other children are being started from other threads")
    func exitSeenDespiteConcurrentSpawns() async throws {
        // Long-lived children are started while short ones are, from 8 threads. None may inherit
        // a short one's output pipe: that would hold its output open, and its exit unseen, until
        // the long one ends. Threads of their own, not tasks: a spawn blocks, and 200 of them on
        // the cooperative pool held both its threads for seconds, which stalled every other test
        // in the process meanwhile.
        let spawned = Mutex<[(child: ChildProcess, longLived: Bool)]>([])
        let failure = Mutex<String?>(nil)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let left = Mutex(8)
            for t in 0..<8 {
                Thread.detachNewThread {
                    for i in stride(from: t, to: 200, by: 8) {
                        let long = i.isMultiple(of: 2)
                        do {
                            let child = try ChildProcess(long ? "/bin/sleep" : "/bin/true", long ? ["60"] : [])
                            spawned.withLock { $0.append((child, long)) }
                        } catch {
                            failure.withLock { $0 = "\(error)" }
                        }
                    }
                    if left.withLock({ $0 -= 1; return $0 == 0 }) { done.resume() }
                }
            }
        }
        #expect(failure.withLock { $0 } == nil)
        let children = spawned.withLock { $0 }
        #expect(children.count == 200)
        for (child, long) in children where !long { #expect(try await child.waitForExit(timeout: .seconds(10)) == 0) }
        for (child, long) in children where long { await child.stop() }
    }

    @Test("a child started while a socket is open does not hold it: our close reaches the peer at once")
    func childDoesNotInheritSockets() async throws {
        // As NIO opens its sockets: without close-on-exec. A child that inherited `ours` would keep
        // the connection open after we close it, until the child exits.
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let (ours, peer) = (fds[0], fds[1])
        defer { close(peer) }
        let child = try ChildProcess("/bin/sleep", ["60"])
        close(ours)
        // The peer sees end of stream within 10 s (at once, unless the child holds our end).
        var p = pollfd(fd: peer, events: Int16(POLLIN), revents: 0)
        let ready = poll(&p, 1, 10_000)
        #expect(ready == 1, "the close did not reach the peer: the child holds the socket")
        var byte: UInt8 = 0
        if ready == 1 { #expect(read(peer, &byte, 1) == 0, "end of stream") }
        await child.stop()
    }

    @Test("Mosquitto: plain, TLS and password listeners answer; stop and restart on the same ports")
    func mosquittoListeners() async throws {
        let broker = try await Mosquitto.start()
        defer { Task { await broker.shutdown() } }
        let host = ["-h", "127.0.0.1"]

        // Plain: a retained message comes back to a subscriber.
        var r = try await TestEnvironment.run("mosquitto_pub", host + ["-p", "\(broker.port)", "-t", "fx/plain", "-m", "hello", "-r", "-q", "1"])
        #expect(r.status == 0, "\(r.output)")
        r = try await TestEnvironment.run("mosquitto_sub", host + ["-p", "\(broker.port)", "-t", "fx/plain", "-C", "1", "-W", "10"])
        #expect(r.status == 0)
        #expect(r.output.contains("hello"))

        // TLS: our CA works, an unrelated CA is refused.
        r = try await TestEnvironment.run("mosquitto_pub", ["-h", "localhost", "-p", "\(broker.tlsPort)", "--cafile", broker.certificates.caCertificate, "-t", "fx/tls", "-m", "x"])
        #expect(r.status == 0, "\(r.output)")
        r = try await TestEnvironment.run("mosquitto_pub", ["-h", "localhost", "-p", "\(broker.tlsPort)", "--cafile", broker.certificates.otherCACertificate, "-t", "fx/tls", "-m", "x"])
        #expect(r.status != 0, "a wrong CA must be refused")

        // Password: right password works; wrong password and anonymous are refused.
        r = try await TestEnvironment.run("mosquitto_pub", host + ["-p", "\(broker.authPort)", "-u", broker.username, "-P", broker.password, "-t", "fx/auth", "-m", "x"])
        #expect(r.status == 0, "\(r.output)")
        r = try await TestEnvironment.run("mosquitto_pub", host + ["-p", "\(broker.authPort)", "-u", broker.username, "-P", "wrong", "-t", "fx/auth", "-m", "x"])
        #expect(r.status != 0)
        r = try await TestEnvironment.run("mosquitto_pub", host + ["-p", "\(broker.authPort)", "-t", "fx/auth", "-m", "x"])
        #expect(r.status != 0)

        // Stopped: nothing listens. Restarted: same port answers again.
        await broker.stop()
        #expect(broker.process == nil)
        r = try await TestEnvironment.run("mosquitto_pub", host + ["-p", "\(broker.port)", "-t", "fx/plain", "-m", "x"])
        #expect(r.status != 0, "the broker should be down")
        try await broker.restart()
        r = try await TestEnvironment.run("mosquitto_pub", host + ["-p", "\(broker.port)", "-t", "fx/plain", "-m", "x"])
        #expect(r.status == 0, "\(r.output)")
        let status = await broker.process?.stop()
        #expect(status == 0, "mosquitto exits 0 on SIGTERM")
    }

    @Test("socat pty pair carries bytes both ways, and both ends vanish when stopped")
    func ptyPair() async throws {
        let pair = try await PtyPair.start()
        let fa = open(pair.a, O_RDWR | O_NOCTTY)
        let fb = open(pair.b, O_RDWR | O_NOCTTY)
        #expect(fa >= 0 && fb >= 0)
        defer { close(fa); close(fb) }
        #expect(try writeAndRead(from: fa, to: fb, "ping\r\n") == "ping\r\n")
        #expect(try writeAndRead(from: fb, to: fa, "pong") == "pong")
        await pair.stop()
        #expect(access(pair.a, F_OK) != 0)
        #expect(access(pair.b, F_OK) != 0)
    }

    @Test("gateway simulate serves several units, logs writes, changes values from stdin, exits 0 on SIGTERM")
    func ourSimulator() async throws {
        let sim = try await GatewaySimulator.start(["--unit", "1", "--unit", "3", "--set", "holding:100=215", "--set", "3/coil:0=1"])
        let bus = ModbusBus(configuration: BusConfiguration(name: "fx", transport: .tcp(host: sim.host, port: sim.port)))
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 100, count: 1) == [215])
        #expect(try await bus.readCoils(unit: 3, address: 0, count: 1) == [true])
        #expect(try await bus.readCoils(unit: 1, address: 0, count: 1) == [false])
        try await bus.writeRegister(unit: 3, address: 7, value: 42)
        try await sim.process.waitForLine(containing: "\"fc\":6")
        #expect(sim.writes.map(\.values) == [[42]])
        #expect(sim.writes.first?.unit == 3)
        try await sim.set("holding:100=216")
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 100, count: 1) == [216])
        #expect(await sim.stop() == 0)
    }

    @Test("pymodbus serves over TCP as an independent peer and exits on SIGTERM")
    func pymodbusTCP() async throws {
        let server = try await PymodbusServer.startTCP(spec: #"{"1": {"hr": {"100": 215}, "co": {"2": 1}}}"#)
        let bus = ModbusBus(configuration: BusConfiguration(name: "fx", transport: .tcp(host: "127.0.0.1", port: server.port ?? 0)))
        defer { bus.close() }
        #expect(try await bus.readHoldingRegisters(unit: 1, address: 100, count: 1) == [215])
        #expect(try await bus.readCoils(unit: 1, address: 0, count: 3) == [false, false, true])
        #expect(await server.stop() == 0)
    }

    @Test("a missing tool fails loudly with the install hint")
    func missingTool() {
        #expect(throws: FixtureError.self) { try TestEnvironment.require("no-such-tool-gw") }
        do {
            _ = try TestEnvironment.require("no-such-tool-gw")
        } catch {
            #expect("\(error)".contains("install-deps.sh"))
        }
    }

    @Test("waiting for a line is bounded, and stop ends only our process")
    func boundedWait() async throws {
        let p = try ChildProcess(try TestEnvironment.require("cat"), [])
        await #expect(throws: FixtureError.self) {
            try await p.waitForLine(containing: "never", timeout: .milliseconds(200))
        }
        p.send("now")
        #expect(try await p.waitForLine(containing: "now") == "now")
        let status = await p.stop()
        #expect(status == 128 + SIGTERM)
    }
}

/// Writes `text` on one fd and reads it back on the other, within 5 s.
func writeAndRead(from: Int32, to: Int32, _ text: String) throws -> String {
    let bytes = Array(text.utf8)
    #expect(write(from, bytes, bytes.count) == bytes.count)
    var got: [UInt8] = []
    let deadline = ContinuousClock.now + .seconds(5)
    while got.count < bytes.count && ContinuousClock.now < deadline {
        var pfd = pollfd(fd: to, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 500) > 0 else { continue }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = read(to, &buf, buf.count)
        if n <= 0 { break }
        got += buf[0..<n]
    }
    return String(decoding: got, as: UTF8.self)
}
