import RPCCore
import Testing
import TollgateProto

/// A machine that has exchanged SETTINGS with a peer advertising `peer`.
func settledMachine(_ role: ConnectionStateMachine.Role, local: ConnectionSettings = ConnectionSettings(),
                    peer: ConnectionSettings = ConnectionSettings()) -> ConnectionStateMachine {
    var machine = ConnectionStateMachine(role: role, local: local)
    _ = machine.receive(peer.frame)
    _ = machine.receive(.settingsAck)
    return machine
}

func headersFrame(_ id: UInt32, method: String = "/tollgate.test.Echo/Unary", metadata: Metadata = Metadata(), endStream: Bool = false) throws -> Frame {
    var headers = RpcRequestHeaders()
    headers.method = method
    headers.metadata = metadata.protoEntries
    return Frame(type: .headers, flags: endStream ? .endStream : [], streamID: id, payload: try headers.serializedBytes())
}

func windowUpdateFrame(_ id: UInt32, _ increment: UInt32) -> Frame {
    Frame(type: .windowUpdate, streamID: id, payload: withUnsafeBytes(of: increment.bigEndian) { Array($0) })
}

/// The connection error an action closes with, if it is one, and its GOAWAY decoded.
func closing(_ action: ConnectionStateMachine.Action) -> (error: ConnectionError, goAway: RpcGoAway)? {
    guard case .closeConnection(let error, let goAway) = action, goAway.header.type == .goAway,
          let decoded = try? RpcGoAway(serializedBytes: goAway.payload) else { return nil }
    return (error, decoded)
}

/// The reset a stream error answers with.
func reset(_ id: UInt32, _ code: RPCCode, _ message: String) -> ConnectionStateMachine.Action {
    .resetStream(id: id, error: RPCError(code, message), cancel: .cancel(streamID: id, code: code, message: message))
}

@Suite struct ConnectionStateMachineTests {
    // MARK: SETTINGS

    @Test(arguments: [ConnectionStateMachine.Role.client, .server])
    func theFirstFrameMustBeSettings(role: ConnectionStateMachine.Role) throws {
        for first in [Frame(type: .ping, streamID: 0, payload: [UInt8](repeating: 0, count: 8)), .settingsAck, try headersFrame(1)] {
            var machine = ConnectionStateMachine(role: role, local: ConnectionSettings())
            let action = machine.receive(first)
            let (error, goAway) = try #require(closing(action))
            #expect(error.reason == .protocolError && error.message.hasPrefix("the first frame must be SETTINGS"))
            #expect(goAway.reason == .protocolError && goAway.lastStreamId == 0)
            #expect(machine.isClosing)
            // Nothing more is read once the connection is closing.
            let later = machine.receive(ConnectionSettings().frame)
            #expect(later == .none)
        }
    }

    @Test(arguments: [ConnectionStateMachine.Role.client, .server])
    func settingsAreAppliedAcknowledgedAndAcceptedOnce(role: ConnectionStateMachine.Role) throws {
        var machine = ConnectionStateMachine(role: role, local: ConnectionSettings())
        let advertised = ConnectionSettings(maxFrameSize: 16384, maxConcurrentStreams: 7, initialWindowSize: 1000, maxMetadataSize: 512)
        let applied = machine.receive(advertised.frame)
        #expect(applied == .settingsApplied(ack: .settingsAck))
        #expect(machine.peer == advertised && machine.receivedSettings)
        let ack = machine.receive(.settingsAck)
        #expect(ack == .none)

        var twice = machine
        let second = twice.receive(advertised.frame)
        #expect(closing(second)?.error == ConnectionError(.protocolError, "a second SETTINGS"))
        var ackTwice = machine
        let secondAck = ackTwice.receive(.settingsAck)
        #expect(closing(secondAck)?.error == ConnectionError(.protocolError, "a second SETTINGS ACK"))
    }

    @Test func zerosMeanTheDefaults() throws {
        var machine = ConnectionStateMachine(role: .client, local: ConnectionSettings())
        _ = machine.receive(Frame(type: .settings, streamID: 0, payload: RpcSettings().serializedBytes()))
        #expect(machine.peer == ConnectionSettings())
    }

