public import NIOCore
public import OpenSSLKit
public import RoleCore
import TollgateTLS

/// How a raw stream listener sets up a connection: TLS if it has a context,
/// then a ``ByteStreamHandler`` that feeds the role's ``ByteStreamService``
/// session on the connection's event loop.
public enum StreamListener {
    public static func configure(service: any ByteStreamService, tls: (@Sendable () -> TLSContext)?, idleTimeout: TimeAmount)
        -> @Sendable (any Channel) throws -> Void {
        { channel in
            let sync = channel.pipeline.syncOperations
            if let tls { try sync.addHandler(TLSHandler(context: tls())) }
            try sync.addHandler(ByteStreamHandler(service: service, idleTimeout: idleTimeout))
        }
    }
}

/// Serves one stream connection: bytes read go to the service's session at
/// once, its answers are written, and flushed when the read burst ends (so
/// pipelined calls leave in one write). Reading pauses while the peer is
/// not taking the answers (the channel is unwritable), so a peer that only
/// sends cannot make the answers pile up in memory. Also closes the
/// connection when a begun message is not complete within the session's
/// limit, when it stays idle, and on the listener's drain.
final class ByteStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let service: any ByteStreamService
    private let idle: IdleTimeout
    private var connection: ByteStreamConnection?
    private var session: (any ByteStreamSession)?
    /// Closes the connection if the message begun then is still incomplete.
    private var messageTimer: Scheduled<Void>?
    private var unflushed = false
    private var readHeld = false
    /// Draining: close as soon as no message is half received.
    private var closeBetweenMessages = false

    init(service: any ByteStreamService, idleTimeout: TimeAmount) {
        self.service = service
        self.idle = IdleTimeout(idleTimeout)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard connection == nil else { return }
        let connection = ByteStreamConnection(remoteAddress: context.channel.remoteAddress?.description ?? "")
        self.connection = connection
        idle.arm(context)
        do {
            session = try service.open(connection)
        } catch {
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        idle.arm(context)
        guard let session else { return }
        let bytes = Array(unwrapInboundIn(data).readableBytesView)
        let answer: [UInt8]
        do {
            answer = try session.received(bytes)
        } catch {
            // The session is done: nothing more of this connection reaches it.
            self.session = nil
            session.closed()
            end(context)
            return
        }
        if !answer.isEmpty {
            context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: answer)), promise: nil)
            unflushed = true
        }
        if let limit = session.messageTimeLimit {
            if messageTimer == nil {
                let channel = context.channel
                messageTimer = context.eventLoop.scheduleTask(in: TimeAmount(limit)) { channel.close(promise: nil) }
            }
        } else if let timer = messageTimer {
            timer.cancel()
            messageTimer = nil
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushAnswers(context)
        if closeBetweenMessages, session?.messageTimeLimit == nil { context.close(promise: nil) }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.read()
        } else {
            readHeld = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, readHeld {
            readHeld = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let tls as TLSEvent:
            if case .handshakeCompleted(let tlsSession) = tls {
                connection?.peerCertificateURIs = tlsSession.peerCertificate?.uniformResourceIdentifiers ?? []
            }
            context.fireUserInboundEventTriggered(event)
        case is ListenerQuiesceEvent:
            // Every answer is written as its message completes, so between
            // messages nothing is lost by closing; a half-received message
            // gets its answer first (or the drain deadline).
            if session?.messageTimeLimit == nil {
                end(context)
            } else {
                closeBetweenMessages = true
            }
        case is ListenerDrainExpiredEvent:
            end(context)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    private func flushAnswers(_ context: ChannelHandlerContext) {
        if unflushed {
            unflushed = false
            context.flush()
        }
    }

    /// Flushes what was answered and closes.
    private func end(_ context: ChannelHandlerContext) {
        flushAnswers(context)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        idle.cancel()
        messageTimer?.cancel()
        messageTimer = nil
        if let session {
            self.session = nil
            session.closed()
        }
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension ByteStreamHandler: Sendable {}
