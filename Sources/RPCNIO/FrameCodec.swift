public import NIOCore
import RPCCore

/// Bytes to frames: checks each header (and its length against the limit)
/// before the payload is buffered. A bad header is a ``ConnectionError``.
final class FrameDecoderHandler: ByteToMessageDecoder {
    typealias InboundOut = Frame
    let maxFrameSize: Int

    init(maxFrameSize: Int) { self.maxFrameSize = maxFrameSize }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= FrameHeader.byteCount else { return .needMoreData }
        let limit = maxFrameSize
        let header = try buffer.withUnsafeReadableBytes { raw in
            try FrameHeader.parse(UnsafeRawBufferPointer(rebasing: raw[0..<FrameHeader.byteCount]), maxFrameSize: limit)
        }
        guard buffer.readableBytes >= FrameHeader.byteCount + Int(header.length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: FrameHeader.byteCount)
        var frame = Frame(type: header.type, flags: header.flags, streamID: header.streamID,
                          payload: buffer.readBytes(length: Int(header.length)) ?? [])
        frame.header = header
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Frames to bytes.
final class FrameEncoderHandler: MessageToByteEncoder {
    typealias OutboundIn = Frame

    func encode(data frame: Frame, out: inout ByteBuffer) throws {
        out.reserveCapacity(minimumWritableBytes: FrameHeader.byteCount + frame.payload.count)
        out.writeInteger(frame.header.length)
        out.writeInteger(frame.header.type.rawValue)
        out.writeInteger(frame.header.flags.rawValue)
        out.writeInteger(UInt16(0))
        out.writeInteger(frame.header.streamID)
        out.writeBytes(frame.payload)
    }
}

/// Limits a side enforces and advertises in SETTINGS, and the timers it
/// runs (docs/rpc-protocol.md §9–10).
public struct RPCLimits: Sendable, Hashable {
    public var maxFrameSize = 4 * 1024 * 1024
    public var maxConcurrentStreams = 100
    public var initialWindowSize = 1024 * 1024
    public var maxMetadataSize = 16 * 1024
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

    public init(maxFrameSize: Int = 4 * 1024 * 1024, maxConcurrentStreams: Int = 100, initialWindowSize: Int = 1024 * 1024,
                maxMetadataSize: Int = 16 * 1024) {
        self.maxFrameSize = maxFrameSize
        self.maxConcurrentStreams = maxConcurrentStreams
        self.initialWindowSize = initialWindowSize
        self.maxMetadataSize = maxMetadataSize
    }

    var settingsFrame: Frame {
        let settings = RpcSettings(maxFrameSize: UInt32(maxFrameSize), maxConcurrentStreams: UInt32(maxConcurrentStreams),
                                   initialWindowSize: UInt32(initialWindowSize), maxMetadataSize: UInt32(maxMetadataSize))
        return Frame(type: .settings, streamID: 0, payload: settings.serializedBytes())
    }
}

/// What a peer's SETTINGS say, with zeros replaced by the defaults.
struct PeerSettings {
    var maxFrameSize = 4 * 1024 * 1024
    var maxConcurrentStreams = 100
    var initialWindowSize = 1024 * 1024
    var maxMetadataSize = 16 * 1024

    /// Decodes and range-checks a SETTINGS payload (docs/rpc-protocol.md §3).
    init(payload: [UInt8]) throws(ConnectionError) {
        guard let settings = try? RpcSettings(serializedBytes: payload) else {
            throw ConnectionError(.protocolError, "SETTINGS payload does not decode")
        }
        if settings.maxFrameSize != 0 {
            guard (16384...16_777_216).contains(settings.maxFrameSize) else {
                throw ConnectionError(.protocolError, "SETTINGS max_frame_size \(settings.maxFrameSize) is out of range")
            }
            maxFrameSize = Int(settings.maxFrameSize)
        }
        if settings.maxConcurrentStreams != 0 { maxConcurrentStreams = Int(settings.maxConcurrentStreams) }
        if settings.initialWindowSize != 0 {
            guard settings.initialWindowSize <= Int32.max else {
                throw ConnectionError(.protocolError, "SETTINGS initial_window_size \(settings.initialWindowSize) is out of range")
            }
            initialWindowSize = Int(settings.initialWindowSize)
        }
        if settings.maxMetadataSize != 0 { maxMetadataSize = Int(settings.maxMetadataSize) }
    }

    init() {}
}

import TollgateProto

extension ConnectionError.Reason {
    var goAwayReason: RpcGoAwayReason {
        switch self {
        case .protocolError: .protocolError
        case .frameTooLarge: .frameTooLarge
        case .idle: .idle
        case .keepaliveTimeout: .keepaliveTimeout
        }
    }
}

func goAwayFrame(lastStreamID: UInt32, reason: RpcGoAwayReason, message: String) -> Frame {
    do {
        return Frame(type: .goAway, streamID: 0, payload: try RpcGoAway(lastStreamId: lastStreamID, reason: reason, message: message).serializedBytes())
    } catch {
        // The text holds U+0000; the peer still learns why, just not in those words.
        return goAwayFrame(lastStreamID: lastStreamID, reason: reason, message: "(the reason cannot be sent: \(error))")
    }
}

func windowUpdateFrame(streamID: UInt32, increment: Int) -> Frame {
    let value = UInt32(clamping: increment)
    return Frame(type: .windowUpdate, streamID: streamID,
                 payload: [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)])
}

func windowIncrement(_ payload: [UInt8]) -> Int {
    payload.prefix(4).reduce(0) { $0 << 8 | Int($1) }
}

/// Applies a WINDOW_UPDATE to a send window: a zero increment or a window
/// above 2^31 − 1 is a connection error (docs/rpc-protocol.md §8).
func grow(_ window: inout Int, by payload: [UInt8]) throws(ConnectionError) {
    let increment = windowIncrement(payload)
    guard increment > 0 else { throw ConnectionError(.protocolError, "WINDOW_UPDATE with increment 0") }
    guard window + increment <= Int(Int32.max) else { throw ConnectionError(.protocolError, "WINDOW_UPDATE raises the window above 2147483647") }
    window += increment
}

func trailersFrame(streamID: UInt32, error: RPCError?, metadata: Metadata) -> Frame {
    var trailers = RpcTrailers()
    trailers.code = error?.code.rawValue ?? 0
    trailers.message = error?.message ?? ""
    trailers.metadata = (metadata.isEmpty ? (error?.metadata ?? Metadata()) : metadata).protoEntries
    do {
        return Frame(type: .trailers, streamID: streamID, payload: try trailers.serializedBytes())
    } catch {
        // The status message or metadata holds U+0000 (text quoting some
        // input, say). The caller must not see OK or a cut message: it gets
        // INTERNAL naming the field, whose text never holds U+0000.
        return trailersFrame(streamID: streamID, error: RPCError(.internal, "the call's status cannot be sent: \(error)"), metadata: Metadata())
    }
}

func cancelFrame(streamID: UInt32, code: RPCCode, message: String) -> Frame {
    do {
        return Frame(type: .cancel, streamID: streamID, payload: try RpcCancel(code: code.rawValue, message: message).serializedBytes())
    } catch {
        return cancelFrame(streamID: streamID, code: code, message: "(the reason cannot be sent: \(error))")
    }
}