    @Test func settingsOutOfRangeAreConnectionErrors() throws {
        let cases: [([UInt8], String)] = [
            (RpcSettings(maxFrameSize: 16383).serializedBytes(), "SETTINGS max_frame_size 16383 is out of range"),
            (RpcSettings(maxFrameSize: 16_777_217).serializedBytes(), "SETTINGS max_frame_size 16777217 is out of range"),
            (RpcSettings(initialWindowSize: 1 << 31).serializedBytes(), "SETTINGS initial_window_size 2147483648 is out of range"),
            ([0xFF, 0xFF], "SETTINGS payload does not decode"),
        ]
        for (payload, message) in cases {
            var machine = ConnectionStateMachine(role: .server, local: ConnectionSettings())
            let action = machine.receive(Frame(type: .settings, streamID: 0, payload: payload))
            #expect(closing(action)?.error == ConnectionError(.protocolError, message))
        }
    }

    // MARK: PING and GOAWAY

    @Test(arguments: [ConnectionStateMachine.Role.client, .server])
    func pingsAreAnsweredAndKeepaliveAcksMatched(role: ConnectionStateMachine.Role) throws {
        var machine = settledMachine(role)
        let payload: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        let answer = machine.receive(Frame(type: .ping, streamID: 0, payload: payload))
        #expect(answer == .send(.pingAck(payload: payload)))

        let first = machine.keepalivePing()
        let ping = try #require(first)
        #expect(ping.header.type == .ping && !ping.header.flags.contains(.ack) && ping.payload.count == 8)
        let another = machine.keepalivePing()
        #expect(another == nil, "one PING at a time")
        let stray = machine.receive(.pingAck(payload: payload))
        #expect(stray == .none, "an ACK matching no PING is ignored")
        let matching = machine.receive(.pingAck(payload: ping.payload))
        #expect(matching == .pingAcknowledged)
        let second = machine.keepalivePing()
        let next = try #require(second)
        #expect(next.payload != ping.payload)
    }

    @Test func aClientsGoAwayEndsEveryStreamOnTheServer() throws {
        var server = settledMachine(.server)
        _ = server.receive(try headersFrame(1))
        _ = server.receive(try headersFrame(3))
        let action = server.receive(.goAway(lastStreamID: 3, reason: .shutdown, message: "bye"))
        #expect(action == .goAwayReceived(lastStreamID: 0))
        #expect(server.openStreamCount == 0 && server.isClosing)
        let late = server.receive(try headersFrame(5))
        #expect(late == .none)
    }

    @Test func aServersGoAwayDropsTheStreamsItDidNotProcess() throws {
        var client = settledMachine(.client)
        for expected: UInt32 in 1...3 {
            let opened = client.openStream()
            #expect(opened == .opened(expected))
        }
        let action = client.receive(.goAway(lastStreamID: 2, reason: .shutdown, message: ""))
        #expect(action == .goAwayReceived(lastStreamID: 2))
        #expect(client.isOpen(1) && client.isOpen(2) && !client.isOpen(3))
        let refused = client.openStream()
        #expect(!client.acceptsNewStreams && refused == .closing)
        #expect(!client.isDrained)
        // Streams at or below the limit still end normally.
        _ = client.receive(.trailers(streamID: 1, error: nil, metadata: Metadata()))
        let cancel = Frame.cancel(streamID: 2, code: .cancelled, message: "")
        let cancelled = client.receive(cancel)
        #expect(cancelled == .streamEvent(id: 2, event: .cancelled, payload: cancel.payload))
        #expect(client.isDrained)
    }

    @Test func connectionErrorsSendOneGoAwayNamingTheLastStream() throws {
        var server = settledMachine(.server)
        _ = server.receive(try headersFrame(5))
        let sent = server.connectionError(ConnectionError(.idle, "no call for 300 s"))
        let goAway = try #require(sent)
        let decoded = try RpcGoAway(serializedBytes: goAway.payload)
        #expect(decoded.lastStreamId == 5 && decoded.reason == .idle && decoded.message == "no call for 300 s")
        let again = server.connectionError(ConnectionError(.protocolError, "again"))
        #expect(again == nil)

        var client = settledMachine(.client)
        _ = client.openStream()
        let clientSent = client.connectionError(ConnectionError(.frameTooLarge, "big"))
        let fromClient = try #require(clientSent)
        #expect(try RpcGoAway(serializedBytes: fromClient.payload).lastStreamId == 0, "a client puts 0")
    }

