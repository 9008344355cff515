import Foundation
import RoleCore
import Synchronization
import Testing
import ThriftCore
import TollgateKeyManager
import TollgateProto
import TollgateStorage
import TollgateUsers

/// A connection in memory, driven as the stream listener drives one on
/// its event loop: chunks go to the service's session, its answers are
/// collected, and an error thrown closes the connection.
final class MemoryStream {
    private let session: any ByteStreamSession
    private(set) var written: [UInt8] = []
    private(set) var failure: (any Error)?

    init(_ service: any ByteStreamService) throws {
        session = try service.open(ByteStreamConnection(remoteAddress: "test"))
    }

    /// Whether the connection is still open after the bytes.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        guard failure == nil else { return false }
        do {
            written += try session.received(bytes)
            return true
        } catch {
            failure = error
            session.closed()
            return false
        }
    }

    var messageTimeLimit: Duration? { session.messageTimeLimit }

    func close() {
        if failure == nil { session.closed() }
    }

    /// The replies decoded so far.
    var replies: [ThriftMessage] {
        var bytes = written[...]
        var messages: [ThriftMessage] = []
        while let (message, length) = try? ThriftProtocol.binary.decode(bytes) {
            messages.append(message)
            bytes = bytes.dropFirst(length)
        }
        return messages
    }
}

/// The keymanager's Thrift services as role logic, over in-memory
/// connections: the same answers as the RPC, WSO2's errors, and the
/// connection rules (read timeout, connection limit, malformed input).
@Suite struct ThriftServiceTests {
    static func call(_ method: String, _ body: ThriftStruct, sequenceID: Int32) -> [UInt8] {
        ThriftProtocol.binary.encode(ThriftMessage(name: method, type: .call, sequenceID: sequenceID, body: body))
    }

    @Test func answersAsTheRPCDoesOnOnePersistentConnection() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let consumer = try await fixture.consumer("alice", subscribedTo: api)
        let sessions = ThriftSessions(users: fixture.keyManager.users, settings: ThriftSettings())
        guard case .success(let session) = await sessions.authenticate(username: "root", password: ConsumerFixture.password, source: "test") else {
            Issue.record("root (admin) gets no session")
            return
        }
        let service = ThriftKeyValidationService(keyManager: fixture.keyManager, sessions: sessions)
        let stream = try MemoryStream(service)
        let arguments = ValidateKeyArguments(context: api.context, version: api.version, accessToken: consumer.token, sessionId: session,
                                             requiredAuthenticationLevel: "Any", clientDomain: nil, matchingResource: "/menu", httpVerb: "GET")
        var refused = arguments
        refused.accessToken += "x"
        var badSession = arguments
        badSession.sessionId = "nope"
        // Five calls pipelined, sent in 3-byte pieces.
        let calls = [Self.call("validateKey", arguments.thrift, sequenceID: 1), Self.call("validateKey", refused.thrift, sequenceID: 2),
                     Self.call("validateKey", badSession.thrift, sequenceID: 3), Self.call("noSuchMethod", ThriftStruct(), sequenceID: 4),
                     Self.call("validateKey", ThriftStruct([ThriftField(1, .text("/x"))]), sequenceID: 5)]
        let bytes = calls.flatMap { $0 }
        let messageEnds = Set(calls.indices.map { calls[...$0].reduce(0) { $0 + $1.count } })
        for start in stride(from: 0, to: bytes.count, by: 3) {
            let end = min(start + 3, bytes.count)
            #expect(stream.send(Array(bytes[start..<end])))
            // Mid-message, the listener runs the read timeout; between messages it does not.
            #expect((stream.messageTimeLimit == nil) == messageEnds.contains(end))
        }
        stream.close()
        let replies = stream.replies
        #expect(replies.map(\.sequenceID) == [1, 2, 3, 4, 5])
        // One code path: the RPC's answer, written as WSO2's DTO.
        let rpc = try await fixture.validate(consumer.token, api)
        #expect(replies[0].type == .reply && replies[0].body.structure(0).map(APIKeyValidationInfoDTO.init(thrift:)) == APIKeyValidationInfoDTO(rpc))
        #expect(rpc.authorized)
        let invalid = replies[1].body.structure(0).map(APIKeyValidationInfoDTO.init(thrift:))
        #expect(invalid?.authorized == false && invalid?.validationStatus == 900901)
        #expect(replies[2].type == .reply && replies[2].body.structure(1)?.string(1) == "Invalid session id for thrift authenticator.")
        #expect(replies[3].type == .exception && ThriftApplicationException(thrift: replies[3].body) == ThriftApplicationException(.unknownMethod, "Invalid method name: 'noSuchMethod'"))
        #expect(replies[4].type == .exception && ThriftApplicationException(thrift: replies[4].body).kind == .protocolError)
        #expect(ThriftApplicationException(thrift: replies[4].body).message == "Required field 'version' was not present! Struct: validateKey_args")

