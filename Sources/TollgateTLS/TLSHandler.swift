public import NIOCore
public import OpenSSLKit

/// Facts about an established TLS session, for the handlers after TLS.
public struct TLSSessionInfo: Sendable, Hashable {
    public let protocolVersion: String
    public let cipherSuite: String?
    /// The ALPN protocol both sides agreed on.
    public let negotiatedProtocol: String?
    /// The peer's certificate (verified, when verification is on).
    public let peerCertificate: Certificate?
}

/// Inbound user events fired by ``TLSHandler``.
public enum TLSEvent: Sendable, Hashable {
    case handshakeCompleted(TLSSessionInfo)
    /// The peer's TCP stream ended without a TLS close_notify: data may have
    /// been truncated. The channel still closes normally.
    case uncleanShutdown
}

/// Errors ``TLSHandler`` fires down the pipeline before closing the channel.
public enum TLSHandlerError: Error, Hashable, Sendable, CustomStringConvertible {
    case handshakeFailed(TLSError)
    case handshakeTimedOut
    case eofDuringHandshake
    case protocolError(TLSError)
    /// Our close_notify got no answer in time; the connection was closed anyway.
    case closeTimedOut

    public var description: String {
        switch self {
        case .handshakeFailed(let error): "\(error)"
        case .handshakeTimedOut: "TLS handshake did not finish in time"
        case .eofDuringHandshake: "the peer closed the connection during the TLS handshake"
        case .protocolError(let error): "\(error)"
        case .closeTimedOut: "the peer did not answer close_notify in time"
        }
    }
}

