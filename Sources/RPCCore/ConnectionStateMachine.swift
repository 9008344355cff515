public import TollgateProto

/// The connection-level rules of docs/rpc-protocol.md for one side of one
/// connection, as a plain value that both the client and the server
/// transport drive: SETTINGS (first, once, in range, ACK once), PING and its
/// ACK, GOAWAY both ways, frames a side never receives, stream ids, the
/// stream limits, the peer's `max_frame_size` for outgoing messages, and
/// flow control (send and receive windows, WINDOW_UPDATE checks and grants).
/// Each open stream's frame order is its ``StreamState``, kept here.
///
/// It performs no I/O and keeps no clock: a transport feeds it every frame it
/// receives and asks it before sending, then carries out the ``Action`` or
/// outcome it returns (write a frame, end a call, close). Timers, handler
/// tasks, waiting calls and what a call's frames mean to the application
/// stay with the transport.
///
/// Its table of open streams mirrors the transport's: a stream enters when
/// the client opens it (``openStream(requestByteCount:)``) or the server
/// accepts its HEADERS (``Action/streamOpened(id:headers:metadata:endStream:)``),
/// and leaves with TRAILERS or CANCEL (received, or sent through
/// ``closeStream(_:)``), a stream error (``Action/resetStream(id:error:cancel:)``),
/// GOAWAY or the end of the connection.
public struct ConnectionStateMachine: Sendable {
    public typealias Role = StreamState.Role

    /// One open stream: the order of its frames and both directions' windows
    /// (docs/rpc-protocol.md §8).
    struct StreamFlow: Sendable {
        var state: StreamState
        /// MESSAGE bytes this side may still send; may go negative.
        var sendWindow: Int
        /// `initial + granted − received` for the peer's MESSAGE bytes.
        var receiveWindow: Int
        /// Bytes the application consumed and the peer was not yet granted back.
        var consumedUngranted = 0
    }

    public let role: Role
    /// What this side advertises in its SETTINGS and enforces.
    public let local: ConnectionSettings
    /// What the peer advertised: the defaults until its SETTINGS arrive.
    public private(set) var peer = ConnectionSettings()
    public private(set) var receivedSettings = false
    private var receivedSettingsAck = false
    /// Server: the highest stream id a client HEADERS used, GOAWAY's
    /// `last_stream_id`. Client: the highest id it opened.
    public private(set) var lastStreamID: UInt32 = 0
    /// Server: GOAWAY SHUTDOWN was sent; new streams are ignored.
    public private(set) var isQuiescing = false
    /// Client: `last_stream_id` of the GOAWAY received, if one was.
    public private(set) var receivedGoAway: UInt32?
    /// A connection error was raised, the peer's GOAWAY ends everything
    /// (server), or the connection is gone: received frames are ignored.
    public private(set) var isClosing = false
    private var streams: [UInt32: StreamFlow] = [:]
    /// Payload of our PING still waiting for its ACK.
    private var outstandingPing: [UInt8]?
    private var pingsSent: UInt64 = 0

    public init(role: Role, local: ConnectionSettings) {
        self.role = role
        self.local = local
    }