    @Test func quiescingIgnoresNewStreamsAndDrains() throws {
        var server = settledMachine(.server)
        _ = server.receive(try headersFrame(1))
        let started = server.startQuiescing()
        let goAway = try #require(started)
        let decoded = try RpcGoAway(serializedBytes: goAway.payload)
        #expect(decoded.lastStreamId == 1 && decoded.reason == .shutdown)
        let twice = server.startQuiescing()
        #expect(twice == nil)
        let above = server.receive(try headersFrame(3))
        #expect(above == .none, "above last_stream_id: not processed")
        #expect(server.lastStreamID == 1 && !server.isDrained)
        server.closeStream(1)
        #expect(server.isDrained)
        // The id rule still holds while quiescing.
        let reused = server.receive(try headersFrame(1))
        #expect(closing(reused) != nil)
    }

    // MARK: Frames a side never receives, stream ids and limits

    @Test func framesFromTheWrongSideAreConnectionErrors() throws {
        var server = settledMachine(.server)
        _ = server.receive(try headersFrame(1))
        let trailers = server.receive(.trailers(streamID: 1, error: nil, metadata: Metadata()))
        #expect(closing(trailers)?.error == ConnectionError(.protocolError, "TRAILERS from a client"))
        var client = settledMachine(.client)
        _ = client.openStream()
        let endStream = client.receive(Frame(type: .endStream, streamID: 1))
        #expect(closing(endStream)?.error == ConnectionError(.protocolError, "END_STREAM from a server"))
    }

    @Test func clientStreamIdsMustIncrease() throws {
        var server = settledMachine(.server)
        let opened = server.receive(try headersFrame(3))
        guard case .streamOpened(3, let headers, _, false) = opened else {
            Issue.record("stream 3 not opened: \(opened)")
            return
        }
        #expect(headers.method == "/tollgate.test.Echo/Unary")
        #expect(server.lastStreamID == 3)
        let again = server.receive(try headersFrame(3))
        let (error, goAway) = try #require(closing(again))
        #expect(error == ConnectionError(.protocolError, "stream id 3 is not greater than 3"))
        #expect(goAway.lastStreamId == 3)
    }

    @Test func newStreamsBeyondTheLimitOrWithBadMetadataAreRefused() throws {
        var server = settledMachine(.server, local: ConnectionSettings(maxConcurrentStreams: 1, maxMetadataSize: 20))
        _ = server.receive(try headersFrame(1))
        let second = server.receive(try headersFrame(3))
        #expect(second == reset(3, .resourceExhausted, "more than 1 concurrent calls"))
        #expect(server.lastStreamID == 3, "a refused id is used up")
        server.closeStream(1)

        let large: Metadata = ["x-padding": String(repeating: "a", count: 20)]
        let tooLarge = server.receive(try headersFrame(5, metadata: large))
        #expect(tooLarge == reset(5, .resourceExhausted, "metadata exceeds 20 bytes"))
        let malformed = server.receive(try headersFrame(7, metadata: ["x-bad": "line\nbreak"]))
        guard case .resetStream(7, let error, _) = malformed else {
            Issue.record("malformed metadata accepted: \(malformed)")
            return
        }
        #expect(error.code == .internal)
        #expect(server.openStreamCount == 0)

        let garbage = server.receive(Frame(type: .headers, streamID: 9, payload: [0xFF]))
        #expect(closing(garbage)?.error == ConnectionError(.protocolError, "HEADERS payload does not decode"))
    }

