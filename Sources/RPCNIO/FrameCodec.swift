public import NIOCore
public import RPCCore
import TollgateProto

/// Bytes to frames. The parsing is RPCCore's (``Frame/parse(_:maxFrameSize:)``,
/// shared with the fuzzer and the tests): this hands it the readable bytes
/// in place and consumes what it took, so each payload is copied once, out of
/// the ByteBuffer. A bad header, or one over the limit, is a
/// ``ConnectionError`` as soon as its 12 bytes are in, before the payload is
/// buffered.
///
/// On a server connection the ``ConnectionBudget`` is consulted as soon as a
/// header is in: a frame above the connection's current limit (lower before
/// it authenticates) is refused, and a payload still arriving is reserved in
/// the budget before it is buffered.
final class FrameDecoderHandler: ByteToMessageDecoder {
    typealias InboundOut = Frame
    let maxFrameSize: Int
    private let budget: ConnectionBudget?

    init(maxFrameSize: Int, budget: ConnectionBudget? = nil) {
        self.maxFrameSize = maxFrameSize
        self.budget = budget
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let limit = maxFrameSize
        if let budget, buffer.readableBytes >= FrameHeader.byteCount {
            let header = try buffer.withUnsafeReadableBytes { bytes throws(ConnectionError) in
                try FrameHeader.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<FrameHeader.byteCount]), maxFrameSize: limit)
            }
            let length = Int(header.length)
            guard length <= budget.frameLimit else {
                throw ConnectionError(.resourceExhausted, "a frame of \(length) bytes before the connection authenticated; the limit is \(budget.frameLimit)")
            }
            if buffer.readableBytes < FrameHeader.byteCount + length {
                if let refusal = budget.reservePartialFrame(length) { throw ConnectionError(.resourceExhausted, refusal) }
                return .needMoreData
            }
            budget.partialFrameArrived()
        }
        let parsed = try buffer.withUnsafeReadableBytes { bytes throws(ConnectionError) in
            try Frame.parse(bytes, maxFrameSize: limit)
        }
        guard let (frame, byteCount) = parsed else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: byteCount)
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Frames to bytes, with RPCCore's header layout (``FrameHeader/encode(into:)``).
/// The connection handlers write `ByteBuffer`s themselves: a buffer travels
/// the pipeline without being boxed, and there is no encoder stage to pass.
enum FrameEncoding {
    static func encode(_ frame: Frame, into out: inout ByteBuffer) {
        out.reserveCapacity(minimumWritableBytes: FrameHeader.byteCount + frame.payload.count)
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: FrameHeader.byteCount) { bytes in
            frame.header.encode(into: bytes)
            return FrameHeader.byteCount
        }
        out.writeBytes(frame.payload)
    }

    static func buffer(_ frame: Frame, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: FrameHeader.byteCount + frame.payload.count)
        encode(frame, into: &out)
        return out
    }
}

/// A MESSAGE frame, header and payload, serialized straight from a message
/// into a `ByteBuffer`: no intermediate byte array, one copy out of
/// protobuf-c's arena. Built in the handler's task, so the event loop only
/// queues it.
struct EncodedMessage: Sendable {
    let buffer: ByteBuffer
    /// The payload's size, which the flow-control window is charged.
    let payloadCount: Int

    init(_ message: any ProtoMessage, streamID: UInt32, flags: FrameFlags = [], allocator: ByteBufferAllocator) throws(RPCError) {
        var encoded: (buffer: ByteBuffer, count: Int)?
        do {
            // The non-generic lending call: each message type's own specialized code.
            try message.serialize { raw in
                var buffer = allocator.buffer(capacity: FrameHeader.byteCount + raw.count)
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: FrameHeader.byteCount) { bytes in
                    FrameHeader(length: UInt32(raw.count), type: .message, flags: flags, streamID: streamID).encode(into: bytes)
                    return FrameHeader.byteCount
                }
                buffer.writeBytes(raw)
                encoded = (buffer, raw.count)
            }
        } catch {
            // A string holding U+0000 (docs/proto.md): the sending side's fault.
            throw RPCError(.internal, "\(error)")
        }
        guard let encoded else { throw RPCError(.internal, "\(message) produced no bytes") }
        (buffer, payloadCount) = encoded
    }
}

/// Limits a side enforces and advertises in SETTINGS, and the timers it
/// runs (docs/rpc-protocol.md §9–10).
public struct RPCLimits: Sendable, Hashable {
    public var maxFrameSize = ConnectionSettings.defaultMaxFrameSize
    public var maxConcurrentStreams = ConnectionSettings.defaultMaxConcurrentStreams
    public var initialWindowSize = ConnectionSettings.defaultInitialWindowSize
    public var maxMetadataSize = ConnectionSettings.defaultMaxMetadataSize
    /// Server: time from accepting the socket to the client's SETTINGS.
    public var handshakeTimeout = TimeAmount.seconds(10)
    /// Server: silence after which it sends a PING.
    public var keepaliveInterval = TimeAmount.seconds(30)
    /// Server: how long it waits for that PING's ACK.
    public var keepaliveTimeout = TimeAmount.seconds(10)
    /// Server: how long a connection with no open stream may stay.
    public var idleTimeout = TimeAmount.minutes(5)
    /// Server: open connections per listener; more are closed on accept.
    public var maxConnections = 4096
    // Memory budgets (docs/rpc-protocol.md §9): what a peer can make the
    // server hold for requests it has not handed to a handler yet.
    /// Server: streams open at once on a connection that has not authenticated anything.
    public var unauthenticatedMaxConcurrentStreams = 4
    /// Server: largest frame payload accepted from a connection that has not authenticated anything.
    public var unauthenticatedMaxFrameSize = 16 * 1024
    /// Server: request bytes a connection that has not authenticated anything may hold.
    public var unauthenticatedMaxBufferedBytes = 64 * 1024
    /// Server: request bytes the unauthenticated connections of one source address may hold together.
    public var unauthenticatedMaxBufferedBytesPerAddress = 256 * 1024
    /// Server: request bytes an authenticated connection may hold.
    public var maxBufferedBytesPerConnection = 64 * 1024 * 1024
    /// Server: request bytes all connections of the node may hold together.
    public var maxBufferedBytes = 256 * 1024 * 1024
    /// Server: time from accepting the socket for the connection to
    /// authenticate something (a cluster certificate, or a call admitted with
    /// an identity); a connection that has not is closed.
    public var unauthenticatedTimeout = TimeAmount.seconds(30)
    /// Server: connections that have authenticated nothing, per source IP
    /// address and listener; more are closed on accept.
    public var maxUnauthenticatedConnectionsPerAddress = 64

    public init(maxFrameSize: Int = ConnectionSettings.defaultMaxFrameSize, maxConcurrentStreams: Int = ConnectionSettings.defaultMaxConcurrentStreams,
                initialWindowSize: Int = ConnectionSettings.defaultInitialWindowSize, maxMetadataSize: Int = ConnectionSettings.defaultMaxMetadataSize) {
        self.maxFrameSize = maxFrameSize
        self.maxConcurrentStreams = maxConcurrentStreams
        self.initialWindowSize = initialWindowSize
        self.maxMetadataSize = maxMetadataSize
    }

    /// What this side advertises in SETTINGS and enforces.
    var settings: ConnectionSettings {
        ConnectionSettings(maxFrameSize: maxFrameSize, maxConcurrentStreams: maxConcurrentStreams,
                           initialWindowSize: initialWindowSize, maxMetadataSize: maxMetadataSize)
    }

    var settingsFrame: Frame { settings.frame }
}
