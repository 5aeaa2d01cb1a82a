import Foundation
import MQTT
import TestSupport

/// Runs `body` with a fresh private broker and always shuts it down.
func withBroker<R>(_ body: (Mosquitto) async throws -> R) async throws -> R {
    let broker = try await Mosquitto.start()
    do {
        let r = try await body(broker)
        await broker.shutdown()
        return r
    } catch {
        await broker.shutdown()
        throw error
    }
}

func uniqueID(_ prefix: String = "c") -> String { "\(prefix)-\(UUID().uuidString.prefix(8))" }

func config(_ broker: Mosquitto, _ version: MQTTVersion = .v5, id: String = uniqueID(), fastReconnect: Bool = true) -> MQTTConfiguration {
    var c = MQTTConfiguration(host: "127.0.0.1", port: broker.port, version: version, clientIdentifier: id)
    if fastReconnect { c.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(500)) }
    c.connectTimeout = .seconds(5)
    return c
}

/// Waits (bounded) for the next element of an async iterator.
func next<I: AsyncIteratorProtocol & Sendable>(_ iterator: inout I, timeout: Duration = .seconds(30)) async throws -> I.Element
where I.Element: Sendable {
    let it = iterator
    let result = try await withThrowingTaskGroup(of: (I.Element?, I)?.self) { group in
        group.addTask {
            var copy = it
            let e = try await copy.next()
            return (e, copy)
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next() ?? nil
    }
    guard let (element, advanced) = result, let element else {
        throw TimeoutError(description: "nothing arrived within \(timeout)")
    }
    iterator = advanced
    return element
}

struct TimeoutError: Error, CustomStringConvertible { var description: String }

/// Collects messages from a client's stream in the background.
final class Inbox: Sendable {
    private let stream: AsyncStream<MQTTMessage>
    init(_ client: MQTTClient) { stream = client.messages }

    /// The next message whose topic satisfies `filter`, within `timeout`.
    func next(timeout: Duration = .seconds(30), where filter: @escaping @Sendable (MQTTMessage) -> Bool = { _ in true }) async throws -> MQTTMessage {
        let s = stream
        return try await withThrowingTaskGroup(of: MQTTMessage?.self) { group in
            group.addTask {
                for await m in s where filter(m) { return m }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let m = try await group.next() ?? nil else { throw TimeoutError(description: "no message within \(timeout)") }
            return m
        }
    }
}

/// Waits (bounded) for an event matching `predicate` on a client's event stream.
func waitForEvent(_ client: MQTTClient, timeout: Duration = .seconds(15), _ predicate: @escaping @Sendable (MQTTEvent) -> Bool) async throws {
    let s = client.events
    try await withThrowingTaskGroup(of: Bool.self) { group in
        group.addTask {
            for await e in s where predicate(e) { return true }
            return false
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return false
        }
        defer { group.cancelAll() }
        guard try await group.next() == true else { throw TimeoutError(description: "event not seen within \(timeout)") }
    }
}
