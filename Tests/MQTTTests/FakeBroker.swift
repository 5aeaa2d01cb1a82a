import NIOCore
import NIOPosix
import Synchronization
@testable import MQTT

/// An unbounded queue with bounded waits, shared between NIO handlers and tests.
final class AsyncQueue<T: Sendable>: Sendable {
    private struct State {
        var items: [T] = []
        var waiters: [(Int, CheckedContinuation<T?, Never>)] = []
        var finished = false
        var nextID = 0
        /// Calls of `next` not answered yet.
        var live: Set<Int> = []
        /// Of those, the ones whose timer fired before they started waiting (a busy machine).
        var expired: Set<Int> = []
    }
    private let state = Mutex(State())

    func push(_ item: T) {
        let w = state.withLock { s -> CheckedContinuation<T?, Never>? in
            if !s.waiters.isEmpty {
                let (id, c) = s.waiters.removeFirst()
                s.live.remove(id)
                return c
            }
            s.items.append(item)
            return nil
        }
        w?.resume(returning: item)
    }

    func finish() {
        let ws = state.withLock { s -> [CheckedContinuation<T?, Never>] in
            s.finished = true
            for (id, _) in s.waiters { s.live.remove(id) }
            defer { s.waiters.removeAll() }
            return s.waiters.map(\.1)
        }
        ws.forEach { $0.resume(returning: nil) }
    }

    /// The next item, nil when finished, or a TimeoutError.
    func next(timeout: Duration = .seconds(30)) async throws -> T? {
        let id = state.withLock { s -> Int in s.nextID += 1; s.live.insert(s.nextID); return s.nextID }
        let timer = Task {
            try await Task.sleep(for: timeout)
            let (w, timedOut) = self.state.withLock { s -> (CheckedContinuation<T?, Never>?, Bool) in
                guard s.live.contains(id) else { return (nil, false) }   // already answered
                if let i = s.waiters.firstIndex(where: { $0.0 == id }) {
                    s.live.remove(id)
                    return (s.waiters.remove(at: i).1, true)
                }
                s.expired.insert(id)   // not waiting yet: the registration below sees it
                return (nil, true)
            }
            w?.resume(returning: nil)
            return timedOut
        }
        let item: T? = await withCheckedContinuation { cont in
            let ready = state.withLock { s -> (Bool, T?) in
                if s.expired.remove(id) != nil { s.live.remove(id); return (true, nil) }
                if !s.items.isEmpty { s.live.remove(id); return (true, s.items.removeFirst()) }
                if s.finished { s.live.remove(id); return (true, nil) }
                s.waiters.append((id, cont))
                return (false, nil)
            }
            if ready.0 { cont.resume(returning: ready.1) }
        }
        timer.cancel()
        if item == nil, (try? await timer.value) == true { throw TimeoutError(description: "nothing within \(timeout)") }
        return item
    }
}

/// A scripted broker: the test reads the client's packets and answers byte by byte.
final class FakeBroker: Sendable {
    let server: any Channel
    let port: Int
    let connections = AsyncQueue<FakeConnection>()

    private init(server: any Channel, port: Int) {
        self.server = server
        self.port = port
    }

    static func start() async throws -> FakeBroker {
        let connections = AsyncQueue<FakeConnection>()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let conn = FakeConnection(channel: channel)
                    try channel.pipeline.syncOperations.addHandler(FakeBrokerHandler(connection: conn))
                    connections.push(conn)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let broker = FakeBroker(server: server, port: server.localAddress?.port ?? 0)
        // Hand over the queue that the initializer fills.
        broker.forward(from: connections)
        return broker
    }

    private func forward(from q: AsyncQueue<FakeConnection>) {
        Task { while let c = try? await q.next(timeout: .seconds(600)) { self.connections.push(c) } }
    }

    func nextConnection() async throws -> FakeConnection {
        guard let c = try await connections.next() else { throw TimeoutError(description: "no connection") }
        return c
    }

    func close() async { try? await server.close() }
}

final class FakeConnection: Sendable {
    let channel: any Channel
    let packets = AsyncQueue<MQTTPacket>()
    let version = Mutex<MQTTVersion>(.v5)
    let closedPromise: EventLoopPromise<Void>

    init(channel: any Channel) {
        self.channel = channel
        self.closedPromise = channel.eventLoop.makePromise()
    }

    /// The next packet from the client (fails on timeout or close).
    func expect(timeout: Duration = .seconds(30)) async throws -> MQTTPacket {
        guard let p = try await packets.next(timeout: timeout) else { throw TimeoutError(description: "connection closed") }
        return p
    }

    func send(_ packet: MQTTPacket) {
        var b = channel.allocator.buffer(capacity: 32)
        MQTTPacketCodec.encode(packet, version: version.withLock { $0 }, into: &b)
        channel.writeAndFlush(b, promise: nil)
    }

    func sendRaw(_ bytes: [UInt8]) {
        channel.writeAndFlush(channel.allocator.buffer(bytes: bytes), promise: nil)
    }

    /// Accepts the CONNECT and answers CONNACK.
    @discardableResult
    func accept(sessionPresent: Bool = false, properties: MQTTProperties = .init()) async throws -> ConnectPacket {
        guard case .connect(let c) = try await expect() else { throw TimeoutError(description: "expected CONNECT") }
        send(.connack(ConnAckPacket(sessionPresent: sessionPresent, properties: properties)))
        return c
    }

    func close() async { try? await channel.close() }

    /// Waits until the client closes the connection (bounded).
    func waitClosed(timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        var skipped: [String] = []
        while ContinuousClock.now < deadline {
            if let p = try? await packets.next(timeout: .milliseconds(200)) {
                skipped.append("\(p)")   // packets before the close are skipped
                continue
            }
            if !channel.isActive { return }
        }
        throw TimeoutError(description: "the client did not close the connection (packets meanwhile: \(skipped.prefix(5)), \(skipped.count) in all)")
    }
}

final class FakeBrokerHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let connection: FakeConnection
    private let cumulation = Mutex(ByteBuffer())

    init(connection: FakeConnection) { self.connection = connection }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        cumulation.withLock { c in
            c.writeBuffer(&incoming)
            while true {
                if let v = MQTTPacketCodec.peekConnectVersion(c) { connection.version.withLock { $0 = v } }
                let version = connection.version.withLock { $0 }
                guard let p = try? MQTTPacketCodec.decode(from: &c, version: version) else { break }
                connection.packets.push(p)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.packets.finish()
        connection.closedPromise.succeed()
    }
}
