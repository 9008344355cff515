import RPCCore
import Testing

@Suite struct StreamStateTests {
    @Test func unaryCallFromBothSides() throws {
        var client = StreamState(role: .client)
        var server = StreamState(role: .server)
        try client.send(.headers)
        try client.send(.message, flags: .endStream)
        #expect(try server.receive(.message, flags: .endStream) == .requestMessage(isLast: true))
        #expect(server.requests == .closed)
        try server.send(.headers)
        try server.send(.message)
        try server.send(.trailers)
        #expect(server.isClosed)
        #expect(try client.receive(.headers, flags: []) == .responseHeaders)
        #expect(try client.receive(.message, flags: []) == .responseMessage)
        #expect(try client.receive(.trailers, flags: []) == .trailers)
        #expect(client.isClosed)
    }

    @Test func streamsEndWithAnExplicitEndStreamFrame() throws {
        var server = StreamState(role: .server)
        for _ in 0..<3 { #expect(try server.receive(.message, flags: []) == .requestMessage(isLast: false)) }
        #expect(try server.receive(.endStream, flags: []) == .requestsEnded)
        #expect(throws: StreamState.Violation.self) { try server.receive(.message, flags: []) }
        #expect(throws: StreamState.Violation.self) { try server.receive(.endStream, flags: []) }
    }

    @Test func cancelEndsEitherSideAndLateFramesAreIgnored() throws {
        var server = StreamState(role: .server)
        #expect(try server.receive(.cancel, flags: []) == .cancelled)
        #expect(server.isClosed)
        #expect(try server.receive(.message, flags: []) == .ignored)
        #expect(throws: StreamState.Violation.self) { try server.send(.message) }

        var client = StreamState(role: .client)
        try client.send(.headers)
        try client.send(.cancel)
        #expect(try client.receive(.trailers, flags: []) == .ignored)
    }

    @Test func framesFromTheWrongSideAreViolations() {
        var server = StreamState(role: .server)
        #expect(throws: StreamState.Violation.self) { try server.receive(.trailers, flags: []) }
        #expect(throws: StreamState.Violation.self) { try server.receive(.headers, flags: []) }
        var client = StreamState(role: .client)
        #expect(throws: StreamState.Violation.self) { try client.receive(.endStream, flags: []) }
        var late = StreamState(role: .client)
        _ = try? late.receive(.message, flags: [])
        #expect(throws: StreamState.Violation.self) { try late.receive(.headers, flags: []) }
        var sender = StreamState(role: .server)
        try? sender.send(.message)
        #expect(throws: StreamState.Violation.self) { try sender.send(.headers) }
    }
}
