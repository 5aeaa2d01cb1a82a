import Foundation
import MQTT
import Synchronization
import Testing
import TestSupport

@Suite("MQTT client against a real Mosquitto", .timeLimit(.minutes(3)))
struct MosquittoTests {
    @Test("QoS 0, 1 and 2 round trips", arguments: [MQTTVersion.v5, .v3_1_1])
    func roundTrips(version: MQTTVersion) async throws {
        try await withBroker { broker in
            let sub = MQTTClient(configuration: config(broker, version))
            let pub = MQTTClient(configuration: config(broker, version))
            try await sub.connect()
            try await pub.connect()
            let inbox = Inbox(sub)
            let base = uniqueID("rt")
            let codes = try await sub.subscribe([MQTTSubscription("\(base)/#", qos: .exactlyOnce)])
            #expect(codes == [.grantedQoS2])
            for qos in [MQTTQoS.atMostOnce, .atLeastOnce, .exactlyOnce] {
                try await pub.publish(to: "\(base)/q\(qos.rawValue)", string: "hello \(qos.rawValue)", qos: qos)
                let m = try await inbox.next()
                #expect(m.topic == "\(base)/q\(qos.rawValue)")
                #expect(m.payloadString == "hello \(qos.rawValue)")
                #expect(m.qos == qos)
            }
            #expect(await pub.inFlightCount == 0)
            await pub.disconnect()
            await sub.disconnect()
        }
    }

    @Test("a refused connection reads as plain words: 'cannot connect: 127.0.0.1:<port>: connection refused'")
    func refusedInPlainWords() async throws {
        let port = try TestEnvironment.freePort()   // nothing listens there
        var c = MQTTConfiguration(host: "127.0.0.1", port: port, clientIdentifier: uniqueID("refused"))
        c.reconnect = nil
        let client = MQTTClient(configuration: c)
        do {
            try await client.connect()
            Issue.record("connected to a closed port")
        } catch {
            #expect("\(error)" == "cannot connect: 127.0.0.1:\(port): connection refused")
        }
        await client.closeAbruptly()
    }

    @Test("retained message reaches a late subscriber; an empty retained publish clears it")
    func retained() async throws {
        try await withBroker { broker in
            let pub = MQTTClient(configuration: config(broker))
            try await pub.connect()
            let topic = uniqueID("ret") + "/door"
            try await pub.publish(to: topic, string: "open", qos: .atLeastOnce, retain: true)
            let late = MQTTClient(configuration: config(broker))
            try await late.connect()
            let inbox = Inbox(late)
            try await late.subscribe([MQTTSubscription(topic)])
            let m = try await inbox.next()
            #expect(m.payloadString == "open")
            #expect(m.retain)
            try await pub.publish(to: topic, payload: [], qos: .atLeastOnce, retain: true)
            _ = try await inbox.next { $0.payload.isEmpty }   // the live clear is forwarded once
            let later = MQTTClient(configuration: config(broker))
            try await later.connect()
            let inbox2 = Inbox(later)
            try await later.subscribe([MQTTSubscription(topic), MQTTSubscription(topic + "/marker")])
            try await pub.publish(to: topic + "/marker", string: "m", qos: .atLeastOnce)
            let first = try await inbox2.next()
            #expect(first.topic == topic + "/marker", "no retained message is left on \(topic)")
            for c in [pub, late, later] { await c.disconnect() }
        }
    }

    @Test("the will is published when the socket drops, not after a clean DISCONNECT", arguments: [MQTTVersion.v5, .v3_1_1])
    func will(version: MQTTVersion) async throws {
        try await withBroker { broker in
            let willTopic = uniqueID("will") + "/status"
            let observer = MQTTClient(configuration: config(broker))
            try await observer.connect()
            let inbox = Inbox(observer)
            try await observer.subscribe([MQTTSubscription(willTopic, qos: .atLeastOnce)])

            var clean = config(broker, version)
            clean.will = MQTTWill(topic: willTopic, payload: Array("offline-clean".utf8), qos: .atLeastOnce, retain: false)
            let a = MQTTClient(configuration: clean)
            try await a.connect()
            await a.disconnect()
            let marker = MQTTClient(configuration: config(broker))
            try await marker.connect()
            try await marker.publish(to: willTopic, string: "marker", qos: .atLeastOnce)
            #expect(try await inbox.next().payloadString == "marker", "no will after a clean DISCONNECT")

            var dirty = config(broker, version)
            dirty.will = MQTTWill(topic: willTopic, payload: Array("offline".utf8), qos: .atLeastOnce, retain: false)
            let b = MQTTClient(configuration: dirty)
            try await b.connect()
            await b.closeAbruptly()
            #expect(try await inbox.next().payloadString == "offline")
            await marker.disconnect()
            await observer.disconnect()
        }
    }

