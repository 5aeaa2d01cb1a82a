import NIOCore

/// What the channel tells the client.
enum ChannelEvent: Sendable {
    case packet(MQTTPacket)
    /// The peer sent a malformed packet; the channel is being closed.
    case malformed(MQTTPacketError)
    /// The channel closed; `reason` when an error caused it.
    case closed(reason: String?, tls: Bool)
}

/// Frames bytes into packets (single-step decoder on a cumulation buffer) and encodes outgoing
/// packets. Inbound packets go, in order, to an AsyncStream read by the client.
final class MQTTChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    private let version: MQTTVersion
    private let maximumPacketSize: Int
    private let events: AsyncStream<ChannelEvent>.Continuation
    private var cumulation = ByteBuffer()
    private var failed = false
    private var closeReason: (String, Bool)?

    init(version: MQTTVersion, maximumPacketSize: Int, events: AsyncStream<ChannelEvent>.Continuation) {
        self.version = version
        self.maximumPacketSize = maximumPacketSize
        self.events = events
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var incoming = unwrapInboundIn(data)
        cumulation.writeBuffer(&incoming)
        do {
            while let packet = try MQTTPacketCodec.decode(from: &cumulation, version: version, maximumPacketSize: maximumPacketSize) {
                events.yield(.packet(packet))
            }
            if cumulation.readableBytes == 0 {
                cumulation.clear()
            } else if cumulation.readerIndex > 65_536 {
                cumulation.discardReadBytes()
            }
        } catch {
            failed = true
            events.yield(.malformed(error))
            closeReason = ("malformed packet from the broker: \(error)", false)
            if version == .v5 {
                let code: ReasonCode = if case .packetTooLarge = error { .packetTooLarge } else { .malformedPacket }
                var out = context.channel.allocator.buffer(capacity: 4)
                MQTTPacketCodec.encode(.disconnect(ReasonPacket(reasonCode: code)), version: version, into: &out)
                context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            }
            context.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let packet = unwrapOutboundIn(data)
        var out = context.channel.allocator.buffer(capacity: 64)
        MQTTPacketCodec.encode(packet, version: version, into: &out)
        context.write(wrapOutboundOut(out), promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closeReason == nil {
            let typeName = String(reflecting: type(of: error))
            closeReason = ("\(error)", typeName.contains("SSL") || typeName.contains("TLS"))
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        events.yield(.closed(reason: closeReason?.0, tls: closeReason?.1 ?? false))
        events.finish()
        context.fireChannelInactive()
    }
}