/// TLS over system OpenSSL as a SwiftNIO channel handler: ciphertext below,
/// plaintext above. One ``TLSConnection`` per channel, created from a shared
/// ``TLSContext`` in the channel initializer.
///
/// Writes made before the handshake completes are held and replayed after
/// it. Closing sends close_notify and waits (up to `closeTimeout`) for the
/// peer's before closing the socket. An EOF without close_notify is reported
/// as ``TLSEvent/uncleanShutdown``.
public final class TLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
        case idle
        case handshaking
        case active
        /// Our close_notify is sent; waiting for the peer's.
        case closing
        case closed
    }

    private let connection: TLSConnection
    private let handshakeTimeout: TimeAmount
    private let closeTimeout: TimeAmount
    private var state = State.idle
    private var timer: Scheduled<Void>?
    /// Writes made before the handshake finished, replayed in order after it.
    private var heldWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var heldFlush = false
    /// Promises of plaintext already encrypted, completed when its ciphertext is written.
    private var encryptedWritePromises: [EventLoopPromise<Void>] = []
    /// Plaintext written since the last flush: encrypted together on flush,
    /// so many small writes become one TLS record, not one each.
    private var unflushedPlaintext: ByteBuffer?
    private var unflushedPromises: [EventLoopPromise<Void>] = []
    private var closePromise: EventLoopPromise<Void>?

    /// The established session, once the handshake completed.
    public private(set) var session: TLSSessionInfo?

    public init(context tlsContext: TLSContext, serverHostname: String? = nil,
                handshakeTimeout: TimeAmount = .seconds(10), closeTimeout: TimeAmount = .seconds(5)) throws {
        self.connection = try tlsContext.makeConnection(serverHostname: serverHostname)
        self.handshakeTimeout = handshakeTimeout
        self.closeTimeout = closeTimeout
    }

    // MARK: Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startHandshake(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        startHandshake(context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        switch state {
        case .handshaking, .idle:
            context.fireErrorCaught(TLSHandlerError.eofDuringHandshake)
        case .active:
            context.fireUserInboundEventTriggered(TLSEvent.uncleanShutdown)
        case .closing, .closed:
            break
        }
        finish(context: context, error: ChannelError.ioOnClosedChannel)
        closePromise?.succeed()
        closePromise = nil
        context.fireChannelInactive()
    }

    private func startHandshake(context: ChannelHandlerContext) {
        guard case .idle = state else { return }
        state = .handshaking
        timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: handshakeTimeout) { [self] in
            guard case .handshaking = state else { return }
            fail(context: context, error: .handshakeTimedOut)
        }
        advanceHandshake(context: context)
    }

    private func advanceHandshake(context: ChannelHandlerContext) {
        switch connection.handshake() {
        case .wantsMore:
            flushCiphertext(context: context)
        case .failed(let error):
            // Send the alert that explains the failure before closing.
            flushCiphertext(context: context)
            fail(context: context, error: .handshakeFailed(error))
        case .complete:
            timer?.cancel()
            timer = nil
            state = .active
            let info = TLSSessionInfo(protocolVersion: connection.protocolVersion, cipherSuite: connection.cipherSuite,
                                      negotiatedProtocol: connection.negotiatedProtocol, peerCertificate: connection.peerCertificate)
            session = info
            flushCiphertext(context: context)
            context.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(info))
            replayHeldWrites(context: context)
            // Application data may have arrived with the handshake's last flight.
            readPlaintext(context: context)
        }
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        buffer.withUnsafeReadableBytes { connection.feedCiphertext($0) }
        switch state {
        case .idle:
            startHandshake(context: context)
        case .handshaking:
            advanceHandshake(context: context)
        case .active, .closing:
            readPlaintext(context: context)
        case .closed:
            break
        }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        var delivered = false
        // Decrypt into scratch space and hand on right-sized buffers, rather
        // than allocating a full record's worth for every (often small) read.
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { scratch in
            reading: while true {
                switch connection.read(into: scratch) {
                case .bytes(let count):
                    delivered = true
                    guard case .active = state else { continue }
                    var buffer = context.channel.allocator.buffer(capacity: count)
                    buffer.writeBytes(UnsafeRawBufferPointer(rebasing: scratch[0..<count]))
                    context.fireChannelRead(wrapInboundOut(buffer))
                case .wantsMore:
                    break reading
                case .closed:
                    peerSentCloseNotify(context: context)
                    break reading
                case .failed(let error):
                    flushCiphertext(context: context)
                    fail(context: context, error: .protocolError(error))
                    break reading
                }
            }
        }
        if delivered { context.fireChannelReadComplete() }
        // Reading can produce output (TLS 1.3 key updates, session tickets).
        if case .active = state { flushCiphertext(context: context) }
    }

    private func peerSentCloseNotify(context: ChannelHandlerContext) {
        switch state {
        case .active:
            // Answer with our own close_notify, then close.
            _ = connection.shutdown()
            flushCiphertext(context: context)
            state = .closed
            context.close(promise: nil)
        case .closing:
            state = .closed
            timer?.cancel()
            timer = nil
            let promise = closePromise
            closePromise = nil
            context.close(promise: promise)
        case .idle, .handshaking, .closed:
            break
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        // Plaintext read completes are fired by readPlaintext; the socket's own
        // are not meaningful above TLS.
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        switch state {
        case .idle, .handshaking:
            heldWrites.append((buffer, promise))
        case .active:
            if unflushedPlaintext == nil {
                unflushedPlaintext = buffer
            } else {
                var incoming = buffer
                unflushedPlaintext!.writeBuffer(&incoming)
            }
            if let promise { unflushedPromises.append(promise) }
        case .closing, .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    private func encryptUnflushed(context: ChannelHandlerContext) {
        guard let plaintext = unflushedPlaintext else { return }
        unflushedPlaintext = nil
        let promises = unflushedPromises
        unflushedPromises = []
        // Queued before encrypting, so a failure fails them along with the rest.
        encryptedWritePromises += promises
        encrypt(plaintext, promise: nil, context: context)
    }

    public func flush(context: ChannelHandlerContext) {
        switch state {
        case .idle, .handshaking:
            heldFlush = true
        case .active:
            encryptUnflushed(context: context)
            flushCiphertext(context: context)
        case .closing, .closed:
            break
        }
    }

    private func encrypt(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        switch buffer.withUnsafeReadableBytes({ connection.write($0) }) {
        case .complete, .wantsMore:
            // A memory BIO never pushes back, so the write went through whole.
            if let promise { encryptedWritePromises.append(promise) }
        case .failed(let error):
            promise?.fail(TLSHandlerError.protocolError(error))
            fail(context: context, error: .protocolError(error))
        }
    }

    private func replayHeldWrites(context: ChannelHandlerContext) {
        let writes = heldWrites
        heldWrites = []
        for (buffer, promise) in writes { encrypt(buffer, promise: promise, context: context) }
        if heldFlush || !writes.isEmpty {
            heldFlush = false
            flushCiphertext(context: context)
        }
    }

    /// Writes and flushes all pending ciphertext, completing the promises of
    /// the plaintext it carries when the socket write completes.
    private func flushCiphertext(context: ChannelHandlerContext) {
        let promises = encryptedWritePromises
        encryptedWritePromises = []
        let pending = connection.pendingCiphertext
        guard pending > 0 else {
            for promise in promises { promise.succeed() }
            return
        }
        var out = context.channel.allocator.buffer(capacity: pending)
        connection.drainCiphertext { out.writeBytes($0) }
        var combined: EventLoopPromise<Void>?
        if !promises.isEmpty {
            let promise = context.eventLoop.makePromise(of: Void.self)
            for waiting in promises { promise.futureResult.cascade(to: waiting) }
            combined = promise
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: combined)
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        switch state {
        case .active:
            encryptUnflushed(context: context)
            state = .closing
            closePromise = promise
            _ = connection.shutdown()
            flushCiphertext(context: context)
            timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: closeTimeout) { [self] in
                guard case .closing = state else { return }
                state = .closed
                context.fireErrorCaught(TLSHandlerError.closeTimedOut)
                let promise = closePromise
                closePromise = nil
                context.close(promise: promise)
            }
        case .closing:
            if let promise {
                if let closePromise { closePromise.futureResult.cascade(to: promise) } else { closePromise = promise }
            }
        case .idle, .handshaking, .closed:
            state = .closed
            finish(context: context, error: ChannelError.ioOnClosedChannel)
            context.close(mode: mode, promise: promise)
        }
    }

    // MARK: Failure

    private func fail(context: ChannelHandlerContext, error: TLSHandlerError) {
        guard state != .closed else { return }
        state = .closed
        finish(context: context, error: error)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    /// Cancels the timer and fails every write still waiting.
    private func finish(context: ChannelHandlerContext, error: any Error) {
        timer?.cancel()
        timer = nil
        let held = heldWrites
        heldWrites = []
        for (_, promise) in held { promise?.fail(error) }
        let encrypted = encryptedWritePromises + unflushedPromises
        encryptedWritePromises = []
        unflushedPromises = []
        unflushedPlaintext = nil
        for promise in encrypted { promise.fail(error) }
    }
}

@available(*, unavailable)
extension TLSHandler: Sendable {}
