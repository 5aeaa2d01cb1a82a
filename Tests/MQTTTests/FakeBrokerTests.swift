import NIOCore
import Synchronization
import Testing
@testable import MQTT

/// Connects `c` to `broker`, which answers a plain CONNACK; returns the broker's side.
func connected(_ c: MQTTClient, _ broker: FakeBroker, properties: MQTTProperties = .init()) async throws -> (MQTTClient, FakeConnection) {
    let connect = Task { try await c.connect() }
    let conn = try await broker.nextConnection()
    try await conn.accept(properties: properties)
    _ = try await connect.value
    return (c, conn)
}

@Suite("MQTT client driven byte by byte by a scripted broker", .timeLimit(.minutes(2)))
struct FakeBrokerTests {
    func client(_ broker: FakeBroker, keepAlive: UInt16 = 60, cleanStart: Bool = false, version: MQTTVersion = .v5) -> MQTTClient {
        var c = MQTTConfiguration(host: "127.0.0.1", port: broker.port, version: version, clientIdentifier: "fake-client")
        c.keepAlive = keepAlive
        c.cleanStart = cleanStart
        c.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(100))
        return MQTTClient(configuration: c)
    }

    @Test("QoS 1: unacknowledged PUBLISH resent with DUP=1 and the same id after reconnect")
    func dupResendQoS1() async throws {
        let broker = try await FakeBroker.start()
        let (c, conn1) = try await connected(client(broker), broker)
        let pub = Task { try await c.publish(to: "a/b", string: "x", qos: .atLeastOnce) }
        guard case .publish(let first) = try await conn1.expect() else { Issue.record("expected PUBLISH"); return }
        #expect(first.dup == false)
        await conn1.close()
        let conn2 = try await broker.nextConnection()
        let reconnect = try await conn2.accept(sessionPresent: true)
        #expect(reconnect.cleanStart == false)
        guard case .publish(let again) = try await conn2.expect() else { Issue.record("expected the PUBLISH again"); return }
        #expect(again.dup == true)
        #expect(again.packetIdentifier == first.packetIdentifier)
        #expect(again.payload == first.payload)
        conn2.send(.puback(AckPacket(packetIdentifier: again.packetIdentifier!)))
        try await pub.value
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("QoS 2: PUBLISH resent with DUP before PUBREC; PUBREL (not PUBLISH) resent after PUBREC")
    func dupResendQoS2() async throws {
        let broker = try await FakeBroker.start()
        let (c, conn1) = try await connected(client(broker), broker)
        let pub = Task { try await c.publish(to: "a/q2", string: "once", qos: .exactlyOnce) }
        guard case .publish(let p1) = try await conn1.expect(), let id = p1.packetIdentifier else { Issue.record("expected PUBLISH"); return }
        await conn1.close()

        let conn2 = try await broker.nextConnection()
        try await conn2.accept(sessionPresent: true)
        guard case .publish(let p2) = try await conn2.expect() else { Issue.record("expected PUBLISH again"); return }
        #expect(p2.dup && p2.packetIdentifier == id)
        conn2.send(.pubrec(AckPacket(packetIdentifier: id)))
        #expect(try await conn2.expect() == .pubrel(AckPacket(packetIdentifier: id)))
        await conn2.close()

        let conn3 = try await broker.nextConnection()
        try await conn3.accept(sessionPresent: true)
        #expect(try await conn3.expect() == .pubrel(AckPacket(packetIdentifier: id)), "PUBREL, not PUBLISH, after PUBREC")
        conn3.send(.pubcomp(AckPacket(packetIdentifier: id)))
        try await pub.value
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("receive maximum 3 holds the 4th publish until a PUBACK")
    func receiveMaximum() async throws {
        let broker = try await FakeBroker.start()
        let c = client(broker)
        let connect = Task { try await c.connect() }
        let conn = try await broker.nextConnection()
        var props = MQTTProperties()
        props.receiveMaximum = 3
        try await conn.accept(properties: props)
        _ = try await connect.value
        let pubs = (0..<4).map { i in Task { try await c.publish(to: "rm/\(i)", string: "\(i)", qos: .atLeastOnce) } }
        var ids: [UInt16] = []
        for _ in 0..<3 {
            guard case .publish(let p) = try await conn.expect() else { Issue.record("expected PUBLISH"); return }
            ids.append(p.packetIdentifier!)
        }
        // All four were handed to the client: three in flight, one held back.
        let deadline = ContinuousClock.now + .seconds(10)
        while await c.queuedCount + c.inFlightCount < 4 && ContinuousClock.now < deadline { await Task.yield() }
        #expect(await c.inFlightCount == 3)
        #expect(await c.queuedCount == 1)
        conn.send(.puback(AckPacket(packetIdentifier: ids[0])))
        guard case .publish(let fourth) = try await conn.expect() else { Issue.record("expected the 4th PUBLISH"); return }
        #expect(!ids.dropFirst().contains(fourth.packetIdentifier!))
        for id in ids.dropFirst() + [fourth.packetIdentifier!] { conn.send(.puback(AckPacket(packetIdentifier: id))) }
        for p in pubs { try await p.value }
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("a message published 'ahead' goes before the queued backlog, and is not the one dropped from a full queue")
    func publishAhead() async throws {
        let broker = try await FakeBroker.start()
        var config = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "fake-client")
        config.queueLimit = 3
        let c = MQTTClient(configuration: config)
        let connect = Task { try await c.connect() }
        let conn = try await broker.nextConnection()
        var props = MQTTProperties()
        props.receiveMaximum = 1
        try await conn.accept(properties: props)
        _ = try await connect.value
        try await c.enqueue(to: "backlog/0", payload: [0], qos: .atLeastOnce)
        guard case .publish(let first) = try await conn.expect() else { Issue.record("expected PUBLISH"); return }
        for i in 1...3 { try await c.enqueue(to: "backlog/\(i)", payload: [UInt8(i)], qos: .atLeastOnce) }
        let last = Task { try await c.publish(to: "status", payload: Array("offline".utf8), qos: .atLeastOnce, retain: true, ahead: true) }
        let deadline = ContinuousClock.now + .seconds(10)
        while await c.droppedCount == 0 && ContinuousClock.now < deadline { await Task.yield() }
        // The queue is full (3): backlog/1 was dropped for the status, not the status itself.
        #expect(await c.droppedCount == 1)
        conn.send(.puback(AckPacket(packetIdentifier: first.packetIdentifier!)))
        guard case .publish(let next) = try await conn.expect() else { Issue.record("expected PUBLISH"); return }
        #expect(next.topic == "status", "the status waited behind the backlog: \(next.topic)")
        conn.send(.puback(AckPacket(packetIdentifier: next.packetIdentifier!)))
        try await last.value
        var rest: [String] = []
        for _ in 0..<2 {
            guard case .publish(let p) = try await conn.expect() else { break }
            rest.append(p.topic)
            conn.send(.puback(AckPacket(packetIdentifier: p.packetIdentifier!)))
        }
        #expect(rest == ["backlog/2", "backlog/3"])
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("publishInOrder: the messages go ahead of the backlog in the order given, and each gets its own result in that order")
    func publishInOrder() async throws {
        let broker = try await FakeBroker.start()
        let config = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "fake-client")
        let c = MQTTClient(configuration: config)
        let connect = Task { try await c.connect() }
        let conn = try await broker.nextConnection()
        var props = MQTTProperties()
        props.receiveMaximum = 1   // one in flight: the rest wait in the queue, where order is decided
        try await conn.accept(properties: props)
        _ = try await connect.value
        for i in 0..<3 { try await c.enqueue(to: "backlog/\(i)", payload: [UInt8(i)], qos: .atLeastOnce) }
        guard case .publish(let first) = try await conn.expect() else { Issue.record("expected PUBLISH"); return }
        let topics = (0..<12).map { "d\($0)/status" } + ["status"]
        let results = Task { await c.publishInOrder(topics.map { ($0, Array("offline".utf8)) }, qos: .atLeastOnce, retain: true, ahead: true) }
        // Queued in one step: wait until all of them are (the queue then holds the two backlog
        // messages left and the thirteen), then let them out one by one.
        let deadline = ContinuousClock.now + .seconds(10)
        while await c.session.queue.count < 15 && ContinuousClock.now < deadline { await Task.yield() }
        conn.send(.puback(AckPacket(packetIdentifier: first.packetIdentifier!)))
        var seen: [String] = []
        for _ in 0..<(topics.count + 2) {
            guard case .publish(let p) = try await conn.expect() else { break }
            seen.append(p.topic)
            // The broker refuses one of them: only its own result says so.
            let code: MQTTReasonCode = p.topic == "d3/status" ? .notAuthorized : .success
            conn.send(.puback(AckPacket(packetIdentifier: p.packetIdentifier!, reasonCode: code)))
        }
        #expect(seen == topics + ["backlog/1", "backlog/2"])
        let outcome = await results.value
        #expect(outcome.count == topics.count)
        for (topic, r) in zip(topics, outcome) {
            switch r {
            case .success: #expect(topic != "d3/status", "\(topic)")
            case .failure: #expect(topic == "d3/status", "\(topic)")
            }
        }
        await c.closeAbruptly()
        await broker.close()
    }

    /// A 3.1.1 client (which cannot tell the broker its maximum) taking packets of 1000 bytes at most.
    func smallPacketClient311(_ broker: FakeBroker) -> MQTTClient {
        var config = MQTTConfiguration(host: "127.0.0.1", port: broker.port, version: .v3_1_1, clientIdentifier: "fake-client")
        config.maximumPacketSize = 1000
        return MQTTClient(configuration: config)
    }

    @Test("3.1.1: a PUBLISH over the maximum packet size, in pieces, is acknowledged and dropped; the next one is delivered")
    func oversizedOn311() async throws {
        let broker = try await FakeBroker.start()
        let (c, conn) = try await connected(smallPacketClient311(broker), broker)
        var big = ByteBuffer()
        MQTTPacketCodec.encode(.publish(PublishPacket(topic: "cmd/big", payload: [UInt8](repeating: 7, count: 5000), qos: .atLeastOnce,
                                                      retain: true, packetIdentifier: 42)), version: .v3_1_1, into: &big)
        let bytes = Array(big.readableBytesView)
        // In pieces: the fixed header alone first, then the topic, then the rest in chunks.
        for range in [0..<2, 2..<9, 9..<1500, 1500..<bytes.count] { conn.sendRaw(Array(bytes[range])) }
        #expect(try await conn.expect() == .puback(AckPacket(packetIdentifier: 42)))
        conn.send(.publish(PublishPacket(topic: "cmd/small", payload: [1], qos: .atMostOnce)))
        var received: MQTTMessage?
        for await m in c.messages { received = m; break }
        #expect(received?.topic == "cmd/small")
        #expect(await c.droppedIncomingCount == 1)
        #expect(await c.isConnected)
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("acknowledgements leave in the order their packets were read, whatever they answer: PUBACK, PUBREC (also of a dropped oversized message), PUBREL, PUBCOMP")
    func acknowledgementOrder() async throws {
        let broker = try await FakeBroker.start()
        let (c, conn) = try await connected(smallPacketClient311(broker), broker)
        let pub = Task { try await c.publish(to: "out/q2", string: "x", qos: .exactlyOnce) }
        guard case .publish(let out) = try await conn.expect(), let outID = out.packetIdentifier else { Issue.record("expected PUBLISH"); return }
        // One write from the broker: what the client must answer, in this order.
        var b = ByteBuffer()
        let big = [UInt8](repeating: 7, count: 3000)
        for packet: MQTTPacket in [
            .publish(PublishPacket(topic: "in/a", payload: [1], qos: .atLeastOnce, packetIdentifier: 1)),
            .publish(PublishPacket(topic: "in/big", payload: big, qos: .atLeastOnce, packetIdentifier: 2)),
            .publish(PublishPacket(topic: "in/b", payload: [3], qos: .exactlyOnce, packetIdentifier: 3)),
            .pubrec(AckPacket(packetIdentifier: outID)),
            .publish(PublishPacket(topic: "in/big", payload: big, qos: .exactlyOnce, packetIdentifier: 4)),
            .pubrel(AckPacket(packetIdentifier: 3)),
        ] { MQTTPacketCodec.encode(packet, version: .v3_1_1, into: &b) }
        conn.sendRaw(Array(b.readableBytesView))
        var answers: [MQTTPacket] = []
        for _ in 0..<6 { answers.append(try await conn.expect()) }
        #expect(answers == [.puback(AckPacket(packetIdentifier: 1)), .puback(AckPacket(packetIdentifier: 2)),
                            .pubrec(AckPacket(packetIdentifier: 3)), .pubrel(AckPacket(packetIdentifier: outID)),
                            .pubrec(AckPacket(packetIdentifier: 4)), .pubcomp(AckPacket(packetIdentifier: 3))])
        conn.send(.pubcomp(AckPacket(packetIdentifier: outID)))
        try await pub.value
        #expect(await c.droppedIncomingCount == 2)
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("the incoming stream is bounded: past incomingLimit unread messages, newer ones are dropped and counted")
    func incomingLimit() async throws {
        let broker = try await FakeBroker.start()
        var config = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "fake-client")
        config.incomingLimit = 2
        let c = MQTTClient(configuration: config)
        let (_, conn) = try await connected(c, broker)
        for i in 0..<5 { conn.send(.publish(PublishPacket(topic: "in/\(i)", payload: [UInt8(i)], qos: .atLeastOnce, packetIdentifier: UInt16(i + 1)))) }
        // Every one is acknowledged (the broker is not held up), three are dropped.
        for i in 0..<5 { #expect(try await conn.expect() == .puback(AckPacket(packetIdentifier: UInt16(i + 1)))) }
        #expect(await c.droppedIncomingCount == 3)
        var topics: [String] = []
        for await m in c.messages {
            topics.append(m.topic)
            if topics.count == 2 { break }
        }
        #expect(topics == ["in/0", "in/1"])
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("a missing PINGRESP closes the connection")
    func missingPingResp() async throws {
        let broker = try await FakeBroker.start()
        var cfg = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "ka")
        cfg.keepAlive = 1
        cfg.reconnect = nil
        let c = MQTTClient(configuration: cfg)
        let connect = Task { try await c.connect() }
        let conn = try await broker.nextConnection()
        try await conn.accept()
        _ = try await connect.value
        #expect(try await conn.expect() == .pingreq)
        // No PINGRESP: the client must give up on the link by itself.
        try await conn.waitClosed()
        let disconnected = Task { try await waitForEvent(c) { if case .disconnected(.keepaliveTimeout) = $0 { true } else { false } } }
        try await disconnected.value
        #expect(await c.isConnected == false)
        await broker.close()
    }

    @Test("an unexpected PUBACK is ignored and the connection stays up")
    func unexpectedPubAck() async throws {
        let broker = try await FakeBroker.start()
        let (c, conn) = try await connected(client(broker), broker)
        conn.send(.puback(AckPacket(packetIdentifier: 999)))
        let pub = Task { try await c.publish(to: "x", string: "y", qos: .atLeastOnce) }
        guard case .publish(let p) = try await conn.expect() else { Issue.record("expected PUBLISH"); return }
        conn.send(.puback(AckPacket(packetIdentifier: p.packetIdentifier!)))
        try await pub.value
        #expect(await c.isConnected)
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("server keep alive from CONNACK is adopted")
    func serverKeepAlive() async throws {
        let broker = try await FakeBroker.start()
        let c = client(broker, keepAlive: 600)
        let connect = Task { try await c.connect() }
        let conn = try await broker.nextConnection()
        var props = MQTTProperties()
        props.serverKeepAlive = 1
        let sent = try await conn.accept(properties: props)
        #expect(sent.keepAlive == 600)
        _ = try await connect.value
        #expect(await c.effectiveKeepAlive == 1)
        #expect(try await conn.expect() == .pingreq, "pings at the broker's 1 s, not our 600 s")
        conn.send(.pingresp)
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("falls back to 3.1.1 when the broker refuses 5.0")
    func fallback() async throws {
        let broker = try await FakeBroker.start()
        let c = client(broker)
        let connect = Task { try await c.connect() }
        let conn1 = try await broker.nextConnection()
        guard case .connect = try await conn1.expect() else { Issue.record("expected CONNECT"); return }
        #expect(conn1.version.withLock { $0 } == .v5)
        conn1.sendRaw([0x20, 0x02, 0x00, 0x01])   // 3.1.1 CONNACK: unacceptable protocol version
        await conn1.close()
        let conn2 = try await broker.nextConnection()
        try await conn2.accept()
        #expect(conn2.version.withLock { $0 } == .v3_1_1)
        _ = try await connect.value
        #expect(await c.version == .v3_1_1)
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("onMessage: each message reaches the handler in arrival order, before its PUBACK/PUBREC leaves; nil hands them back to the stream")
    func messageHandler() async throws {
        let broker = try await FakeBroker.start()
        let c = client(broker)
        let (_, conn) = try await connected(c, broker)
        let seen = Mutex<[String]>([])
        await c.onMessage { m in seen.withLock { $0.append(m.topic) } }
        conn.send(.publish(PublishPacket(topic: "in/0", payload: [0], qos: .atMostOnce)))
        conn.send(.publish(PublishPacket(topic: "in/1", payload: [1], qos: .atLeastOnce, packetIdentifier: 1)))
        #expect(try await conn.expect() == .puback(AckPacket(packetIdentifier: 1)))
        #expect(seen.withLock { $0 } == ["in/0", "in/1"], "the handler had both when the PUBACK arrived")
        conn.send(.publish(PublishPacket(topic: "in/2", payload: [2], qos: .exactlyOnce, packetIdentifier: 2)))
        #expect(try await conn.expect() == .pubrec(AckPacket(packetIdentifier: 2)))
        #expect(seen.withLock { $0 } == ["in/0", "in/1", "in/2"])
        await c.onMessage(nil)
        conn.send(.publish(PublishPacket(topic: "in/3", payload: [3], qos: .atMostOnce)))
        var first: String?
        for await m in c.messages { first = m.topic; break }
        #expect(first == "in/3", "nothing the handler took went to the stream")
        #expect(seen.withLock { $0 }.count == 3)
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("inbound QoS 2 with a DUP is delivered once")
    func inboundQoS2Once() async throws {
        let broker = try await FakeBroker.start()
        let c = client(broker)
        let inbox = Inbox(c)
        let connect = Task { try await c.connect() }
        let conn = try await broker.nextConnection()
        try await conn.accept()
        _ = try await connect.value
        let p = PublishPacket(topic: "cmd/unlock", payload: Array("true".utf8), qos: .exactlyOnce, packetIdentifier: 5)
        conn.send(.publish(p))
        #expect(try await conn.expect() == .pubrec(AckPacket(packetIdentifier: 5)))
        var dup = p
        dup.dup = true
        conn.send(.publish(dup))
        #expect(try await conn.expect() == .pubrec(AckPacket(packetIdentifier: 5)))
        conn.send(.pubrel(AckPacket(packetIdentifier: 5)))
        #expect(try await conn.expect() == .pubcomp(AckPacket(packetIdentifier: 5)))
        conn.send(.publish(PublishPacket(topic: "marker", payload: [])))
        #expect(try await inbox.next().topic == "cmd/unlock")
        #expect(try await inbox.next().topic == "marker", "the DUP was not delivered a second time")
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("a malformed packet from the broker closes the connection with DISCONNECT 0x81")
    func malformedFromBroker() async throws {
        let broker = try await FakeBroker.start()
        let (c, conn) = try await connected(client(broker), broker)
        conn.sendRaw([0x36, 5, 0, 1, 0x74, 0, 1])   // PUBLISH with QoS 3
        #expect(try await conn.expect() == .disconnect(ReasonPacket(reasonCode: .malformedPacket)))
        try await conn.waitClosed()
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("connections we close ourselves right after connecting (a packet over our maximum, 5.0) are not taken for a twin with our client id")
    func ownClosesAreNotTakeovers() async throws {
        let broker = try await FakeBroker.start()
        var config = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "fake-client")
        config.maximumPacketSize = 1000
        config.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(100))
        let c = MQTTClient(configuration: config)
        let events = c.events
        // Until the client shuts down (which finishes the stream).
        let seen = Task { var all: [MQTTEvent] = []; for await e in events { all.append(e) }; return all }
        let connect = Task { try await c.connect() }
        for round in 0..<4 {
            let conn = try await broker.nextConnection()
            try await conn.accept()
            if round == 0 { _ = try await connect.value }
            conn.send(.publish(PublishPacket(topic: "big", payload: [UInt8](repeating: 1, count: 2000), qos: .atMostOnce)))
            try await conn.waitClosed()
        }
        // A fifth connection attempt shows the client did not back off to its maximum either.
        _ = try await broker.nextConnection()
        await c.closeAbruptly()
        let all = await seen.value
        #expect(!all.contains(.sessionTakenOver), "\(all)")
        await broker.close()
    }

    @Test("DISCONNECT 'session taken over' is reported and the client backs off")
    func sessionTakenOver() async throws {
        let broker = try await FakeBroker.start()
        let (c, conn) = try await connected(client(broker), broker)
        conn.send(.disconnect(ReasonPacket(reasonCode: .sessionTakenOver)))
        await conn.close()
        try await waitForEvent(c) { $0 == .sessionTakenOver }
        await c.closeAbruptly()
        await broker.close()
    }
}

@Suite("MQTT client queue and subscriptions")
struct ClientQueueTests {
    @Test("while disconnected the queue is bounded: oldest dropped first and counted; the rest go out in order")
    func boundedQueue() async throws {
        let broker = try await FakeBroker.start()
        var cfg = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "queue")
        cfg.queueLimit = 3
        cfg.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50))
        let c = MQTTClient(configuration: cfg)
        // One at a time: each publish is offered to the (unconnected) client before the next
        // starts (tasks started together reach the actor in no set order).
        var sends: [Task<Result<Void, MQTTError>, Never>] = []
        let deadline = ContinuousClock.now + .seconds(10)
        for i in 0..<5 {
            sends.append(Task { () -> Result<Void, MQTTError> in
                do { try await c.publish(to: "q/\(i)", string: "\(i)", qos: .atLeastOnce); return .success(()) }
                catch let e as MQTTError { return .failure(e) } catch { return .failure(.shutdown) }
            })
            while await c.droppedCount + c.queuedCount < i + 1 && ContinuousClock.now < deadline { await Task.yield() }
        }
        #expect(await c.droppedCount == 2)
        #expect(await c.queuedCount == 3)
        await c.start()
        let conn = try await broker.nextConnection()
        try await conn.accept()
        var topics: [String] = []
        for _ in 0..<3 {
            guard case .publish(let p) = try await conn.expect() else { Issue.record("expected PUBLISH"); return }
            topics.append(p.topic)
            conn.send(.puback(AckPacket(packetIdentifier: p.packetIdentifier!)))
        }
        var dropped = 0
        for s in sends { if case .failure(.droppedFromQueue) = await s.value { dropped += 1 } }
        #expect(dropped == 2)
        #expect(topics.count == 3)
        #expect(topics == topics.sorted(), "queued messages go out in order")
        await c.closeAbruptly()
        await broker.close()
    }

    @Test("per-filter SUBACK failures are surfaced; only granted filters are kept for restore")
    func subackFailures() async throws {
        let broker = try await FakeBroker.start()
        var cfg = MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientIdentifier: "subs")
        cfg.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50))
        let c = MQTTClient(configuration: cfg)
        let connect = Task { try await c.connect() }
        let conn = try await broker.nextConnection()
        try await conn.accept()
        _ = try await connect.value
        let sub = Task { try await c.subscribe([MQTTSubscription("ok/#", qos: .exactlyOnce), MQTTSubscription("secret/#")]) }
        guard case .subscribe(let s) = try await conn.expect() else { Issue.record("expected SUBSCRIBE"); return }
        conn.send(.suback(SubAckPacket(packetIdentifier: s.packetIdentifier, reasonCodes: [.grantedQoS2, .notAuthorized])))
        #expect(try await sub.value == [.grantedQoS2, .notAuthorized])
        await conn.close()
        let conn2 = try await broker.nextConnection()
        try await conn2.accept(sessionPresent: false)
        guard case .subscribe(let restored) = try await conn2.expect() else { Issue.record("expected the restore SUBSCRIBE"); return }
        #expect(restored.subscriptions.map(\.filter) == ["ok/#"])
        #expect(restored.subscriptions.first?.qos == .exactlyOnce)
        await c.closeAbruptly()
        await broker.close()
    }
}
