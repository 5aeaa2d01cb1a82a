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

        init() async throws {
            pty = try await PtyPair.start()
            // A generous start deadline: a loaded machine must not turn the command into "busy".
            plan = GatewayPlan(try ConfigLoader.parse("[gateway]\nid = \"x\"\n" + SerialDeviceTests.reader(pty.a, extra: "response_timeout_ms = 5000")))
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
}