    @Test("reconfigure: a connected client moves to another broker with one clean DISCONNECT (no will on the first) and keeps its subscriptions")
    func reconfigure() async throws {
        try await withBroker { first in
            try await withBroker { second in
                let willTopic = uniqueID("will") + "/status"
                let watcher = MQTTClient(configuration: config(first))
                try await watcher.connect()
                let firstInbox = Inbox(watcher)
                try await watcher.subscribe([MQTTSubscription(willTopic, qos: .atLeastOnce)])

                var settings = config(first)
                settings.will = MQTTWill(topic: willTopic, payload: Array("offline".utf8), qos: .atLeastOnce, retain: false)
                let client = MQTTClient(configuration: settings)
                try await client.connect()
                let inbox = Inbox(client)
                let topic = uniqueID("moved") + "/t"
                try await client.subscribe([MQTTSubscription(topic, qos: .atLeastOnce)])
                var moved = settings
                moved.port = second.port
                await client.reconfigure(moved)
                // The second connected event (the first, buffered, was the first broker's).
                let connects = Mutex(0)
                try await waitForEvent(client) { e in
                    guard case .connected = e else { return false }
                    return connects.withLock { $0 += 1; return $0 == 2 }
                }
                #expect(await client.configuration.port == second.port)
                // The subscription came along; the first broker got a clean DISCONNECT (no will).
                let sender = MQTTClient(configuration: config(second))
                try await sender.connect()
                try await sender.publish(to: topic, string: "on the second broker", qos: .atLeastOnce)
                #expect(try await inbox.next().payloadString == "on the second broker")
                let marker = MQTTClient(configuration: config(first))
                try await marker.connect()
                try await marker.publish(to: willTopic, string: "marker", qos: .atLeastOnce)
                #expect(try await firstInbox.next().payloadString == "marker", "the will was published on the first broker")
                for c in [client, sender, marker, watcher] { await c.disconnect() }
            }
        }
    }

    @Test("a persistent session receives QoS 1 messages queued while offline", arguments: [MQTTVersion.v5, .v3_1_1])
    func persistentSession(version: MQTTVersion) async throws {
        try await withBroker { broker in
            let id = uniqueID("persist")
            let topic = id + "/cmd"
            var c = config(broker, version, id: id)
            c.cleanStart = false
            c.sessionExpiry = 300
            let first = MQTTClient(configuration: c)
            try await first.connect()
            try await first.subscribe([MQTTSubscription(topic, qos: .atLeastOnce)])
            await first.closeAbruptly()

            let pub = MQTTClient(configuration: config(broker))
            try await pub.connect()
            for i in 0..<3 { try await pub.publish(to: topic, string: "queued \(i)", qos: .atLeastOnce) }

            let second = MQTTClient(configuration: c)
            let inbox = Inbox(second)
            let ack = try await second.connect()
            #expect(ack.sessionPresent)
            for i in 0..<3 { #expect(try await inbox.next().payloadString == "queued \(i)") }
            await pub.disconnect()
            await second.disconnect()
        }
    }

    @Test("reconnects after the broker restarts and the subscriptions work again")
    func brokerRestart() async throws {
        try await withBroker { broker in
            let client = MQTTClient(configuration: config(broker))
            let inbox = Inbox(client)
            try await client.connect()
            let topic = uniqueID("restart") + "/x"
            try await client.subscribe([MQTTSubscription(topic, qos: .atLeastOnce)])
            try await broker.restart()
            try await waitForEvent(client) { if case .disconnected = $0 { true } else { false } }
            try await waitForEvent(client) { if case .connected = $0 { true } else { false } }
            let pub = MQTTClient(configuration: config(broker))
            try await pub.connect()
            try await pub.publish(to: topic, string: "after restart", qos: .atLeastOnce)
            #expect(try await inbox.next().payloadString == "after restart")
            await pub.disconnect()
            await client.disconnect()
        }
    }

    @Test("QoS 1 publishes made while the broker is down are delivered after it comes back")
    func queueWhileDown() async throws {
        try await withBroker { broker in
            let sub = uniqueID("q")
            var sc = config(broker, id: sub)
            sc.cleanStart = false
            sc.sessionExpiry = 300
            let client = MQTTClient(configuration: config(broker))
            try await client.connect()
            let disconnected = Task { try await waitForEvent(client) { if case .disconnected = $0 { true } else { false } } }
            await broker.stop()
            try await disconnected.value
            #expect(await client.isConnected == false)
            let sends = (0..<5).map { i in Task { try await client.publish(to: "\(sub)/t", string: "m\(i)", qos: .atLeastOnce) } }
            try await broker.restart()
            for s in sends { try await s.value }   // every publish acknowledged after reconnect
            #expect(await client.queuedCount == 0)
            #expect(await client.inFlightCount == 0)
            await client.disconnect()
        }
    }

    @Test("wrong password is refused with a clear error; the right one connects", arguments: [MQTTVersion.v5, .v3_1_1])
    func authentication(version: MQTTVersion) async throws {
        try await withBroker { broker in
            var c = MQTTConfiguration(host: "127.0.0.1", port: broker.authPort, version: version, clientIdentifier: uniqueID())
            c.username = broker.username
            c.password = Array("wrong".utf8)
            do {
                try await MQTTClient(configuration: c).connect()
                Issue.record("a wrong password must be refused")
            } catch let e as MQTTError {
                guard case .connectionRefused(let code, _) = e else { Issue.record("unexpected \(e)"); return }
                #expect(code == .badUserNameOrPassword || code == .notAuthorized)
                #expect("\(e)".contains("bad user name or password") || "\(e)".contains("not authorized"))
                #expect(e.isPermanent)
            }
            c.password = Array(broker.password.utf8)
            let ok = MQTTClient(configuration: c)
            try await ok.connect()
            #expect(await ok.isConnected)
            await ok.disconnect()
        }
    }

    @Test("a refusal that retrying cannot fix (bad password) backs off to the longest delay at once")
    func permanentRefusalBacksOff() async throws {
        try await withBroker { broker in
            var c = MQTTConfiguration(host: "127.0.0.1", port: broker.authPort, clientIdentifier: uniqueID())
            c.username = broker.username
            c.password = Array("wrong".utf8)
            c.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(10), maximumDelay: .seconds(20), jitter: 0.5)
            let client = MQTTClient(configuration: c)
            let events = client.events
            await client.start()
            var delay: Duration?
            for await e in events { if case .reconnecting(_, let d) = e { delay = d; break } }
            // Without the rule the first retry would come after about 10 ms.
            #expect(delay.map { $0 >= .seconds(10) } == true, "first retry after \(String(describing: delay))")
            await client.closeAbruptly()
        }
    }

