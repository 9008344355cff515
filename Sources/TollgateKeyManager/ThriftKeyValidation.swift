import LMDBKit
public import RoleCore
import RPCCore
import Synchronization
import ThriftCore
import TollgateProto
import TollgateStorage

/// WSO2's `APIKeyValidationService` on the keymanager's `thrift` listener:
/// unframed, strict TBinaryProtocol over TLS, one persistent connection per
/// pooled gateway client, calls answered in order until the peer closes.
/// `validateKey` answers from ``KeyManager/validate(_:)``, the code path of
/// the `ValidateKey` RPC.
public struct ThriftKeyValidationService: ByteStreamService {
    let keyManager: KeyManager
    let sessions: ThriftSessions
    let connections: ConnectionCount
    let limits = ThriftLimits()

    /// Connections being served, against `thrift_max_connections`.
    final class ConnectionCount: Sendable {
        let open = Atomic<Int>(0)
    }

    public init(keyManager: KeyManager, sessions: ThriftSessions) {
        self.keyManager = keyManager
        self.sessions = sessions
        self.connections = ConnectionCount()
    }

    /// Why a connection was closed early.
    struct ConnectionClosed: Error, CustomStringConvertible {
        let description: String
    }

    public func serve(_ connection: any ByteStream) async throws {
        let admitted = connections.open.wrappingAdd(1, ordering: .relaxed).newValue <= sessions.settings.maxConnections
        defer { connections.open.wrappingSubtract(1, ordering: .relaxed) }
        guard admitted else { throw ConnectionClosed(description: "over thrift_max_connections") }

        // A message begun must be complete within the read timeout: a peer
        // that stalls or trickles mid-message loses its connection. (A
        // silent peer between messages is the listener's idle timeout.)
        let pending = MessageClock()
        let readTimeout = Duration.seconds(sessions.settings.readTimeoutSeconds)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await serveCalls(connection, messageStarted: pending) }
            group.addTask {
                while true {
                    let started = pending.started.withLock { $0 }
                    if let started, started + readTimeout <= .now {
                        throw ConnectionClosed(description: "a message took longer than \(readTimeout) to arrive")
                    }
                    try await Task.sleep(until: (started ?? .now) + readTimeout, clock: .continuous)
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    /// When the message being received began to arrive; nil between messages.
    final class MessageClock: Sendable {
        let started = Mutex<ContinuousClock.Instant?>(nil)
    }

    private func serveCalls(_ connection: any ByteStream, messageStarted: MessageClock) async throws {
        var buffer: [UInt8] = []
        var start = 0
        var replies: [UInt8] = []
        // Reads since the message being received began: each re-reads it from its start.
        var pieces = 0
        while true {
            guard let chunk = try await connection.read() else { return }
            if buffer.isEmpty || start == buffer.count {
                buffer = chunk
                start = 0
            } else {
                buffer.removeSubrange(0..<start)
                start = 0
                buffer.append(contentsOf: chunk)
            }
            replies.removeAll(keepingCapacity: true)
            while start < buffer.count {
                let call: KeyValidationCall, length: Int
                do {
                    // The known calls decode straight into their arguments (unknown fields skipped).
                    (call, length) = try KeyValidationCall.decodeBinary(buffer[start...], limits: limits)
                } catch .truncated {
                    let received = buffer.count - start
                    guard received <= limits.maxMessageSize else {
                        throw ConnectionClosed(description: "a message over \(limits.maxMessageSize) bytes")
                    }
                    // A peer trickling a message in tiny pieces would make those re-reads quadratic.
                    pieces += 1
                    guard pieces <= Self.maxPieces(of: received) else {
                        throw ConnectionClosed(description: "a message of \(received) bytes still incomplete after \(pieces - 1) pieces")
                    }
                    break
                } catch {
                    // libthrift's server closes a connection it cannot parse.
                    throw ConnectionClosed(description: "\(error)")
                }
                start += length
                pieces = 0
                if let reply = await answer(call) { replies += reply }
            }
            messageStarted.started.withLock { $0 = start < buffer.count ? ($0 ?? .now) : nil }
            if !replies.isEmpty { try await connection.write(replies) }
        }
    }

    /// Most reads one message may take: 256, and one more per 512 bytes
    /// (stock clients write through a buffer of at least 1 KiB, so they
    /// never come near it), bounding the work of re-reading a message whose
    /// end has not arrived.
    public static func maxPieces(of received: Int) -> Int { 256 + received / 512 }

    /// The reply to one call, encoded (nil for ONEWAY).
    func answer(_ call: KeyValidationCall) async -> [UInt8]? {
        let header = call.header
        func exception(_ type: ThriftApplicationException.Kind, _ message: String) -> [UInt8] {
            ThriftProtocol.binary.encode(ThriftApplicationException(type, message).message(name: header.name, sequenceID: header.sequenceID))
        }
        guard header.type == .call || header.type == .oneway else {
            return exception(.invalidMessageType, "Unexpected message type \(header.type.rawValue)")
        }
        let reply: [UInt8]
        switch call.arguments {
        case .validateKey(let arguments):
            reply = await validate(arguments, sessionID: arguments.sessionId).binaryReply(method: header.name, sequenceID: header.sequenceID)
        case .validateKeyforHandshake(let handshake):
            // WebSocket handshakes: any token type, no resource (WSO2's handshake check).
            let arguments = ValidateKeyArguments(context: handshake.context, version: handshake.version, accessToken: handshake.accessToken,
                                                 sessionId: handshake.sessionId, requiredAuthenticationLevel: "Any", clientDomain: nil,
                                                 matchingResource: "", httpVerb: "")
            reply = await validate(arguments, sessionID: handshake.sessionId).binaryReply(method: header.name, sequenceID: header.sequenceID)
        case .getAllURITemplates(let arguments):
            let result = await uriTemplates(arguments).thrift { .list(.structure, $0.map { .structure($0.thrift) }) }
            reply = ThriftProtocol.binary.encode(ThriftMessage(name: header.name, type: .reply, sequenceID: header.sequenceID, body: result))
        case .unknownMethod:
            return exception(.unknownMethod, "Invalid method name: '\(header.name)'")
        case .missing(let error):
            return exception(.protocolError, error.description)
        }
        return header.type == .call ? reply : nil
    }

    func validate(_ arguments: ValidateKeyArguments, sessionID: String) async -> ThriftResult<APIKeyValidationInfoDTO> {
        guard await sessions.check(sessionID) else { return .keyManagementException(KeyValidationService.invalidSessionMessage) }
        do {
            return .success(APIKeyValidationInfoDTO(try keyManager.validate(KeyManager.validateKeyRequest(arguments))))
        } catch {
            // WSO2's APIKeyMgtException: the gateway logs in again, retries once, then answers 500.
            return .keyManagementException("Error while validating the access token: \(error.message)")
        }
    }

    func uriTemplates(_ arguments: GetAllURITemplatesArguments) async -> ThriftResult<[URITemplateDTO]> {
        guard await sessions.check(arguments.sessionId) else { return .keyManagementException(KeyValidationService.invalidSessionMessage) }
        do {
            return .success(try keyManager.uriTemplates(context: arguments.context, version: arguments.apiVersion))
        } catch {
            return .keyManagementException("Error while reading the URI templates: \(error.message)")
        }
    }
}

extension KeyManager {
    /// The RPC's request for a WSO2 `validateKey` call: the bearer token
    /// becomes its id and SHA-256, as a gateway on the RPC path sends them.
    static func validateKeyRequest(_ arguments: ValidateKeyArguments) -> ValidateKeyRequest {
        var request = ValidateKeyRequest()
        request.context = arguments.context
        request.version = arguments.version
        request.tokenHash = SecretHasher.tokenHash(arguments.accessToken)
        request.tokenId = tokenID(of: arguments.accessToken) ?? []
        request.requiredAuthLevel = KeyValidationVocabulary.authType(arguments.requiredAuthenticationLevel)
        request.clientDomain = arguments.clientDomain
        request.matchingResource = arguments.matchingResource
        request.verb = KeyValidationVocabulary.verb(arguments.httpVerb)
        return request
    }

    /// WSO2's `getAllURITemplates`: one entry per resource (template and
    /// verb) of the API at `context` and `version`; empty when there is none.
    func uriTemplates(context fullContext: String, version rawVersion: String) throws(RPCError) -> [URITemplateDTO] {
        let (tenant, context) = Self.splitTenant(fullContext)
        let version = rawVersion.hasPrefix("_default_") ? String(rawVersion.dropFirst("_default_".count)) : rawVersion
        let api: Api? = try RPCError.catching {
            try database.database.read { txn in
                if let api = try database.apis.get(ApiManagerDatabase.apisByContextVersion, Key(.string(tenant), .string(context), .string(version)), in: txn) {
                    return api
                }
                // WSO2 gateways send the versioned context (`/pizzashack/1.0.0`).
                guard context.hasSuffix("/" + version) else { return nil }
                return try database.apis.get(ApiManagerDatabase.apisByContextVersion,
                                             Key(.string(tenant), .string(String(context.dropLast(version.count + 1))), .string(version)), in: txn)
            }
        }
        guard let api else { return [] }
        return api.resources.map { resource in
            var template = URITemplateDTO()
            template.uriTemplate = resource.uriTemplate
            template.httpVerb = KeyValidationVocabulary.verbName(resource.verb)
            template.authType = KeyValidationVocabulary.level(resource.authType)
            if api.apiPolicy.isEmpty {
                template.throttlingTier = resource.throttlingPolicy.isEmpty ? "Unlimited" : resource.throttlingPolicy
                template.applicableLevel = "resourceLevel"
            } else {
                template.throttlingTier = api.apiPolicy
                template.applicableLevel = "apiLevel"
            }
            template.throttlingConditions = []
            return template
        }
    }
}

/// WSO2's `AuthenticatorService` over HTTPS `POST /thriftAuthenticator`:
/// a TCompactProtocol `authenticate` call in the body, its reply in the
/// response, both `application/x-thrift`.
struct ThriftAuthenticatorEndpoint {
    let sessions: ThriftSessions
    let limits = ThriftLimits(maxStringLength: 4096, maxContainerCount: 16, maxDepth: 4, maxMessageSize: 16 * 1024)

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        // WSO2's servlet ignores requests that did not come over TLS.
        guard request.isSecure else { return .text(403, "the Thrift authenticator answers over HTTPS only") }
        let call: ThriftMessage
        do {
            let (message, length) = try ThriftProtocol.compact.decode(request.body, limits: limits)
            guard length == request.body.count else { return .text(400, "the body holds more than one Thrift message") }
            call = message
        } catch {
            return .text(400, "the body is not a TCompactProtocol message: \(error)")
        }
        let reply: ThriftMessage
        if call.name != KeyValidationService.authenticate {
            reply = ThriftApplicationException(.unknownMethod, "Invalid method name: '\(call.name)'").message(name: call.name, sequenceID: call.sequenceID)
        } else if call.type != .call {
            reply = ThriftApplicationException(.invalidMessageType, "Unexpected message type \(call.type.rawValue)").message(name: call.name, sequenceID: call.sequenceID)
        } else {
            do {
                let arguments = try AuthenticateArguments(thrift: call.body)
                let result: ThriftResult<String> = switch await sessions.authenticate(username: arguments.userName, password: arguments.password,
                                                                                       source: Self.host(of: request.remoteAddress)) {
                case .success(let session): .success(session)
                case .failure(let failure): .declared(id: 1, message: failure.message)
                }
                reply = ThriftMessage(name: call.name, type: .reply, sequenceID: call.sequenceID, body: result.thrift { .text($0) })
            } catch {
                reply = ThriftApplicationException(.protocolError, error.description).message(name: call.name, sequenceID: call.sequenceID)
            }
        }
        return HTTPResponse(status: 200, headers: [("Content-Type", "application/x-thrift"), ("Cache-Control", "no-store")],
                            body: ThriftProtocol.compact.encode(reply))
    }

    /// The address without its port, so one source's attempts are throttled together.
    static func host(of address: String) -> String {
        // NIO's form: `[IPv4]127.0.0.1/127.0.0.1:5000`.
        guard let colon = address.lastIndex(of: ":") else { return address }
        return String(address[..<colon])
    }
}
