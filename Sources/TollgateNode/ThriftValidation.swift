import Foundation
import NIOCore
import RoleCore
import ThriftNIO
import TollgateGateway
import TollgateProto

/// Makes the gateway's Thrift key validator (`[gateway] key_validation =
/// "thrift"`) over ThriftNIO's pooled client, on the node's event loops.
struct ThriftValidatorFactory: ThriftKeyValidatorFactory {
    let group: any EventLoopGroup
    /// The cluster CA: keymanagers' Thrift listeners present node certificates.
    let defaultTrustRoots: String

    func makeValidator(section: ConfigSection) throws -> any KeyValidator {
        let servers = GatewayModule.list(section.string("thrift_keymanagers") ?? "")
        let authenticators = GatewayModule.list(section.string("thrift_authenticator_urls") ?? "")
        guard !servers.isEmpty, servers.count == authenticators.count else {
            throw NodeStartError("gateway.thrift_keymanagers and gateway.thrift_authenticator_urls must list the same keymanagers, in the same order")
        }
        var endpoints: [ThriftKeyValidationClient.Endpoint] = []
        for (server, authenticator) in zip(servers, authenticators) {
            guard let colon = server.lastIndex(of: ":"), let port = Int(server[server.index(after: colon)...]), (1...65535).contains(port) else {
                throw NodeStartError("gateway.thrift_keymanagers: \(server) is not host:port")
            }
            endpoints.append(.init(host: String(server[..<colon]), thriftPort: port, authenticatorURL: authenticator))
        }
        let passwordFile = section.string("thrift_password_file") ?? ""
        guard let password = try? String(contentsOfFile: passwordFile, encoding: .utf8).trimmingCharacters(in: .newlines), !password.isEmpty else {
            throw NodeStartError("gateway.thrift_password_file: \(passwordFile) cannot be read or is empty")
        }
        var configuration = ThriftKeyValidationClient.Configuration(keymanagers: endpoints, username: section.string("thrift_username") ?? "",
                                                                    password: password,
                                                                    trustRootsFile: section.string("thrift_ca_file") ?? defaultTrustRoots)
        if let timeout = section.integer("keymanager_timeout_ms") { configuration.readTimeout = .milliseconds(timeout) }
        return ThriftKeyValidator(client: try ThriftKeyValidationClient(configuration: configuration, eventLoopGroup: group),
                                  configured: endpoints.count)
    }
}

/// The gateway's validator over WSO2's Thrift protocol: the same result type
/// as the RPC; "no keymanager answered" is unavailability (503/900900).
struct ThriftKeyValidator: KeyValidator {
    let client: ThriftKeyValidationClient
    let configured: Int

    var connections: (configured: Int, healthy: Int) { (configured, min(configured, client.openConnections)) }

    func validate(_ query: KeyValidationQuery) async throws -> KeyValidationInfo {
        let level = switch query.requiredAuthLevel {
        case .application: "Application"
        case .applicationUser: "Application_User"
        default: "Any"
        }
        do {
            return try await client.validateKey(context: query.context, version: query.version, accessToken: query.token,
                                                requiredAuthenticationLevel: level, clientDomain: query.clientDomain,
                                                matchingResource: query.matchingResource, httpVerb: query.verb.httpMethodName ?? "")
        } catch let error as ThriftKeyValidationClient.ValidationError {
            throw KeyValidatorUnavailable(error.description)
        }
    }
}
