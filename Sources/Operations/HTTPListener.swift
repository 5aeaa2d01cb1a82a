import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

// The Operations module: what operators and systemd talk to, knowing nothing of devices. A small
// HTTP/1.1 listener (``HTTPListener``) on the gateway's event loop, bounded in connections and
// request size, that answers GET and HEAD through a responder the gateway gives it (metrics,
// health, the status page); ``SystemdNotifier`` for `READY=1`, `WATCHDOG=1` and `STOPPING=1`.

/// A request as the listener's responder sees it: read-only endpoints, so a method, a path and
/// the query; no body.
public struct HTTPRequest: Sendable {
    public var method: HTTPMethod
    public var path: String
    public var query: String
}

public struct HTTPResponse: Sendable {
    public var status: HTTPResponseStatus
    public var contentType: String
    public var body: [UInt8]
    public var headers: [(String, String)]

    public init(status: HTTPResponseStatus = .ok, contentType: String, body: [UInt8], headers: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
    }

    public static func text(_ s: String, status: HTTPResponseStatus = .ok) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array(s.utf8))
    }
}

/// A small HTTP/1.1 server for operators, on the event loop the gateway already has: no thread
/// of its own, none per request. Bounded everywhere: at most `maxConnections` at once (a new one
/// closes the oldest), headers within NIO's decoder limits (8 KiB per field, 16 KiB in all), no
/// request bodies (answered 413 and closed), and a connection quiet for `idleTimeout` is closed,
/// so a slow or stuck client holds one slot and nothing else. The responder runs in a task and
/// never on the poll or command paths.
public final class HTTPListener: Sendable {
    public typealias Responder = @Sendable (HTTPRequest) async -> HTTPResponse

    /// `user:password` for HTTP basic authentication, or nil (no authentication).
    public struct Credentials: Sendable {
        public var username: String
        public var password: [UInt8]
        public init(username: String, password: [UInt8]) {
            self.username = username
            self.password = password
        }
        /// The `Authorization` header value a client sends for these credentials.
        var expectedHeader: [UInt8] { Array(("Basic " + Base64.encode(Array(username.utf8) + [UInt8(ascii: ":")] + password)).utf8) }
    }

    public let maxConnections: Int
    public let idleTimeout: TimeAmount
    private let channel: any Channel

    /// Binds `host:port` and starts serving. Throws when the address cannot be bound.
    public static func start(host: String, port: Int, credentials: Credentials?, maxConnections: Int = 16,
                             idleTimeout: TimeAmount = .seconds(30), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                             logger: Logger, responder: @escaping Responder) async throws -> HTTPListener {
        let open = OpenConnections()
        let expected = credentials?.expectedHeader
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 32)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { channel in
                // At the limit the oldest connection makes room: clients that never finish their
                // request can hold the slots only until the next one comes, so a health check or
                // a scrape always gets through.
                if let oldest = open.add(channel, limit: maxConnections) {
                    logger.debug("http: \(maxConnections) connections open, closing the oldest for a new one")
                    oldest.close(promise: nil)
                }
                channel.closeFuture.whenComplete { _ in open.remove(channel) }
                return channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(IdleStateHandler(allTimeout: idleTimeout))
                    try ops.configureHTTPServerPipeline(withErrorHandling: true)
                    try ops.addHandler(RequestHandler(responder: responder, expectedAuthorization: expected, logger: logger))
                }
            }
            .bind(host: host, port: port)
            .get()
        return HTTPListener(channel: channel, maxConnections: maxConnections, idleTimeout: idleTimeout)
    }

    private init(channel: any Channel, maxConnections: Int, idleTimeout: TimeAmount) {
        self.channel = channel
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
    }

    /// The port bound (useful with port 0).
    public var port: Int? { channel.localAddress?.port }

    /// Stops accepting; open connections end with their requests.
    public func close() async {
        try? await channel.close()
    }
}

/// Open connections in the order they came, shared by the accept path.
private final class OpenConnections: Sendable {
    private let channels = Mutex<[ObjectIdentifier: (order: Int, channel: any Channel)]>([:])
    private let next = Mutex(0)

    /// Adds `channel`; when that makes more than `limit`, returns the oldest other one (to close).
    func add(_ channel: any Channel, limit: Int) -> (any Channel)? {
        let order = next.withLock { n -> Int in n += 1; return n }
        return channels.withLock { c -> (any Channel)? in
            c[ObjectIdentifier(channel)] = (order, channel)
            guard c.count > limit, let oldest = c.min(by: { $0.value.order < $1.value.order }) else { return nil }
            c[oldest.key] = nil
            return oldest.value.channel
        }
    }

    func remove(_ channel: any Channel) { channels.withLock { $0[ObjectIdentifier(channel)] = nil } }
}

/// One connection: a request at a time (NIO's pipelining helper holds later ones back).
private final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let responder: HTTPListener.Responder
    private let expectedAuthorization: [UInt8]?
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var refused: HTTPResponseStatus?

    init(responder: @escaping HTTPListener.Responder, expectedAuthorization: [UInt8]?, logger: Logger) {
        self.responder = responder
        self.expectedAuthorization = expectedAuthorization
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            refused = nil
            if h.method != .GET && h.method != .HEAD {
                refused = .methodNotAllowed
            } else if let expected = expectedAuthorization,
                      !Self.constantTimeEqual(Array((h.headers.first(name: "authorization") ?? "").utf8), expected) {
                refused = .unauthorized
            }
        case .body:
            // Nothing here takes a body: answered and closed, never buffered.
            if refused == nil { refused = .payloadTooLarge }
        case .end:
            guard let head else { return }
            self.head = nil
            if let refused {
                var r = HTTPResponse.text("\(refused.code) \(refused.reasonPhrase)\n", status: refused)
                if refused == .unauthorized { r.headers.append(("WWW-Authenticate", "Basic realm=\"gateway\", charset=\"UTF-8\"")) }
                if refused == .methodNotAllowed { r.headers.append(("Allow", "GET, HEAD")) }
                respond(r, to: head, keepAlive: refused != .payloadTooLarge && head.isKeepAlive, context: context)
                return
            }
            let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
            let request = HTTPRequest(method: head.method, path: String(parts.first ?? "/"), query: parts.count > 1 ? String(parts[1]) : "")
            let responder = self.responder
            let promise = context.eventLoop.makePromise(of: HTTPResponse.self)
            promise.completeWithTask { await responder(request) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { response in
                let (handler, context) = bound.value
                handler.respond(response, to: head, keepAlive: head.isKeepAlive, context: context)
            }
        }
    }

    private func respond(_ response: HTTPResponse, to head: HTTPRequestHead, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))), promise: nil)
        if head.method != .HEAD, !response.body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))), promise: nil)
        }
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("http: closing a connection: \(error)")
        context.close(promise: nil)
    }

    /// Compares without stopping at the first difference (no timing hint about the password).
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for i in 0..<max(a.count, b.count) {
            diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return diff == 0
    }
}

/// RFC 4648 base64 (the `Authorization: Basic` header).
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let b0 = bytes[i], b1 = i + 1 < bytes.count ? bytes[i + 1] : 0, b2 = i + 2 < bytes.count ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(i + 1 < bytes.count ? alphabet[Int((b1 & 0x0f) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