        // getAllURITemplates lists the API's resources.
        let second = try MemoryStream(service)
        second.send(Self.call("getAllURITemplates", GetAllURITemplatesArguments(context: api.context + "/" + api.version, apiVersion: api.version, sessionId: session).thrift,
                              sequenceID: 1))
        #expect(second.replies.count == 1)
        second.close()
        let templates = second.replies[0].body.structures(0)?.map(URITemplateDTO.init(thrift:)) ?? []
        #expect(templates.contains { $0.uriTemplate == "/menu" && $0.httpVerb == "GET" && $0.authType == "Any" })
    }

    @Test func slowPeersMalformedInputAndTheConnectionLimitCloseConnections() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        var settings = ThriftSettings()
        settings.readTimeoutSeconds = 1
        settings.maxConnections = 1
        let service = ThriftKeyValidationService(keyManager: fixture.keyManager, sessions: ThriftSessions(users: fixture.keyManager.users, settings: settings))

        // Half a message: the listener is told to allow it the read timeout
        // (StreamListenerTests checks that the listener closes it then).
        let slow = try MemoryStream(service)
        slow.send(Array(Self.call("validateKey", ThriftStruct(), sequenceID: 1).prefix(10)))
        #expect(slow.messageTimeLimit == .seconds(1))
        #expect(slow.replies.isEmpty)
        // While it is open, a second connection is over the limit; once it closed, one more is served.
        #expect(throws: (any Error).self) { try MemoryStream(service) }
        slow.close()
        let next = try MemoryStream(service)
        next.close()

        // Bytes that are no Thrift message: closed, nothing answered.
        let garbage = try MemoryStream(service)
        #expect(garbage.send([0x80, 0x07, 0x00, 0x01, 0, 0, 0, 0]) == false)
        #expect(garbage.written.isEmpty)
    }

    /// A message re-read from its start at every read must not arrive in
    /// ever so many tiny pieces: a handful is fine, one byte at a time is not.
    @Test func aMessageTrickledInTinyPiecesClosesTheConnection() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let service = ThriftKeyValidationService(keyManager: fixture.keyManager,
                                                 sessions: ThriftSessions(users: fixture.keyManager.users, settings: ThriftSettings()))
        let arguments = ValidateKeyArguments(context: "/" + String(repeating: "a", count: 2000), version: "1", accessToken: "t", sessionId: "s", requiredAuthenticationLevel: "Any",
                                             clientDomain: nil, matchingResource: "/", httpVerb: "GET")
        let message = Self.call("validateKey", arguments.thrift, sequenceID: 1)
        #expect(message.count > ThriftKeyValidationService.maxPieces(of: message.count))

        let pieces = try MemoryStream(service)
        let size = (message.count + 15) / 16
        for start in stride(from: 0, to: message.count, by: size) { #expect(pieces.send(Array(message[start..<min(start + size, message.count)]))) }
        #expect(pieces.replies.first?.body.structure(1)?.string(1) == KeyValidationService.invalidSessionMessage)
        pieces.close()

        let trickle = try MemoryStream(service)
        var open = true
        for byte in message where open { open = trickle.send([byte]) }
        #expect(open == false && trickle.failure != nil)
        trickle.close()
        #expect(trickle.replies.isEmpty)
    }

    /// Sessions found live are remembered, but never past a change in
    /// userdb (a logout here or by another keymanager of the host) or in
    /// the permitted roles.
    @Test func rememberedSessionsEndWithALogoutOrAChangeOfRoles() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let sessions = ThriftSessions(users: fixture.keyManager.users, settings: ThriftSettings())
        func session() async throws -> String {
            guard case .success(let session) = await sessions.authenticate(username: "root", password: ConsumerFixture.password, source: "test") else {
                throw CancellationError()
            }
            return session
        }
        let first = try await session()
        #expect(sessions.check(first))
        #expect(sessions.check(first))
        try await fixture.keyManager.users.logout(sessionID: SecretHasher.tokenHash(first))
        #expect(sessions.check(first) == false)

        let second = try await session()
        #expect(sessions.check(second))
        var settings = sessions.settings
        settings.authenticatorRoles = ["gateway"]
        sessions.update(settings)
        #expect(sessions.check(second) == false)
        settings.authenticatorRoles = ["admin"]
        sessions.update(settings)
        #expect(sessions.check(second))
        #expect(sessions.check("not-a-session") == false)
    }

    @Test func theAuthenticatorGivesSessionsOnlyToPermittedRoles() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        _ = try await fixture.user("bob", roles: ["subscriber"])
        let endpoints = OAuthEndpoints(keyManager: fixture.keyManager,
                                       thriftSessions: ThriftSessions(users: fixture.keyManager.users, settings: ThriftSettings()))
        func authenticate(_ user: String, _ password: String, secure: Bool = true) async -> (status: Int, reply: ThriftMessage?) {
            let body = ThriftProtocol.compact.encode(ThriftMessage(name: "authenticate", type: .call, sequenceID: 1,
                                                                   body: AuthenticateArguments(userName: user, password: password).thrift))
            let response = await endpoints.respond(to: HTTPRequest(method: "POST", uri: "/thriftAuthenticator",
                                                                   headers: [("Content-Type", "application/x-thrift")], body: body, remoteAddress: "10.0.0.1:5000",
                                                                   isSecure: secure))
            return (response.status, try? ThriftProtocol.compact.decode(response.body).message)
        }
        let admin = await authenticate("root", ConsumerFixture.password)
        #expect(admin.status == 200 && admin.reply?.type == .reply && (admin.reply?.body.string(0)?.count ?? 0) > 20)
        let subscriber = await authenticate("bob", ConsumerFixture.password)
        #expect(subscriber.reply?.body.structure(1)?.string(1) == "Invalid User : bob")
        let wrong = await authenticate("root", "wrong-password-1")
        #expect(wrong.reply?.body.structure(1)?.string(1) == "Invalid User : root")
        #expect(await authenticate("root", ConsumerFixture.password, secure: false).status == 403)
    }
}
