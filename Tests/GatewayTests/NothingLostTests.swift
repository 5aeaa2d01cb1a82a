import Foundation
import MQTT
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Nothing lost at the joins, against real peers: a freezing proxy in front of Mosquitto (the
/// client holds messages the broker never acknowledged), SIGTERM and SIGKILL, a small tmpfs as
/// `state_dir` (a full disk, in a mount namespace of its own), and strace (each flush synced).
/// The QR reader on a socat pty gives numbered messages on one topic, so order and gaps show.
@Suite("Nothing lost at the joins (freezing proxy, SIGTERM, SIGKILL, a full tmpfs, strace)", .serialized, .timeLimit(.minutes(4)))
struct NothingLostTests {
    static let topic = "gateway/nl/qr/scan"

    final class Site: Sendable {
        let broker: Mosquitto
        let pty: PtyPair
        let dir: String
        let reader: FarEnd
        let proxy: ChildProcess?
        /// The proxy's port when there is one, else the broker's.
        let frontPort: Int

        init(proxy useProxy: Bool = false) async throws {
            broker = try await Mosquitto.start()
            pty = try await PtyPair.start()
            dir = try TestEnvironment.makeTemporaryDirectory("gw-nl")
            try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
            reader = try FarEnd(pty.b)
            if useProxy {
                let p = try ChildProcess("/usr/bin/python3", [TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/freeze_proxy.py", "\(broker.port)"])
                let line = try await p.waitForLine(containing: "listening")
                proxy = p
                frontPort = try #require(line.split(separator: " ").last.flatMap { Int($0) })
            } else {
                proxy = nil
                frontPort = broker.port
            }
        }

        /// A config reaching the broker at `port` (default: through the proxy when there is one).
        func config(_ name: String, port: Int? = nil, keepalive: Int = 60, stateDir: String? = nil, extra: String = "", http: String = "") throws -> String {
            let path = dir + "/\(name).toml"
            try """
                [gateway]
                id = "nl"
                state_dir = "\(stateDir ?? dir + "/state")"
                require_synced_clock = false
                \(extra)
                [mqtt]
                url = "mqtt://127.0.0.1:\(port ?? frontPort)"
                keepalive = \(keepalive)
                [http]
                listen = "\(http)"
                [homeassistant]
                enabled = false
                \(qrReaderDevice(port: pty.a))
                """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        func gateway(_ config: String, wrap: [String] = []) throws -> ChildProcess {
            let gw = try TestEnvironment.gatewayBinary()
            let args = ["run", "--config", config, "--log-level", "debug"]
            return wrap.isEmpty ? try ChildProcess(gw, args) : try ChildProcess(wrap[0], Array(wrap.dropFirst()) + [gw] + args)
        }

        /// Sends scans `range`, then a line no point matches: once the gateway logged that line,
        /// it has read (and published) every scan before it.
        func scans(_ range: ClosedRange<Int>, readBy gw: ChildProcess, padding: Int = 0) async throws {
            let pad = padding > 0 ? "-" + String(repeating: "x", count: padding) : ""
            for i in range { _ = await reader.send("QR:\(String(format: "%04d", i))\(pad)\n") }
            let end = "END\(range.upperBound)"
            _ = await reader.send(end + "\n")
            _ = try await gw.waitForLine(timeout: .seconds(60)) { $0.contains("frame matched no point") && $0.contains(end) }
        }

        func observer() async throws -> MQTTObserver {
            try await MQTTObserver(port: broker.port, filters: ["gateway/#"])
        }

        func shutdown() async {
            if let proxy { _ = await proxy.stop() }
            await pty.stop()
            await broker.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    static func scans(_ o: MQTTObserver) -> [Int] { o.payloads(topic).compactMap { Int($0.prefix { $0.isNumber }) } }

    static func onDisk(_ gw: ChildProcess, atLeast count: Int) async throws {
        _ = try await gw.waitForLine(timeout: .seconds(30)) { line in
            guard let r = line.range(of: "outbox: "), let n = Int(line[r.upperBound...].prefix { $0.isNumber }) else { return false }
            return line.contains("messages on disk") && n >= count
        }
    }

    /// A gateway straight to the broker that delivers what earlier ones kept, with an observer
    /// listening first; returned once the outbox is empty.
    static func drain(_ site: Site, stateDir: String? = nil) async throws -> (MQTTObserver, ChildProcess) {
        let observer = try await site.observer()
        let gw = try site.gateway(try site.config("drain", port: site.broker.port, stateDir: stateDir))
        _ = try await gw.waitForLine(timeout: .seconds(60)) { $0.contains("outbox empty") }
        // "outbox empty" means acknowledged by the broker; a live scan after it, on the same
        // topic, reaches the observer after every drained one.
        try await site.scans(9999...9999, readBy: gw)
        try await observer.waitUntil("the live scan after the drain") { Self.scans(observer).last == 9999 }
        return (observer, gw)
    }

    @Test("SIGTERM while the link is frozen: what the client held (in flight and queued) is written to the outbox and delivered after the restart, in order")
    func stopWithAFrozenLink() async throws {
        let site = try await Site(proxy: true)
        let proxy = try #require(site.proxy)
        let gw1 = try site.gateway(try site.config("one"))
        _ = try await gw1.waitForLine(containing: "birth and statuses published")
        _ = try await gw1.waitForLine(containing: "serial port")
        proxy.send("freeze")
        _ = try await proxy.waitForLine(containing: "frozen")
        // keepalive 60: the loss goes unnoticed; every scan is handed to the client.
        try await site.scans(1...300, readBy: gw1)
        gw1.signal(SIGTERM)
        #expect(try await gw1.waitForExit(timeout: .seconds(30)) == 0)
        #expect(gw1.lines.contains { $0.contains("the broker had not acknowledged are kept") }, "\(gw1.tail)")

        let (observer, gw2) = try await Self.drain(site)
        let got = Self.scans(observer).dropLast()
        #expect(Array(got) == Array(1...300), "got \(got.count): \(got.prefix(5))...\(got.suffix(5))")
        await observer.client.disconnect()
        _ = await gw2.stop()
        await site.shutdown()
    }

    @Test("broker lost (a frozen link, noticed by the keepalive) with messages in the client, then SIGKILL: they were on disk, and are delivered after the restart, in order")
    func lostThenKilled() async throws {
        let site = try await Site(proxy: true)
        let proxy = try #require(site.proxy)
        let gw1 = try site.gateway(try site.config("one", keepalive: 2))
        _ = try await gw1.waitForLine(containing: "birth and statuses published")
        _ = try await gw1.waitForLine(containing: "serial port")
        proxy.send("freeze")
        _ = try await proxy.waitForLine(containing: "frozen")
        try await site.scans(1...200, readBy: gw1)
        _ = try await gw1.waitForLine(containing: "broker lost", timeout: .seconds(10))
        try await Self.onDisk(gw1, atLeast: 200)
        gw1.signal(SIGKILL)
        _ = try await gw1.waitForExit()

        let (observer, gw2) = try await Self.drain(site)
        let got = Self.scans(observer).dropLast()
        #expect(Array(got) == Array(1...200), "got \(got.count): \(got.prefix(5))...\(got.suffix(5))")
        await observer.client.disconnect()
        _ = await gw2.stop()
        await site.shutdown()
    }

    /// A tmpfs of `kib` KiB at a directory only processes started through ``enter`` see (a mount
    /// namespace held by a `cat` that lives until the holder's stdin closes, at ``stop()``): the
    /// host's mounts are untouched.
    final class SmallDisk: Sendable {
        let holder: ChildProcess
        let path: String
        /// The tmpfs as the test process sees it (through the holder's root).
        var outside: String { "/proc/\(holder.pid)/root\(path)" }
        /// Root makes a mount namespace; anyone else a user namespace with one (mapped to root).
        static let asRoot = getuid() == 0
        var enter: [String] {
            Self.asRoot ? ["/usr/bin/nsenter", "-t", "\(holder.pid)", "-m", "--"]
                : ["/usr/bin/nsenter", "-t", "\(holder.pid)", "-U", "-m", "--preserve-credentials", "--"]
        }

        init(at path: String, kib: Int) async throws {
            self.path = path
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            holder = try ChildProcess("/usr/bin/unshare", (Self.asRoot ? ["-m"] : ["-r", "-m"]) + ["--propagation", "private", "/bin/sh", "-c",
                                                           "mount -t tmpfs -o size=\(kib)k gw-test \(path) && echo mounted && exec cat > /dev/null"])
            _ = try await holder.waitForLine(containing: "mounted")
        }

        /// Fills what is left with a file (`filler`), or removes it.
        func fill() {
            let fd = open(outside + "/filler", O_WRONLY | O_CREAT, 0o600)
            let chunk = [UInt8](repeating: 0, count: 4096)
            while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, 4096) }) > 0 {}
            close(fd)
        }

        func free() { unlink(outside + "/filler") }

        func stop() async { _ = await holder.stop() }
    }

    @Test("the disk fills during an outage: nothing overtakes what is on disk; every scan arrives in order once the broker is back (the write error logged once)")
    func diskFillsDuringOutage() async throws {
        let site = try await Site()
        let disk = try await SmallDisk(at: site.dir + "/state", kib: 192)
        let httpPort = try TestEnvironment.freePort()
        let gw = try site.gateway(try site.config("one", keepalive: 5, extra: "outbox_sync_ms = 100", http: "127.0.0.1:\(httpPort)"), wrap: disk.enter)
        _ = try await gw.waitForLine(containing: "birth and statuses published")
        _ = try await gw.waitForLine(containing: "serial port")
        await site.broker.stop()
        _ = try await gw.waitForLine(containing: "broker lost")
        // 1500 scans of about 300 bytes, 50 per flush: the first ones fit on the 192 KiB disk,
        // the later ones do not.
        for part in 0..<30 {
            try await site.scans(part * 50 + 1...part * 50 + 50, readBy: gw, padding: 300)
            _ = try await gw.waitForLine(timeout: .seconds(30)) { line in
                guard !line.contains("cannot write") else { return true }
                guard let r = line.range(of: "outbox: "), let n = Int(line[r.upperBound...].prefix { $0.isNumber }) else { return false }
                return line.contains("messages on disk") && n >= part * 50 + 50
            }
        }
        #expect(gw.lines.contains { $0.contains("messages on disk") }, "the first ones were written")
        _ = try await gw.waitForLine(containing: "cannot write", timeout: .seconds(30))
        try await site.broker.restart()
        let observer = try await site.observer()
        try await observer.waitUntil("all 1500 scans", timeout: .seconds(60), log: { gw.lines.filter { $0.contains("outbox") || $0.contains("broker") }.suffix(40).joined(separator: "\n") + "\nscans: \(Self.scans(observer).count)" }) { Self.scans(observer).count >= 1500 }
        try await site.scans(9999...9999, readBy: gw)
        try await observer.waitUntil("the live scan") { Self.scans(observer).last == 9999 }
        let got = Array(Self.scans(observer).dropLast())
        #expect(got == Array(1...1500), "got \(got.count); first out of order at \(zip(got, got.dropFirst()).first { $0.0 >= $0.1 }.map { "\($0)" } ?? "-")")
        #expect(gw.lines.filter { $0.contains("cannot write") }.count == 1, "logged once per episode")
        let (_, metrics) = try await OperationsTests.get("http://127.0.0.1:\(httpPort)/metrics")
        #expect(metrics.contains("gateway_outbox_write_errors_total 1"), "\(metrics.split(separator: "\n").filter { $0.contains("outbox") })")
        // A delivered batch whose delete failed on the full disk was not sent again (checked above).
        print("disk full: \(gw.lines.filter { $0.contains("could not be removed") }.count) failed deletes, \(gw.lines.filter { $0.contains("writing again") }.count) recoveries")
        await observer.client.disconnect()
        _ = await gw.stop()
        await disk.stop()
        await site.shutdown()
    }

    @Test("a full disk at start is not a corrupt file: the backlog stays in place and is delivered, in order, once there is room and a broker")
    func fullDiskAtStart() async throws {
        let site = try await Site()
        let disk = try await SmallDisk(at: site.dir + "/state", kib: 512)
        await site.broker.stop()
        let gw1 = try site.gateway(try site.config("one", keepalive: 5), wrap: disk.enter)
        _ = try await gw1.waitForLine(containing: "serial port")
        try await site.scans(1...200, readBy: gw1)
        try await Self.onDisk(gw1, atLeast: 200)
        gw1.signal(SIGTERM)
        #expect(try await gw1.waitForExit(timeout: .seconds(20)) == 0)

        disk.fill()
        let gw2 = try site.gateway(try site.config("two", keepalive: 5, extra: "outbox_sync_ms = 100"), wrap: disk.enter)
        _ = try await gw2.waitForLine(containing: "serial port")
        try await site.scans(201...250, readBy: gw2)
        _ = try await gw2.waitForLine(timeout: .seconds(10)) { $0.contains("cannot write") || $0.contains("cannot read") || $0.contains("moved to") }
        let files = try FileManager.default.contentsOfDirectory(atPath: disk.outside)
        #expect(!files.contains { $0.contains("unreadable") }, "moved aside: \(files)")
        #expect(!gw2.lines.contains { $0.contains("moved to") }, "\(gw2.tail)")

        disk.free()
        try await site.broker.restart()
        let observer = try await site.observer()
        try await observer.waitUntil("all 250 scans", timeout: .seconds(60)) { Self.scans(observer).count >= 250 }
        try await site.scans(9999...9999, readBy: gw2)
        try await observer.waitUntil("the live scan") { Self.scans(observer).last == 9999 }
        let got = Array(Self.scans(observer).dropLast())
        #expect(got == Array(1...250), "got \(got.count): \(got.prefix(5))...\(got.suffix(5))")
        await observer.client.disconnect()
        _ = await gw2.stop()
        await disk.stop()
        await site.shutdown()
    }

    @Test("a file that is not a database is moved aside with its WAL (kept for a post-mortem), and a new outbox takes what comes")
    func corruptMovedAsideWithWAL() async throws {
        let site = try await Site()
        await site.broker.stop()
        let state = site.dir + "/state"
        try Array(repeating: "not a database ", count: 400).joined().write(toFile: state + "/outbox", atomically: true, encoding: .utf8)
        try "not a WAL either".write(toFile: state + "/outbox-wal", atomically: true, encoding: .utf8)
        let gw = try site.gateway(try site.config("one", keepalive: 5, extra: "outbox_sync_ms = 100"))
        _ = try await gw.waitForLine(containing: "serial port")
        _ = try await gw.waitForLine(containing: "moved to")
        try await site.scans(1...20, readBy: gw)
        try await Self.onDisk(gw, atLeast: 20)
        let files = try FileManager.default.contentsOfDirectory(atPath: state)
        let aside = try #require(files.first { $0.hasPrefix("outbox.unreadable-") && !$0.hasSuffix("-wal") && !$0.hasSuffix("-shm") }, "\(files)")
        #expect(files.contains(aside + "-wal"), "the WAL went with it: \(files)")
        #expect(try String(contentsOfFile: state + "/" + aside + "-wal", encoding: .utf8) == "not a WAL either")
        _ = await gw.stop()
        await site.shutdown()
    }

    @Test("during an outage every outbox flush is synced (fdatasync/fsync of its WAL, seen by strace), so a power cut loses at most outbox_sync_ms")
    func everyFlushSynced() async throws {
        let strace = try TestEnvironment.require("strace")
        let site = try await Site()
        await site.broker.stop()
        let trace = site.dir + "/strace.out"
        let gw = try site.gateway(try site.config("one", keepalive: 5, extra: "outbox_sync_ms = 100"),
                                  wrap: [strace, "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", trace])
        _ = try await gw.waitForLine(containing: "serial port", timeout: .seconds(30))
        for i in 1...8 {
            try await site.scans(i * 10 + 1...i * 10 + 10, readBy: gw)
            try await Self.onDisk(gw, atLeast: i * 10)
        }
        let flushes = gw.lines.filter { $0.contains("messages on disk") }.count
        // The gateway is strace's child: stopped, strace ends too.
        let children = try String(contentsOfFile: "/proc/\(gw.pid)/task/\(gw.pid)/children", encoding: .utf8)
        let gateway = try #require(children.split(separator: " ").first.flatMap { pid_t($0) })
        kill(gateway, SIGTERM)
        _ = try await gw.waitForExit(timeout: .seconds(20))
        let synced = (try String(contentsOfFile: trace, encoding: .utf8)).split(separator: "\n").filter { $0.contains("outbox-wal>") }.count
        print("outbox: \(flushes) flushes, \(synced) syncs of its WAL")
        #expect(flushes >= 8)
        #expect(synced >= flushes, "\(synced) syncs for \(flushes) flushes")
        await site.shutdown()
    }
}
