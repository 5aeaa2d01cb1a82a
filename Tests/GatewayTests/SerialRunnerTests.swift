@testable import Gateway
import GatewayConfig
import Logging
@testable import MQTT
import Testing
import TestSupport

/// A serial device's runner in-process: a real line (a socat pty pair; the test plays the device
/// on the far end), recorders for the broker side. `SerialDeviceTests` keeps it end to end.
@Suite("Serial device runner, in-process")
struct SerialRunnerTests {
    struct Rig {
        let timeline = Timeline()
        let pty: PtyPair
        let far: FarEnd
        let runner: SerialDeviceRunner
        let plan: GatewayPlan

        init(extra: String = "") async throws {
            pty = try await PtyPair.start()
            // A generous start deadline: a loaded machine must not turn the command into "busy".
            plan = GatewayPlan(try ConfigLoader.parse("[gateway]\nid = \"x\"\n" + SerialDeviceTests.reader(pty.a, extra: "response_timeout_ms = 5000\n" + extra)))
            let logger = Logger(label: "test")
            let runner = CommandRunner(topics: plan.topics, gateway: plan.configuration.gateway, signing: nil,
                                       clockSync: ClockSync(logger: logger, probe: { true }), clock: SystemClock(),
                                       answerer: RecordingAnswerer(timeline: timeline), telemetry: nil)
            let journal = PulseJournal.open(directory: try TestEnvironment.makeTemporaryDirectory("serial"), hasPulses: false, logger: logger).journal
            let services = UnitServices(topics: plan.topics, gateway: plan.configuration.gateway, publisher: RecordingPublisher(timeline: timeline),
                                        commands: runner, board: StatusBoard(), journal: journal, clock: SystemClock(), telemetry: nil, executor: nil)
            self.runner = SerialDeviceRunner(settings: plan.configuration.serialDevices[0], services: services, liveness: nil, logger: logger)
            far = try FarEnd(pty.b)
        }

        func set(_ command: String, _ payload: String) -> Bool {
            let message = MQTTMessage(topic: "gateway/x/qr/\(command)/set", payload: Array(payload.utf8), qos: .atLeastOnce,
                                      retain: false, properties: MQTTProperties())
            return runner.submit(.set(message, command: command, receivedAt: .now))
        }

        func answer(_ n: Int) async throws -> String {
            try await timeline.await(n, of: "answer")
            return timeline.entries.filter { $0.hasPrefix("answer ") }[n - 1]
        }

        func stop() async {
            await runner.stop()
            await pty.stop()
        }
    }

    @Test("frames become values by their points' patterns; an unmatched frame goes to raw; online once the port is open")
    func frames() async throws {
        let rig = try await Rig()
        rig.runner.start()
        try await rig.timeline.await(startingWith: "status qr online")
        await rig.far.send("QR:abc\nT=21.5C\nW=12.5;H=180\nhello\n")
        try await rig.timeline.await(startingWith: "data gateway/x/qr/raw")
        let data = rig.timeline.entries.filter { $0.hasPrefix("data ") }
        #expect(data == ["data gateway/x/qr/scan abc", "data gateway/x/qr/temp 21.5", "data gateway/x/qr/weight 12.5",
                         "data gateway/x/qr/height 180", "data gateway/x/qr/raw hello"])
        await rig.stop()
    }

    @Test("a command is checked, sent once to the line and answered; a value its pattern refuses is answered and never sent")
    func commands() async throws {
        let rig = try await Rig()
        rig.runner.start()
        try await rig.timeline.await(startingWith: "status qr online")
        #expect(rig.set("beep", "5"))
        #expect(try await rig.answer(1).hasSuffix(#"{"ok":true,"value":"5"}"#))
        #expect(await rig.far.receive(8) == Array("BEEP 5\r\n".utf8))
        #expect(rig.set("beep", "123"))
        #expect(try await rig.answer(2).contains("does not match the pattern"))
        #expect(rig.set("nothing", "1"))
        #expect(try await rig.answer(3).contains("unknown command 'nothing' on device 'qr' (commands: beep, open)"))
        #expect(await rig.far.drain().isEmpty, "a refused command reached the line")
        await rig.stop()
    }

    @Test("the port vanishes: offline, and a command is refused at once, not queued for later")
    func portGone() async throws {
        let rig = try await Rig()
        rig.runner.start()
        try await rig.timeline.await(startingWith: "status qr online")
        await rig.pty.process.stop()
        try await rig.timeline.await(startingWith: "status qr offline")
        #expect(rig.set("open", "1"))
        #expect(try await rig.answer(1).contains("device 'qr' is offline"))
        await rig.stop()
    }

    @Test("an endless frame is dropped and counted, never published, and the next line still works")
    func oversized() async throws {
        let rig = try await Rig()
        rig.runner.start()
        try await rig.timeline.await(startingWith: "status qr online")
        await rig.far.send("QR:first\n")
        try await rig.timeline.await(startingWith: "data gateway/x/qr/scan first")
        let junk = [UInt8](repeating: UInt8(ascii: "Z"), count: 64 * 1024)
        for i in 0..<4 {   // 256 KiB without a line end, 4096 times max_frame
            guard await rig.far.send(junk) else { Issue.record("the runner stopped reading after \(i * 64) KiB"); break }
        }
        await rig.far.send("\nQR:after\n")
        try await rig.timeline.await(startingWith: "data gateway/x/qr/scan after")
        #expect(!rig.timeline.entries.contains { $0.hasPrefix("data gateway/x/qr/raw") && $0.count > "data gateway/x/qr/raw ".count + 64 })
        await rig.stop()
    }

    @Test("the port vanishes: offline; it comes back at the same path: online, and frames flow again")
    func unplugged() async throws {
        let rig = try await Rig()
        rig.runner.start()
        try await rig.timeline.await(startingWith: "status qr online")
        await rig.pty.stop(removeDirectory: false)
        try await rig.timeline.await(startingWith: "status qr offline")
        let again = try await PtyPair.start(directory: rig.pty.directory)
        try await rig.timeline.await(2, startingWith: "status qr online")
        let far = try FarEnd(again.b)
        await far.send("QR:back\n")
        try await rig.timeline.await(startingWith: "data gateway/x/qr/scan back")
        await rig.runner.stop()
        await again.stop()
    }

    @Test("idle_timeout_ms: offline when frames stop, online again with the next frame")
    func idle() async throws {
        let rig = try await Rig(extra: "idle_timeout_ms = 300")
        rig.runner.start()
        try await rig.timeline.await(startingWith: "status qr online")   // the port is open
        await rig.far.send("QR:1\n")
        try await rig.timeline.await(startingWith: "data gateway/x/qr/scan 1")
        try await rig.timeline.await(startingWith: "status qr offline")
        await rig.far.send("QR:2\n")
        try await rig.timeline.await(startingWith: "data gateway/x/qr/scan 2")
        try await rig.timeline.await(2, startingWith: "status qr online")
        // (300 ms later it is idle, and offline, again: only the first three count here.)
        let statuses = rig.timeline.entries.filter { $0.hasPrefix("status qr") }
        #expect(Array(statuses.prefix(3)) == ["status qr online", "status qr offline", "status qr online"])
        await rig.stop()
    }
}
