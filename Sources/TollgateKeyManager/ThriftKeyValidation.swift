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
/// the `ValidateKey` RPC. Every call is answered as its last byte arrives,
/// on the connection's event loop (a read transaction; no suspension).
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

    public func open(_ connection: ByteStreamConnection) throws -> any ByteStreamSession {
        guard connections.open.wrappingAdd(1, ordering: .relaxed).newValue <= sessions.settings.maxConnections else {
            connections.open.wrappingSubtract(1, ordering: .relaxed)
            throw ConnectionClosed(description: "over thrift_max_connections")
        }
        return Session(service: self)
    }

    /// One connection: the bytes of the message being received, and how
    /// many reads it took so far.
    final class Session: ByteStreamSession {
        let service: ThriftKeyValidationService
        private var buffer: [UInt8] = []
        private var start = 0
        /// Reads since the message being received began: each re-reads it from its start.
        private var pieces = 0

        init(service: ThriftKeyValidationService) {
            self.service = service
        }

        /// A message begun must be complete within the read timeout: a peer
        /// that stalls or trickles mid-message loses its connection. (A
        /// silent peer between messages is the listener's idle timeout.)
        var messageTimeLimit: Duration? {
            start < buffer.count ? .seconds(service.sessions.settings.readTimeoutSeconds) : nil
        }

        func received(_ chunk: [UInt8]) throws -> [UInt8] {
            if start == buffer.count {
                buffer = chunk
            } else {
                buffer.removeSubrange(0..<start)
                buffer.append(contentsOf: chunk)
            }
            start = 0
            let limits = service.limits
            var replies: [UInt8] = []
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
                    guard pieces <= ThriftKeyValidationService.maxPieces(of: received) else {
                        throw ConnectionClosed(description: "a message of \(received) bytes still incomplete after \(pieces - 1) pieces")
                    }
                    break
                } catch {
                    // libthrift's server closes a connection it cannot parse.
                    throw ConnectionClosed(description: "\(error)")
                }
                start += length
                pieces = 0
                if let reply = service.answer(call) { replies += reply }
            }
            return replies
        }

        func closed() {
            service.connections.open.wrappingSubtract(1, ordering: .relaxed)
        }
    }

    /// Most reads one message may take: 256, and one more per 512 bytes
    /// (stock clients write through a buffer of at least 1 KiB, so they
    /// never come near it), bounding the work of re-reading a message whose
    /// end has not arrived.
    public static func maxPieces(of received: Int) -> Int { 256 + received / 512 }

    /// The reply to one call, encoded (nil for ONEWAY).
    func answer(_ call: KeyValidationCall) -> [UInt8]? {
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
            reply = validate(arguments, sessionID: arguments.sessionId).binaryReply(method: header.name, sequenceID: header.sequenceID)
        case .validateKeyforHandshake(let handshake):
            // WebSocket handshakes: any token type, no resource (WSO2's handshake check).
            let arguments = ValidateKeyArguments(context: handshake.context, version: handshake.version, accessToken: handshake.accessToken,
                                                 sessionId: handshake.sessionId, requiredAuthenticationLevel: "Any", clientDomain: nil,
                                                 matchingResource: "", httpVerb: "")
            reply = validate(arguments, sessionID: handshake.sessionId).binaryReply(method: header.name, sequenceID: header.sequenceID)
        case .getAllURITemplates(let arguments):
            let result = uriTemplates(arguments).thrift { .list(.structure, $0.map { .structure($0.thrift) }) }
            reply = ThriftProtocol.binary.encode(ThriftMessage(name: header.name, type: .reply, sequenceID: header.sequenceID, body: result))
        case .unknownMethod:
            return exception(.unknownMethod, "Invalid method name: '\(header.name)'")
        case .missing(let error):
            return exception(.protocolError, error.description)
        }
        return header.type == .call ? reply : nil
    }

    func validate(_ arguments: ValidateKeyArguments, sessionID: String) -> ThriftResult<APIKeyValidationInfoDTO> {
        guard sessions.check(sessionID) else { return .keyManagementException(KeyValidationService.invalidSessionMessage) }
        do {
            return .success(APIKeyValidationInfoDTO(try keyManager.validate(KeyManager.validateKeyRequest(arguments))))
        } catch {
            // WSO2's APIKeyMgtException: the gateway logs in again, retries once, then answers 500.
            return .keyManagementException("Error while validating the access token: \(error.message)")
        }
    }

    func uriTemplates(_ arguments: GetAllURITemplatesArguments) -> ThriftResult<[URITemplateDTO]> {
        guard sessions.check(arguments.sessionId) else { return .keyManagementException(KeyValidationService.invalidSessionMessage) }
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
