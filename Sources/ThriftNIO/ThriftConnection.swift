import NIOCore
import NIOPosix
import OpenSSLKit
import ThriftCore
import TollgateTLS

/// Why a Thrift call got no usable answer from one keymanager.
public struct ThriftTransportError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One persistent TLS connection to a keymanager's Thrift port (unframed
/// TBinaryProtocol): one call at a time, sequence ids from 1 as libthrift's
/// client numbers them, each reply checked against its call's id.
final class ThriftConnection: Sendable {
    let channel: any Channel
    private let handler: NIOLoopBound<ThriftClientHandler>

    private init(channel: any Channel, handler: NIOLoopBound<ThriftClientHandler>) {
        self.channel = channel
        self.handler = handler
    }

    static func connect(host: String, port: Int, serverHostname: String?, tls: TLSContext, connectTimeout: TimeAmount,
                        on loop: any EventLoop) async throws -> ThriftConnection {
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls, serverHostname: serverHostname, handshakeTimeout: connectTimeout))
                    try channel.pipeline.syncOperations.addHandler(ThriftClientHandler())
                }
            }
            .connect(host: host, port: port).get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ThriftClientHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return ThriftConnection(channel: channel, handler: handler)
    }

    var isActive: Bool { channel.isActive }

    /// Sends a CALL (a whole TBinaryProtocol message, its sequence id left
    /// for the connection to number) and waits for its reply's bytes; a
    /// missing or late reply closes the connection (its state is unknown)
    /// and throws.
    func call(_ name: String, _ message: [UInt8], timeout: TimeAmount) async throws -> [UInt8] {
        let loop = channel.eventLoop
        // A caller on the connection's loop sends at once; others hop to it.
        if loop.inEventLoop { return try await handler.value.call(name, message, timeout: timeout, on: loop).get() }
        return try await loop.flatSubmit { [handler] in
            handler.value.call(name, message, timeout: timeout, on: loop)
        }.get()
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// The connection's end of the exchange, on its event loop: numbers and
/// sends a call, collects reply bytes until a whole message has arrived
/// (checked, not decoded: the caller decodes it), and fails the call when
/// the read timeout passes or the connection ends.
final class ThriftClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var context: ChannelHandlerContext?
    private var sequenceID: Int32 = 0
    private var pending: (promise: EventLoopPromise<[UInt8]>, name: String, sequenceID: Int32, timer: Scheduled<Void>)?
    private var received: [UInt8] = []
    private var failure: (any Error)?
    private let limits = ThriftLimits()

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func call(_ name: String, _ message: [UInt8], timeout: TimeAmount, on loop: any EventLoop) -> EventLoopFuture<[UInt8]> {
        let promise = loop.makePromise(of: [UInt8].self)
        guard let context, failure == nil else {
            promise.fail(failure ?? ThriftTransportError("the connection is closed"))
            return promise.futureResult
        }
        guard pending == nil else {
            promise.fail(ThriftTransportError("a call is already in progress on this connection"))
            return promise.futureResult
        }
        sequenceID &+= 1
        // The strict header: version and type, the name's length and bytes, then the sequence id.
        let offset = 8 + name.utf8.count
        guard message.count >= offset + 4 else {
            promise.fail(ThriftTransportError("a call message too short for its header"))
            return promise.futureResult
        }
        var buffer = context.channel.allocator.buffer(capacity: message.count)
        buffer.writeBytes(message)
        buffer.setInteger(sequenceID, at: offset)
        let timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: timeout) { [self] in
            fail(ThriftTransportError("no reply to \(name) within \(timeout.nanoseconds / 1_000_000) ms"))
        }
        pending = (promise, name, sequenceID, timer)
        context.writeAndFlush(NIOAny(buffer), promise: nil)
        return promise.futureResult
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytesView
        guard let waiting = pending else {
            fail(ThriftTransportError("bytes arrived with no call waiting"))
            return
        }
        let reply: ThriftMessageHeader, length: Int
        do {
            (reply, length) = try ThriftProtocol.binaryMessageLength(received[...], limits: limits)
        } catch .truncated {
            if received.count > limits.maxMessageSize { fail(ThriftTransportError("a reply over \(limits.maxMessageSize) bytes")) }
            return
        } catch {
            fail(ThriftTransportError("an unreadable reply: \(error)"))
            return
        }
        guard length == received.count else {
            fail(ThriftTransportError("bytes beyond the reply"))
            return
        }
        let bytes = received
        received = []
        guard reply.sequenceID == waiting.sequenceID else {
            // libthrift's BAD_SEQUENCE_ID: the stream is out of step; drop it.
            fail(ThriftApplicationException(.badSequenceID, "\(waiting.name) failed: out of sequence response"))
            return
        }
        pending = nil
        waiting.timer.cancel()
        waiting.promise.succeed(bytes)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(ThriftTransportError("the keymanager closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(ThriftTransportError("connection error: \(error)"))
    }

    /// Fails the call in progress and every later one, and closes.
    private func fail(_ error: any Error) {
        if failure == nil { failure = error }
        if let waiting = pending {
            pending = nil
            waiting.timer.cancel()
            waiting.promise.fail(error)
        }
        context?.close(promise: nil)
    }
}

@available(*, unavailable)
extension ThriftClientHandler: Sendable {}
