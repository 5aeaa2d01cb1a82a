import GatewayConfig
import Logging
import Modbus
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization

// The Modbus TCP front: other masters reach the gateway's lines through it instead of sharing
// the RS-485 wires. Entry point: `ModbusFrontService` (one per `[[modbus_server]]`).
//
// - Requests queue on the bus beside the polls, at the polls' priority: MQTT commands (high)
//   still go first. At most one outside request per bus is on the line or in its queue at a
//   time (`LineGate`), so however fast outside clients ask, a poll waits behind at most one
//   outside transaction: polls keep at least half of a saturated line.
// - A unit that does not answer gives exception 0x0B, a unit the front does not map 0x0A, a bus
//   too busy to start the request within its deadline 0x06.
// - Read-only unless a range is opened in `writable`; each write is logged with the client.
// - At most `max_clients` connections (one more is closed at once), each closed after
//   `idle_timeout_s` without a request; per-client counts in /metrics when it is on.

/// Serves one `[[modbus_server]]` while the gateway runs.
public struct ModbusFrontService: Service {
    let settings: ModbusServerSettings
    let buses: @Sendable (String) -> ModbusBus?
    let registry: PrometheusCollectorRegistry?
    let logger: Logger

    public init(runtime: GatewayRuntime, settings: ModbusServerSettings, logger: Logger) {
        self.settings = settings
        self.buses = runtime.busNamed
        self.registry = runtime.telemetry?.registry
        self.logger = logger
    }

    public func run() async throws {
        let front: ModbusFront
        do {
            front = try await ModbusFront.start(settings: settings, buses: buses, registry: registry, logger: logger)
        } catch {
            // As with the operations listener: the gateway's own work goes on without it.
            logger.error("modbus front: cannot listen on \(settings.listen.host):\(settings.listen.port): \(error); running without it")
            return
        }
        logger.info("modbus front: listening on \(settings.listen.host):\(front.port ?? settings.listen.port), units \(settings.units.keys.sorted().map { "\($0)=\(settings.units[$0]!)" }.joined(separator: ", ")), \(settings.writable.isEmpty ? "read-only" : "\(settings.writable.count) writable range(s)")")
        await withGracefulShutdownHandler {
            await front.closed()
        } onGracefulShutdown: {
            front.close()
        }
    }
}

/// The listener and what its connections share.
final class ModbusFront: Sendable {
    private let channel: any Channel
    let gates: LineGates

    var port: Int? { channel.localAddress?.port }

    static func start(settings: ModbusServerSettings, buses: @escaping @Sendable (String) -> ModbusBus?,
                      registry: PrometheusCollectorRegistry?, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                      logger: Logger) async throws -> ModbusFront {
        let policy = ModbusFrontPolicy(settings: settings)
        let gates = LineGates()
        let clients = Mutex(0)
        let metrics = FrontMetrics(registry: registry)
        let serve = FrontServer(policy: policy, buses: buses, gates: gates, metrics: metrics, logger: logger)
        let limit = settings.maxClients
        let idle = TimeAmount.seconds(Int64(settings.idleTimeoutSeconds))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 32)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                let admitted = clients.withLock { n -> Bool in
                    guard n < limit else { return false }
                    n += 1
                    return true
                }
                let client = channel.remoteAddress?.ipAddress ?? "?"
                guard admitted else {
                    logger.warning("modbus front: \(limit) clients connected, refusing \(client)")
                    metrics.refusedConnection()
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in clients.withLock { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(IdleStateHandler(readTimeout: idle))
                    try ops.addHandler(ByteToMessageHandler(MBAPDecoder()))
                    try ops.addHandler(FrontConnection(serve: serve, client: client, logger: logger))
                }
            }
            .bind(host: settings.listen.host, port: settings.listen.port)
            .get()
        return ModbusFront(channel: channel, gates: gates)
    }

    private init(channel: any Channel, gates: LineGates) {
        self.channel = channel
        self.gates = gates
    }

    func close() { channel.close(promise: nil) }

    func closed() async { try? await channel.closeFuture.get() }
}