    /// What a transport does about a received frame.
    public enum Action: Sendable, Hashable {
        /// Nothing: an ACK recorded, a frame for a closed stream dropped.
        case none
        /// Write `frame` (a PING's ACK).
        case send(Frame)
        /// The peer's SETTINGS are in force (``peer``; open streams' send
        /// windows moved by the change of `initial_window_size`): write `ack`.
        case settingsApplied(ack: Frame)
        /// The ACK of our PING (``keepalivePing()``) arrived.
        case pingAcknowledged
        /// The peer sent GOAWAY. Streams above `lastStreamID` have left the
        /// table: they were not processed, and the transport ends its calls
        /// on them. A server keeps none (a client's GOAWAY abandons every
        /// call, so `lastStreamID` is 0) and closes; a client closes once
        /// ``isDrained``.
        case goAwayReceived(lastStreamID: UInt32)
        /// Server: a client HEADERS passed the protocol's checks (id, stream
        /// limit, payload, metadata size and form) and stream `id` is open.
        /// The transport resolves the method next; refusing the call there
        /// means ``closeStream(_:)`` and TRAILERS.
        case streamOpened(id: UInt32, headers: RpcRequestHeaders, metadata: Metadata, endStream: Bool)
        /// A frame for open stream `id`, for its call. Windows are already
        /// accounted: after `.windowUpdate`, queued messages may go
        /// (``releaseQueuedMessage(streamID:byteCount:)``). After `.trailers`
        /// or `.cancelled` the stream has left the table.
        case streamEvent(id: UInt32, event: StreamState.Event, payload: [UInt8])
        /// A stream error (or a server refusing a new stream): `id` has left
        /// the table; write `cancel` and end its call, if any, with `error`.
        case resetStream(id: UInt32, error: RPCError, cancel: Frame)
        /// A connection error: write `goAway`, flush, close.
        case closeConnection(ConnectionError, goAway: Frame)
    }

    // MARK: Receiving

    /// Applies a frame received from the peer (already checked by the frame
    /// parser: known type, stream 0 or not, fixed payload sizes).
    public mutating func receive(_ frame: Frame) -> Action {
        guard !isClosing else { return .none }
        let type = frame.header.type
        guard receivedSettings || (type == .settings && !frame.header.flags.contains(.ack)) else {
            return fail(ConnectionError(.protocolError, "the first frame must be SETTINGS, not \(type)"))
        }
        switch (role, type) {
        case (_, .settings): return receiveSettings(frame)
        case (_, .ping): return receivePing(frame)
        case (_, .goAway): return receiveGoAway(frame)
        case (.server, .headers): return receiveHeaders(frame)
        case (.server, .trailers): return fail(ConnectionError(.protocolError, "TRAILERS from a client"))
        case (.client, .endStream): return fail(ConnectionError(.protocolError, "END_STREAM from a server"))
        case (_, .headers), (_, .message), (_, .trailers), (_, .cancel), (_, .windowUpdate), (_, .endStream):
            return receiveStreamFrame(frame)
        }
    }

    private mutating func receiveSettings(_ frame: Frame) -> Action {
        if frame.header.flags.contains(.ack) {
            guard !receivedSettingsAck else { return fail(ConnectionError(.protocolError, "a second SETTINGS ACK")) }
            receivedSettingsAck = true
            return .none
        }
        guard !receivedSettings else { return fail(ConnectionError(.protocolError, "a second SETTINGS")) }
        let settings: ConnectionSettings
        do {
            settings = try ConnectionSettings(payload: frame.payload)
        } catch {
            return fail(error)
        }
        // Streams opened on the defaults take the difference (docs/rpc-protocol.md §3).
        let change = settings.initialWindowSize - peer.initialWindowSize
        if change != 0 {
            streams = streams.mapValues { flow in
                var flow = flow
                flow.sendWindow += change
                return flow
            }
        }
        peer = settings
        receivedSettings = true
        return .settingsApplied(ack: .settingsAck)
    }

    private mutating func receivePing(_ frame: Frame) -> Action {
        guard frame.header.flags.contains(.ack) else { return .send(.pingAck(payload: frame.payload)) }
        // An ACK matching no PING of ours is ignored (docs/rpc-protocol.md §2).
        guard let outstanding = outstandingPing, outstanding == frame.payload else { return .none }
        outstandingPing = nil
        return .pingAcknowledged
    }

    private mutating func receiveGoAway(_ frame: Frame) -> Action {
        let limit: UInt32
        switch role {
        case .server:
            limit = 0
            isClosing = true
        case .client:
            // The server is leaving whatever the payload says; one that does
            // not decode vouches for no stream.
            limit = (try? RpcGoAway(serializedBytes: frame.payload))?.lastStreamId ?? 0
            receivedGoAway = limit
        }
        streams = streams.filter { $0.key <= limit }
        return .goAwayReceived(lastStreamID: limit)
    }

