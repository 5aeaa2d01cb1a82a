import NIOCore
import NIOSSL

/// What the channel tells the client.
enum ChannelEvent: Sendable {
    case packet(MQTTPacket)
    /// The peer sent a malformed packet; the channel is being closed.
    case malformed(MQTTPacketError)
    /// A PUBLISH larger than our maximum packet size on 3.1.1 (which cannot tell the broker the
    /// maximum): its body is read past and dropped; the connection stays up.
    case oversized(PublishHead)
    /// The channel closed; `reason` when an error caused it.
    case closed(reason: MQTTDisconnectReason?)
}

/// Frames bytes into packets (single-step decoder on a cumulation buffer) and encodes outgoing
/// packets. Inbound packets go, in order, to `events`, called on the channel's loop.
final class MQTTChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    private let version: MQTTVersion
    private let maximumPacketSize: Int
    private let events: @Sendable (ChannelEvent) -> Void
    private var cumulation = ByteBuffer()
    private var failed = false
    /// Bytes of an oversized PUBLISH still to be read past.
    private var skipping = 0
    private var closeReason: MQTTDisconnectReason?

    init(version: MQTTVersion, maximumPacketSize: Int, events: @escaping @Sendable (ChannelEvent) -> Void) {
        self.version = version
        self.maximumPacketSize = maximumPacketSize
        self.events = events
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var incoming = unwrapInboundIn(data)
        cumulation.writeBuffer(&incoming)
        do throws(MQTTPacketError) {
            while true {
                if skipping > 0 {
                    let n = min(skipping, cumulation.readableBytes)
                    cumulation.moveReaderIndex(forwardBy: n)
                    skipping -= n
                    if skipping > 0 { break }
                }
                let packet: MQTTPacket?
                do throws(MQTTPacketError) {
                    packet = try MQTTPacketCodec.decode(from: &cumulation, version: version, maximumPacketSize: maximumPacketSize)
                } catch {
                    // 3.1.1 has no way to tell the broker our maximum: a PUBLISH over it is read past.
                    guard case .packetTooLarge = error, version == .v3_1_1,
                          cumulation.getInteger(at: cumulation.readerIndex, as: UInt8.self).map({ $0 >> 4 }) == 3 else { throw error }
                    guard let head = try MQTTPacketCodec.decodePublishHead(from: cumulation) else { break }   // head not complete yet
                    events(.oversized(head))
                    skipping = head.size
                    continue
                }
                guard let packet else { break }
                events(.packet(packet))
            }
            if cumulation.readableBytes == 0 {
                cumulation.clear()
            } else if cumulation.readerIndex > 65_536 {
                cumulation.discardReadBytes()
            }
        } catch {
            failed = true
            events(.malformed(error))
            closeReason = .malformedPacket("\(error)")
            if version == .v5 {
                let code: MQTTReasonCode = if case .packetTooLarge = error { .packetTooLarge } else { .malformedPacket }
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
            closeReason = .transport("\(error)", tls: error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError)
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        events(.closed(reason: closeReason))
        context.fireChannelInactive()
    }
}