    @Test func clientsOpenStreamsInOrderWithinTheServersLimit() throws {
        var client = settledMachine(.client, peer: ConnectionSettings(maxFrameSize: 16384, maxConcurrentStreams: 2))
        let first = client.openStream()
        let unary = client.openStream(requestByteCount: 10)
        #expect(first == .opened(1) && unary == .opened(2))
        let third = client.openStream()
        #expect(!client.hasStreamCapacity && third == .wait)
        let large = client.openStream(requestByteCount: 16385)
        #expect(large == .refused(RPCError(.resourceExhausted, "request message of 16385 bytes exceeds the server's max_frame_size 16384")))
        client.closeStream(1)
        let afterClose = client.openStream()
        #expect(afterClose == .opened(3))
        // The unary request went with its HEADERS and END_STREAM: the stream is half-closed.
        let more = client.sendMessage(streamID: 2, byteCount: 1)
        #expect(more == .refused(RPCError(.internal, "request message after END_STREAM")))
        #expect(client.sendWindow(of: 2) == ConnectionSettings.defaultInitialWindowSize - 10)
    }

    @Test func framesForUnknownStreamsAreIgnoredAndOutOfOrderOnesReset() throws {
        var client = settledMachine(.client)
        let unknown = client.receive(Frame(type: .message, streamID: 9, payload: [1]))
        #expect(unknown == .none)
        _ = client.openStream()
        _ = client.receive(Frame(type: .message, streamID: 1, payload: [1]))
        let lateHeaders = client.receive(Frame(type: .headers, streamID: 1))
        #expect(lateHeaders == reset(1, .internal, "response headers after the response started"))
        #expect(!client.isOpen(1))
        let afterReset = client.receive(Frame(type: .message, streamID: 1, payload: [1]))
        #expect(afterReset == .none, "late frames after the reset are dropped")
    }

    // MARK: Flow control

    @Test func messagesWaitForWindowAndGoInOrder() throws {
        var server = settledMachine(.server, peer: ConnectionSettings(initialWindowSize: 100))
        _ = server.receive(try headersFrame(1, endStream: true))
        let large = server.sendMessage(streamID: 1, byteCount: 150)
        #expect(large == .now, "an open window takes a message larger than itself")
        #expect(server.sendWindow(of: 1) == -50)
        let next = server.sendMessage(streamID: 1, byteCount: 10)
        #expect(next == .waitForWindow)
        var released = server.releaseQueuedMessage(streamID: 1, byteCount: 10)
        #expect(!released)
        let update = server.receive(windowUpdateFrame(1, 50))
        #expect(update == .streamEvent(id: 1, event: .windowUpdate, payload: [0, 0, 0, 50]))
        released = server.releaseQueuedMessage(streamID: 1, byteCount: 10)
        #expect(!released, "a window of 0 is still closed")
        _ = server.receive(windowUpdateFrame(1, 20))
        released = server.releaseQueuedMessage(streamID: 1, byteCount: 10)
        #expect(released && server.sendWindow(of: 1) == 10)
        // A message already waiting keeps later ones behind it.
        let behind = server.sendMessage(streamID: 1, byteCount: 1, queuedAhead: true)
        #expect(behind == .waitForWindow)
        let tooLarge = server.sendMessage(streamID: 1, byteCount: 4 << 20 + 1)
        #expect(tooLarge == .tooLarge(RPCError(.resourceExhausted, "response message of 4194305 bytes exceeds the client's max_frame_size 4194304")))
        let closed = server.sendMessage(streamID: 9, byteCount: 1)
        #expect(closed == .refused(RPCError(.cancelled, "the call has ended")))
    }

    @Test func badWindowUpdatesAreConnectionErrors() throws {
        var zero = settledMachine(.server)
        _ = zero.receive(try headersFrame(1))
        let zeroIncrement = zero.receive(windowUpdateFrame(1, 0))
        #expect(closing(zeroIncrement)?.error == ConnectionError(.protocolError, "WINDOW_UPDATE with increment 0"))

        var overflow = settledMachine(.client)
        _ = overflow.openStream()
        _ = overflow.receive(windowUpdateFrame(1, UInt32(Int32.max) - UInt32(ConnectionSettings.defaultInitialWindowSize)))
        #expect(overflow.sendWindow(of: 1) == Int(Int32.max))
        let tooMuch = overflow.receive(windowUpdateFrame(1, 1))
        #expect(closing(tooMuch)?.error == ConnectionError(.protocolError, "WINDOW_UPDATE raises the window above 2147483647"))
        #expect(closing(tooMuch)?.goAway.reason == .protocolError)
    }