/// One Modbus TCP request: transaction id, unit, PDU.
struct MBAPFrame {
    var transaction: UInt16
    var unit: UInt8
    var pdu: [UInt8]
}

/// MBAP framing: 7-byte header (transaction, protocol 0, length, unit), then the PDU. A frame
/// that is not Modbus TCP closes the connection.
struct MBAPDecoder: ByteToMessageDecoder {
    typealias InboundOut = MBAPFrame

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= 7,
              let tid = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
              let proto = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self),
              let length = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt16.self),
              let unit = buffer.getInteger(at: buffer.readerIndex + 6, as: UInt8.self) else { return .needMoreData }
        guard proto == 0, (2...254).contains(length) else { throw FrontProtocolError() }
        guard buffer.readableBytes >= 6 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 7)
        let pdu = buffer.readBytes(length: Int(length) - 1) ?? []
        context.fireChannelRead(wrapInboundOut(MBAPFrame(transaction: tid, unit: unit, pdu: pdu)))
        return .continue
    }
}

struct FrontProtocolError: Error, CustomStringConvertible {
    var description: String { "not Modbus TCP (protocol id or length)" }
}

/// One connection: requests answered one at a time, in order; at most 16 waiting, more close it.
final class FrontConnection: ChannelInboundHandler {
    typealias InboundIn = MBAPFrame
    typealias OutboundOut = ByteBuffer

    private let serve: FrontServer
    private let client: String
    private let logger: Logger
    private var waiting: [MBAPFrame] = []
    private var busy = false

    init(serve: FrontServer, client: String, logger: Logger) {
        self.serve = serve
        self.client = client
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        waiting.append(unwrapInboundIn(data))
        if waiting.count > 16 {
            logger.warning("modbus front: \(client) sent more than 16 requests without waiting for answers: closing")
            context.close(promise: nil)
            return
        }
        next(context: context)
    }