    @Test("TLS with the test CA connects; an unrelated CA is refused")
    func tls() async throws {
        try await withBroker { broker in
            var c = MQTTConfiguration(host: "localhost", port: broker.tlsPort, tls: MQTTTLSOptions(caFile: broker.certificates.caCertificate),
                                      clientIdentifier: uniqueID())
            c.reconnect = nil
            let good = MQTTClient(configuration: c)
            try await good.connect()
            let inbox = Inbox(good)
            try await good.subscribe([MQTTSubscription("tls/x")])
            try await good.publish(to: "tls/x", string: "secret", qos: .atLeastOnce)
            #expect(try await inbox.next().payloadString == "secret")
            await good.disconnect()

            c.tls = MQTTTLSOptions(caFile: broker.certificates.otherCACertificate)
            do {
                try await MQTTClient(configuration: c).connect()
                Issue.record("a wrong CA must be refused")
            } catch let e as MQTTError {
                guard case .tls(let text) = e else { Issue.record("expected a TLS error, got \(e)"); return }
                #expect(text.contains("CERTIFICATE_VERIFY_FAILED") || text.lowercased().contains("certificate"))
            }
        }
    }

    @Test("5.0: response topic, correlation data, user properties, content type and message expiry end to end")
    func v5Properties() async throws {
        try await withBroker { broker in
            let sub = MQTTClient(configuration: config(broker))
            let pub = MQTTClient(configuration: config(broker))
            try await sub.connect()
            try await pub.connect()
            let inbox = Inbox(sub)
            let topic = uniqueID("props") + "/set"
            try await sub.subscribe([MQTTSubscription(topic, qos: .atLeastOnce)])
            var p = MQTTProperties()
            p.responseTopic = topic + "/reply"
            p.correlationData = [0xDE, 0xAD, 0xBE, 0xEF]
            p.userProperties = [MQTTUserProperty("site", "lobby"), MQTTUserProperty("site", "b")]
            p.contentType = "application/json"
            p.payloadFormatIndicator = 1
            p.messageExpiryInterval = 60
            try await pub.publish(to: topic, string: #"{"value":true}"#, qos: .atLeastOnce, properties: p)
            let m = try await inbox.next()
            #expect(m.properties.responseTopic == topic + "/reply")
            #expect(m.properties.correlationData == [0xDE, 0xAD, 0xBE, 0xEF])
            #expect(m.properties.userProperties == p.userProperties)
            #expect(m.properties.contentType == "application/json")
            #expect(m.properties.payloadFormatIndicator == 1)
            let expiry = try #require(m.properties.messageExpiryInterval)
            #expect(expiry <= 60 && expiry >= 55)
            await pub.disconnect()
            await sub.disconnect()
        }
    }
}