    @Test(arguments: [ConnectionStateMachine.Role.client, .server])
    func theReceiveWindowIsEnforcedAndGrantedBackInHalves(role: ConnectionStateMachine.Role) throws {
        var machine = settledMachine(role, local: ConnectionSettings(initialWindowSize: 100))
        if role == .server { _ = machine.receive(try headersFrame(1)) } else { _ = machine.openStream() }
        let first = machine.receive(Frame(type: .message, streamID: 1, payload: [UInt8](repeating: 0, count: 60)))
        guard case .streamEvent(1, _, _) = first else {
            Issue.record("message refused: \(first)")
            return
        }
        let early = machine.consumed(30, streamID: 1)
        #expect(early == nil)
        let grant = machine.consumed(30, streamID: 1)
        #expect(grant == .windowUpdate(streamID: 1, increment: 60))
        #expect(machine.receiveWindow(of: 1) == 100)
        _ = machine.receive(Frame(type: .message, streamID: 1, payload: [UInt8](repeating: 0, count: 100)))
        #expect(machine.receiveWindow(of: 1) == 0)
        let nothing = machine.consumed(0, streamID: 1)
        #expect(nothing == nil, "never a zero increment")
        let over = machine.receive(Frame(type: .message, streamID: 1, payload: [1]))
        #expect(over == reset(1, .resourceExhausted, "flow-control window exceeded"))
    }

    @Test func streamsOpenedBeforeTheServersSettingsTakeTheWindowChange() throws {
        var client = ConnectionStateMachine(role: .client, local: ConnectionSettings())
        let opened = client.openStream(requestByteCount: 1000)
        #expect(opened == .opened(1))
        #expect(client.sendWindow(of: 1) == ConnectionSettings.defaultInitialWindowSize - 1000)
        _ = client.receive(ConnectionSettings(initialWindowSize: 500).frame)
        #expect(client.sendWindow(of: 1) == -500)
    }

    // MARK: Both sides together

    /// A unary call between a client and a server machine, frames carried
    /// by hand: what one side may send, the other accepts.
    @Test func aUnaryCallBetweenTwoMachines() throws {
        var client = ConnectionStateMachine(role: .client, local: ConnectionSettings())
        var server = ConnectionStateMachine(role: .server, local: ConnectionSettings(maxConcurrentStreams: 10))
        let serverApplied = server.receive(client.local.frame)
        let clientApplied = client.receive(server.local.frame)
        #expect(serverApplied == .settingsApplied(ack: .settingsAck) && clientApplied == .settingsApplied(ack: .settingsAck))
        _ = server.receive(.settingsAck)
        _ = client.receive(.settingsAck)
        #expect(client.peer.maxConcurrentStreams == 10)

        let request: [UInt8] = [0x0A, 0x01, 0x07]
        let opened = client.openStream(requestByteCount: request.count)
        #expect(opened == .opened(1))
        let accepted = server.receive(try headersFrame(1))
        guard case .streamOpened(1, _, _, false) = accepted else {
            Issue.record("not opened: \(accepted)")
            return
        }
        let delivered = server.receive(Frame(type: .message, flags: .endStream, streamID: 1, payload: request))
        #expect(delivered == .streamEvent(id: 1, event: .requestMessage(isLast: true), payload: request))

        try server.sendHeaders(streamID: 1)
        let headers = client.receive(Frame(type: .headers, streamID: 1))
        #expect(headers == .streamEvent(id: 1, event: .responseHeaders, payload: []))
        let send = server.sendMessage(streamID: 1, byteCount: request.count)
        #expect(send == .now)
        let response = client.receive(Frame(type: .message, streamID: 1, payload: request))
        #expect(response == .streamEvent(id: 1, event: .responseMessage, payload: request))
        let closed = server.closeStream(1)
        #expect(closed)
        let trailers = Frame.trailers(streamID: 1, error: nil, metadata: Metadata())
        let ended = client.receive(trailers)
        #expect(ended == .streamEvent(id: 1, event: .trailers, payload: trailers.payload))
        #expect(client.openStreamCount == 0 && server.openStreamCount == 0)
    }
}