    private func next(context: ChannelHandlerContext) {
        guard !busy, !waiting.isEmpty else { return }
        busy = true
        let frame = waiting.removeFirst()
        let serve = self.serve, client = self.client
        let promise = context.eventLoop.makePromise(of: [UInt8].self)
        promise.completeWithTask { await serve.answer(unit: Int(frame.unit), pdu: frame.pdu, client: client) }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        promise.futureResult.whenSuccess { pdu in
            let (handler, context) = bound.value
            var out = context.channel.allocator.buffer(capacity: 7 + pdu.count)
            out.writeInteger(frame.transaction)
            out.writeInteger(UInt16(0))
            out.writeInteger(UInt16(pdu.count + 1))
            out.writeInteger(frame.unit)
            out.writeBytes(pdu)
            context.writeAndFlush(handler.wrapOutboundOut(out), promise: nil)
            handler.busy = false
            handler.next(context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            logger.debug("modbus front: \(client) idle: closing")
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.info("modbus front: closing \(client): \(error)")
        context.close(promise: nil)
    }
}

/// Turns a request into an answer through the buses. Never runs on a poll or command path.
struct FrontServer: Sendable {
    let policy: ModbusFrontPolicy
    let buses: @Sendable (String) -> ModbusBus?
    let gates: LineGates
    let metrics: FrontMetrics
    let logger: Logger

    func answer(unit: Int, pdu: [UInt8], client: String) async -> [UInt8] {
        let function = pdu.first ?? 0
        func refuse(_ e: UInt8, _ result: String) -> [UInt8] {
            metrics.request(client: client, result: result)
            return [function | 0x80, e]
        }
        guard let target = policy.route(unit), let bus = buses(target.bus) else {
            return refuse(ModbusException.gatewayPathUnavailable.rawValue, "unmapped")
        }
        let request: FrontRequest
        switch FrontRequest.decode(pdu) {
        case .success(let r): request = r
        case .failure(let e): return refuse(e.rawValue, "refused")
        }
        guard policy.mayWrite(request, at: target) else {
            logger.notice("modbus front: write refused from \(client) to \(target) (function \(function)): not in a writable range")
            return refuse(ModbusException.illegalFunction.rawValue, "refused")
        }
        guard await gates.enter(target.bus) else { return refuse(ModbusException.slaveDeviceBusy.rawValue, "busy") }
        let started = ContinuousClock.now
        defer {
            let rest = policy.rest(afterHolding: ContinuousClock.now - started)
            Task { await gates.leave(target.bus, after: rest) }
        }
        // Beside the polls, never ahead of a command; a request that cannot start within two
        // response timeouts is answered busy rather than late.
        let deadline = ContinuousClock.now + bus.configuration.responseTimeout * 2
        do {
            switch request {
            case .read(let kind, let address, let count):
                let r = try await bus.read(kind, unit: target.unit, address: address, count: count, priority: .normal, deadline: deadline)
                metrics.request(client: client, result: "ok")
                return request.answer(read: r)
            case .writeCoil(let a, let v):
                logger.notice("modbus front: \(client) writes coil \(a) = \(v) on \(target)")
                try await bus.writeCoil(unit: target.unit, address: a, value: v, priority: .normal, deadline: deadline)
            case .writeRegister(let a, let v):
                logger.notice("modbus front: \(client) writes holding \(a) = \(v) on \(target)")
                try await bus.writeRegister(unit: target.unit, address: a, value: v, priority: .normal, deadline: deadline)
            case .writeCoils(let a, let v):
                logger.notice("modbus front: \(client) writes coils \(a)..\(a + v.count - 1) on \(target)")
                try await bus.writeCoils(unit: target.unit, address: a, values: v, priority: .normal, deadline: deadline)
            case .writeRegisters(let a, let v):
                logger.notice("modbus front: \(client) writes holding \(a)..\(a + v.count - 1) = \(v) on \(target)")
                try await bus.writeRegisters(unit: target.unit, address: a, values: v, priority: .normal, deadline: deadline)
            }
            metrics.request(client: client, result: "ok")
            return request.answer(read: nil)
        } catch let e as ModbusError {
            return refuse(ModbusException.answering(e).rawValue, e.isNoAnswer ? "no_answer" : "exception")
        } catch {
            return refuse(ModbusException.slaveDeviceFailure.rawValue, "exception")
        }
    }
}

/// At most one outside request per bus in flight; at most ``maxWaiting`` waiting per bus (then: busy).
actor LineGates {
    static let maxWaiting = 64
    private var held: Set<String> = []
    private var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]

    func enter(_ bus: String) async -> Bool {
        if !held.contains(bus) {
            held.insert(bus)
            return true
        }
        guard waiters[bus, default: []].count < Self.maxWaiting else { return false }
        await withCheckedContinuation { waiters[bus, default: []].append($0) }
        return true
    }

    /// Requests waiting for `bus` (tests).
    func waiting(_ bus: String) -> Int { waiters[bus]?.count ?? 0 }

    /// Leaves after `rest` (the polls' share of the line), then hands the gate on.
    func leave(_ bus: String, after rest: Duration) async {
        if rest > .zero { try? await Task.sleep(for: rest) }
        leave(bus)
    }

    func leave(_ bus: String) {
        if var w = waiters[bus], !w.isEmpty {
            let next = w.removeFirst()
            waiters[bus] = w
            next.resume()  // the gate passes to it, still held
        } else {
            held.remove(bus)
        }
    }
}

/// Per-client request counts (`gateway_modbus_front_requests_total{client,result}`) and refused
/// connections, when the operations listener is on.
struct FrontMetrics: Sendable {
    let registry: PrometheusCollectorRegistry?

    func request(client: String, result: String) {
        registry?.counter(name: "gateway_modbus_front_requests_total", labels: [("client", client), ("result", result)],
                          help: "Requests through the Modbus TCP front, by client address and result").increment()
    }

    func refusedConnection() {
        registry?.counter(name: "gateway_modbus_front_refused_connections_total",
                          help: "Connections to the Modbus TCP front closed at once (max_clients reached)").increment()
    }
}
