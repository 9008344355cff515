public import NIOCore
import NIOConcurrencyHelpers
public import OpenSSLKit
public import RoleCore
import TollgateTLS

/// How a raw stream listener sets up a connection: TLS if it has a context,
/// then the bytes go to the role's ``ByteStreamService`` as an async stream
/// with back-pressure (NIOAsyncChannel), served by one task per connection
/// that runs on the connection's event loop (no thread hop per read or write).
public enum StreamListener {
    public static func configure(service: any ByteStreamService, tls: (@Sendable () -> TLSContext)?, idleTimeout: TimeAmount)
        -> @Sendable (any Channel) throws -> Void {
        { channel in
            let sync = channel.pipeline.syncOperations
            if let tls { try sync.addHandler(TLSHandler(context: tls())) }
            let peer = PeerCertificateBox()
            try sync.addHandler(StreamConnectionEvents(peer: peer, idleTimeout: idleTimeout))
            let async = try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            let remote = channel.remoteAddress?.description ?? ""
            Task(executorPreference: LoopTaskExecutor(eventLoop: channel.eventLoop)) {
                do {
                    try await async.executeThenClose { inbound, outbound in
                        let stream = AsyncByteStream(inbound: inbound, outbound: outbound, remoteAddress: remote, peer: peer)
                        try await service.serve(stream)
                    }
                } catch {
                    channel.close(promise: nil)
                }
            }
        }
    }
}

/// The peer certificate's URIs, learned when the TLS handshake completes.
final class PeerCertificateBox: Sendable {
    let uris = NIOLockedValueBox<[String]>([])
}

/// Watches a stream connection's events: the TLS handshake (for the peer
/// certificate), drain requests, and idleness.
final class StreamConnectionEvents: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let peer: PeerCertificateBox
    private var idle: IdleTimeout

    init(peer: PeerCertificateBox, idleTimeout: TimeAmount) {
        self.peer = peer
        self.idle = IdleTimeout(idleTimeout)
    }

    func channelActive(context: ChannelHandlerContext) {
        idle.arm(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        idle.arm(context)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        idle.arm(context)
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let tls as TLSEvent:
            if case .handshakeCompleted(let session) = tls {
                peer.uris.withLockedValue { $0 = session.peerCertificate?.uniformResourceIdentifiers ?? [] }
            }
            context.fireUserInboundEventTriggered(event)
        case is ListenerQuiesceEvent:
            // A stream has no message boundary the listener knows of: closing
            // its input lets the service finish what it is answering and end.
            // Where half-closure is refused, the drain deadline closes it.
            context.close(mode: .input, promise: nil)
        case is ListenerDrainExpiredEvent:
            context.close(promise: nil)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        idle.cancel()
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension StreamConnectionEvents: Sendable {}

/// A connection as ``ByteStream``: reads come from the async channel's
/// inbound sequence, writes go to its outbound writer.
final class AsyncByteStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: `iterator` is mutated only by `read`, which only
    // the one task serving this connection calls (ByteStreamService's
    // contract: the connection belongs to its `serve` call); the writer and
    // the peer box are Sendable themselves.
    private var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    let remoteAddress: String
    private let peer: PeerCertificateBox

    init(inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, remoteAddress: String,
         peer: PeerCertificateBox) {
        self.iterator = inbound.makeAsyncIterator()
        self.outbound = outbound
        self.remoteAddress = remoteAddress
        self.peer = peer
    }

    var peerCertificateURIs: [String] { peer.uris.withLockedValue { $0 } }

    func read() async throws -> [UInt8]? {
        try await iterator.next().map { Array($0.readableBytesView) }
    }

    func write(_ bytes: [UInt8]) async throws {
        try await outbound.write(ByteBuffer(bytes: bytes))
    }
}