    /// Server: checks a client HEADERS in the order of docs/rpc-protocol.md §5
    /// (steps 1–3; the method and the caller are the transport's).
    private mutating func receiveHeaders(_ frame: Frame) -> Action {
        let id = frame.header.streamID
        guard id > lastStreamID else {
            return fail(ConnectionError(.protocolError, "stream id \(id) is not greater than \(lastStreamID)"))
        }
        // Above GOAWAY's last_stream_id: not processed, and not counted in it.
        guard !isQuiescing else { return .none }
        lastStreamID = id
        guard streams.count < local.maxConcurrentStreams else {
            return refuse(id, RPCError(.resourceExhausted, "more than \(local.maxConcurrentStreams) concurrent calls"))
        }
        guard let headers = try? RpcRequestHeaders(serializedBytes: frame.payload) else {
            return fail(ConnectionError(.protocolError, "HEADERS payload does not decode"))
        }
        let metadata = Metadata(protoEntries: headers.metadata)
        guard metadata.byteCount <= local.maxMetadataSize else {
            return refuse(id, RPCError(.resourceExhausted, "metadata exceeds \(local.maxMetadataSize) bytes"))
        }
        do {
            try metadata.validate()
        } catch {
            return refuse(id, RPCError(.internal, error.message))
        }
        var state = StreamState(role: .server)
        let endStream = frame.header.flags.contains(.endStream)
        if endStream { _ = try? state.receive(.endStream, flags: []) }
        streams[id] = StreamFlow(state: state, sendWindow: peer.initialWindowSize, receiveWindow: local.initialWindowSize)
        return .streamOpened(id: id, headers: headers, metadata: metadata, endStream: endStream)
    }

    private mutating func receiveStreamFrame(_ frame: Frame) -> Action {
        let id = frame.header.streamID
        // Never opened, or closed: may have crossed a CANCEL or TRAILERS (§2).
        guard var flow = streams[id] else { return .none }
        let event: StreamState.Event
        do {
            event = try flow.state.receive(frame.header.type, flags: frame.header.flags)
        } catch {
            return reset(id, RPCError(.internal, error.message))
        }
        switch event {
        case .requestMessage, .responseMessage:
            guard flow.receiveWindow > 0 else { return reset(id, RPCError(.resourceExhausted, "flow-control window exceeded")) }
            flow.receiveWindow -= frame.payload.count
        case .windowUpdate:
            let increment = frame.windowIncrement
            guard increment > 0 else { return fail(ConnectionError(.protocolError, "WINDOW_UPDATE with increment 0")) }
            guard flow.sendWindow + increment <= Int(Int32.max) else {
                return fail(ConnectionError(.protocolError, "WINDOW_UPDATE raises the window above 2147483647"))
            }
            flow.sendWindow += increment
        case .ignored:
            return .none
        case .requestsEnded, .responseHeaders, .trailers, .cancelled:
            break
        }
        streams[id] = flow.state.isClosed ? nil : flow
        return .streamEvent(id: id, event: event, payload: frame.payload)
    }

    private mutating func fail(_ error: ConnectionError) -> Action {
        isClosing = true
        return .closeConnection(error, goAway: goAway(for: error))
    }

    private mutating func reset(_ id: UInt32, _ error: RPCError) -> Action {
        streams[id] = nil
        return .resetStream(id: id, error: error, cancel: .cancel(streamID: id, code: error.code, message: error.message))
    }

    private func refuse(_ id: UInt32, _ error: RPCError) -> Action {
        .resetStream(id: id, error: error, cancel: .cancel(streamID: id, code: error.code, message: error.message))
    }

    // MARK: The connection

