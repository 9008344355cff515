public import TollgateProto

/// The four values a side advertises in SETTINGS (docs/rpc-protocol.md §3),
/// each about what that side accepts.
public struct ConnectionSettings: Sendable, Hashable {
    public static let defaultMaxFrameSize = 4 * 1024 * 1024
    public static let defaultMaxConcurrentStreams = 100
    public static let defaultInitialWindowSize = 1024 * 1024
    public static let defaultMaxMetadataSize = 16 * 1024

    /// Largest frame payload accepted.
    public var maxFrameSize: Int
    /// Streams the peer may have open towards this side at once (only the server's value matters).
    public var maxConcurrentStreams: Int
    /// Starting receive window of each stream, in MESSAGE payload bytes.
    public var initialWindowSize: Int
    /// Largest metadata list accepted in one HEADERS or TRAILERS.
    public var maxMetadataSize: Int

    public init(maxFrameSize: Int = defaultMaxFrameSize, maxConcurrentStreams: Int = defaultMaxConcurrentStreams,
                initialWindowSize: Int = defaultInitialWindowSize, maxMetadataSize: Int = defaultMaxMetadataSize) {
        self.maxFrameSize = maxFrameSize
        self.maxConcurrentStreams = maxConcurrentStreams
        self.initialWindowSize = initialWindowSize
        self.maxMetadataSize = maxMetadataSize
    }

    /// Decodes and range-checks a peer's SETTINGS payload; a field left at 0
    /// means the default.
    public init(payload: [UInt8]) throws(ConnectionError) {
        self.init()
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

    /// The SETTINGS frame advertising these values.
    public var frame: Frame {
        let settings = RpcSettings(maxFrameSize: UInt32(clamping: maxFrameSize), maxConcurrentStreams: UInt32(clamping: maxConcurrentStreams),
                                   initialWindowSize: UInt32(clamping: initialWindowSize), maxMetadataSize: UInt32(clamping: maxMetadataSize))
        return Frame(type: .settings, streamID: 0, payload: settings.serializedBytes())
    }
}

extension ConnectionError.Reason {
    /// The reason GOAWAY carries for this error.
    public var goAwayReason: RpcGoAwayReason {
        switch self {
        case .protocolError: .protocolError
        case .frameTooLarge: .frameTooLarge
        case .idle: .idle
        case .keepaliveTimeout: .keepaliveTimeout
        case .resourceExhausted: .resourceExhausted
        }
    }
}

/// The control frames both sides build, in one place.
extension Frame {
    public static let settingsAck = Frame(type: .settings, flags: .ack, streamID: 0)

    public static func pingAck(payload: [UInt8]) -> Frame {
        Frame(type: .ping, flags: .ack, streamID: 0, payload: payload)
    }

    public static func goAway(lastStreamID: UInt32, reason: RpcGoAwayReason, message: String) -> Frame {
        do {
            return Frame(type: .goAway, streamID: 0, payload: try RpcGoAway(lastStreamId: lastStreamID, reason: reason, message: message).serializedBytes())
        } catch {
            // The text holds U+0000; the peer still learns why, just not in those words.
            return goAway(lastStreamID: lastStreamID, reason: reason, message: "(the reason cannot be sent: \(error))")
        }
    }

    public static func windowUpdate(streamID: UInt32, increment: Int) -> Frame {
        let value = UInt32(clamping: increment)
        return Frame(type: .windowUpdate, streamID: streamID,
                     payload: [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)])
    }

    /// TRAILERS with `error`'s status (OK when nil). Trailing metadata is
    /// `metadata`, or the error's own when `metadata` is empty.
    public static func trailers(streamID: UInt32, error: RPCError?, metadata: Metadata) -> Frame {
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
            return Frame.trailers(streamID: streamID, error: RPCError(.internal, "the call's status cannot be sent: \(error)"), metadata: Metadata())
        }
    }

    public static func cancel(streamID: UInt32, code: RPCCode, message: String) -> Frame {
        do {
            return Frame(type: .cancel, streamID: streamID, payload: try RpcCancel(code: code.rawValue, message: message).serializedBytes())
        } catch {
            return cancel(streamID: streamID, code: code, message: "(the reason cannot be sent: \(error))")
        }
    }

    /// A WINDOW_UPDATE's increment (the parser has checked it is 4 bytes).
    public var windowIncrement: Int {
        payload.prefix(4).reduce(0) { $0 << 8 | Int($1) }
    }
}