    /// A connection error found anywhere (a frame, the decoder, a timer):
    /// the GOAWAY to send before closing, with the reason and, from a server,
    /// the highest stream id accepted (a client puts 0). Nil when the
    /// connection is already closing, so GOAWAY goes out once.
    public mutating func connectionError(_ error: ConnectionError) -> Frame? {
        guard !isClosing else { return nil }
        isClosing = true
        return goAway(for: error)
    }

    private func goAway(for error: ConnectionError) -> Frame {
        .goAway(lastStreamID: role == .server ? lastStreamID : 0, reason: error.reason.goAwayReason, message: error.message)
    }

    /// The connection is gone, and every stream with it.
    public mutating func connectionClosed() {
        isClosing = true
        streams.removeAll()
    }

    /// Server: starts a graceful shutdown. Returns the GOAWAY SHUTDOWN to
    /// send, naming the highest stream id accepted; nil if already done.
    public mutating func startQuiescing() -> Frame? {
        guard !isQuiescing, !isClosing else { return nil }
        isQuiescing = true
        return .goAway(lastStreamID: lastStreamID, reason: .shutdown, message: "server shutting down")
    }

    /// Going away (GOAWAY sent or received) with no stream left: time to close.
    public var isDrained: Bool { (isQuiescing || receivedGoAway != nil) && streams.isEmpty }

    /// A keepalive PING to send, or nil while an earlier one awaits its ACK.
    public mutating func keepalivePing() -> Frame? {
        guard outstandingPing == nil, !isClosing else { return nil }
        pingsSent &+= 1
        let payload = withUnsafeBytes(of: pingsSent.bigEndian) { Array($0) }
        outstandingPing = payload
        return Frame(type: .ping, streamID: 0, payload: payload)
    }

    // MARK: Streams

    public var openStreamCount: Int { streams.count }

    public func isOpen(_ id: UInt32) -> Bool { streams[id] != nil }

    /// The stream's send window, if it is open (for tests and diagnostics).
    public func sendWindow(of id: UInt32) -> Int? { streams[id]?.sendWindow }

    /// The stream's receive window, if it is open.
    public func receiveWindow(of id: UInt32) -> Int? { streams[id]?.receiveWindow }

    /// Client: whether new calls may start here: no GOAWAY, not closing,
    /// stream ids left.
    public var acceptsNewStreams: Bool { !isClosing && receivedGoAway == nil && lastStreamID < UInt32.max - 2 }

    /// Client: whether the server's `max_concurrent_streams` leaves room for one more.
    public var hasStreamCapacity: Bool { streams.count < peer.maxConcurrentStreams }

    public enum OpenOutcome: Sendable, Hashable {
        /// Write HEADERS (and the request) on stream `id`.
        case opened(UInt32)
        /// The server's stream limit is reached: keep the call until a stream closes.
        case wait
        /// GOAWAY, a connection error, or no ids left: the call was not sent.
        case closing
        /// The request is larger than the server accepts.
        case refused(RPCError)
    }

    /// Client: opens the next stream for a call. With `requestByteCount`,
    /// its one request goes with the HEADERS as a MESSAGE with END_STREAM
    /// (a unary call) and takes send window.
    public mutating func openStream(requestByteCount: Int? = nil) -> OpenOutcome {
        guard acceptsNewStreams else { return .closing }
        if let count = requestByteCount, count > peer.maxFrameSize { return .refused(tooLarge(count)) }
        guard hasStreamCapacity else { return .wait }
        lastStreamID += 1
        var flow = StreamFlow(state: StreamState(role: .client), sendWindow: peer.initialWindowSize, receiveWindow: local.initialWindowSize)
        try? flow.state.send(.headers)
        if let count = requestByteCount {
            try? flow.state.send(.message, flags: .endStream)
            flow.sendWindow -= count
        }
        streams[lastStreamID] = flow
        return .opened(lastStreamID)
    }

    public enum SendOutcome: Sendable, Hashable {
        /// Write the MESSAGE now; its bytes are taken from the send window.
        case now
        /// Keep it until WINDOW_UPDATE (``releaseQueuedMessage(streamID:byteCount:)``).
        case waitForWindow
        /// Larger than the peer's `max_frame_size`: never sent.
        case tooLarge(RPCError)
        /// The stream is closed, or its state forbids the message.
        case refused(RPCError)
    }

    /// A MESSAGE this side wants to send on stream `id`. Its size and the
    /// stream's state are checked now, and the state records it; it goes now
    /// if the send window is open and no earlier message of the stream is
    /// still waiting (`queuedAhead`), which keeps them in order.
    public mutating func sendMessage(streamID id: UInt32, byteCount: Int, endStream: Bool = false, queuedAhead: Bool = false) -> SendOutcome {
        guard var flow = streams[id] else { return .refused(RPCError(.cancelled, "the call has ended")) }
        guard byteCount <= peer.maxFrameSize else { return .tooLarge(tooLarge(byteCount)) }
        do {
            try flow.state.send(.message, flags: endStream ? .endStream : [])
        } catch {
            return .refused(RPCError(.internal, error.message))
        }
        let outcome: SendOutcome
        if !queuedAhead && flow.sendWindow > 0 {
            flow.sendWindow -= byteCount
            outcome = .now
        } else {
            outcome = .waitForWindow
        }
        streams[id] = flow
        return outcome
    }

    /// The oldest waiting MESSAGE of stream `id`: true (and window taken)
    /// if it may go now, false while the window is still closed.
    public mutating func releaseQueuedMessage(streamID id: UInt32, byteCount: Int) -> Bool {
        guard let window = streams[id]?.sendWindow, window > 0 else { return false }
        streams[id]?.sendWindow -= byteCount
        return true
    }

    /// Client: half-closes stream `id` with an END_STREAM frame; false if it
    /// is not open or already half-closed.
    public mutating func sendEndStream(streamID id: UInt32) -> Bool {
        guard streams[id] != nil else { return false }
        do {
            try streams[id]?.state.send(.endStream)
            return true
        } catch {
            return false
        }
    }

    /// Server: response HEADERS on stream `id` (at most once, before any MESSAGE).
    public mutating func sendHeaders(streamID id: UInt32) throws(RPCError) {
        guard streams[id] != nil else { throw RPCError(.cancelled, "the call has ended") }
        do {
            try streams[id]?.state.send(.headers)
        } catch {
            throw RPCError(.internal, error.message)
        }
    }

    /// This side ends stream `id` with TRAILERS or CANCEL: it leaves the
    /// table. False if it was not open.
    @discardableResult
    public mutating func closeStream(_ id: UInt32) -> Bool {
        streams.removeValue(forKey: id) != nil
    }

    /// The application consumed `bytes` of stream `id`'s MESSAGE payload.
    /// Returns the WINDOW_UPDATE to send once the bytes owed reach half the
    /// initial window (docs/rpc-protocol.md §8), nil until then.
    public mutating func consumed(_ bytes: Int, streamID id: UInt32) -> Frame? {
        guard var flow = streams[id] else { return nil }
        flow.consumedUngranted += bytes
        // Never a zero increment: the peer would take it as a connection error.
        guard flow.consumedUngranted > 0, flow.consumedUngranted >= local.initialWindowSize / 2 else {
            streams[id] = flow
            return nil
        }
        let grant = flow.consumedUngranted
        flow.consumedUngranted = 0
        flow.receiveWindow += grant
        streams[id] = flow
        return .windowUpdate(streamID: id, increment: grant)
    }

    private func tooLarge(_ byteCount: Int) -> RPCError {
        switch role {
        case .server:
            RPCError(.resourceExhausted, "response message of \(byteCount) bytes exceeds the client's max_frame_size \(peer.maxFrameSize)")
        case .client:
            RPCError(.resourceExhausted, "request message of \(byteCount) bytes exceeds the server's max_frame_size \(peer.maxFrameSize)")
        }
    }
}
