import Foundation
import RPCCore
import Testing
import TollgateProto
import TollgateServices

/// Who may call each StoreService and KeyManagerService method, written out
/// by hand from the issue (not read from the access table under test).
@Suite struct AccessMatrixTests {
    static let everyone: Set<String> = ["admin", "creator", "publisher", "subscriber", "anonymous", "gateway", "store"]
    static let subscribers: Set<String> = ["admin", "subscriber"]

    static let expected: [String: Set<String>] = {
        var table: [String: Set<String>] = [:]
        for method in ["ListPublishedApis", "SearchPublishedApis", "GetApiDetails", "GetApiDocument", "SignUp"] { table["StoreService/" + method] = everyone }
        for method in ["CreateApplication", "UpdateApplication", "DeleteApplication", "ListApplications", "GetApplication", "Subscribe", "Unsubscribe",
                       "ListSubscriptions", "GenerateKeys", "RegenerateSecret", "GenerateApplicationToken", "RevokeApplicationToken"] {
            table["StoreService/" + method] = subscribers
        }
        for method in ["RegisterClient", "UpdateClient", "DeleteClient", "GetClient", "RegenerateClientSecret"] {
            table["KeyManagerService/" + method] = subscribers.union(["store"])
        }
        for method in ["IssueToken", "RefreshToken", "RevokeToken"] { table["KeyManagerService/" + method] = subscribers.union(["store", "gateway"]) }
        table["KeyManagerService/Introspect"] = subscribers.union(["store", "gateway"])
        table["KeyManagerService/ValidateKey"] = ["gateway"]
        table["KeyManagerService/WatchRevocations"] = ["gateway"]
        table["KeyManagerService/ListSigningKeys"] = ["gateway"]
        table["KeyManagerService/RotateSigningKey"] = ["admin"]
        return table
    }()

    @Test func everyStoreAndKeyManagerMethodByEveryCaller() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        var callers: [String: (InProcessTransport, CallOptions)] = ["admin": (fixture.transport, try await fixture.session("root"))]
        for role in ["creator", "publisher", "subscriber"] { callers[role] = (fixture.transport, try await fixture.user("user-\(role)", roles: [role])) }
        callers["anonymous"] = (fixture.transport, CallOptions())
        callers["gateway"] = (fixture.transport.calling(as: .node(id: "gw1", roles: ["gateway"])), CallOptions())
        callers["store"] = (fixture.transport.calling(as: .node(id: "st1", roles: ["store"])), CallOptions())

        let methods = StoreServiceDescriptor.methods + KeyManagerServiceDescriptor.methods
        #expect(Set(methods.map { "\($0.service.split(separator: ".").last!)/\($0.name)" }) == Set(Self.expected.keys))
        for method in methods {
            let key = "\(method.service.split(separator: ".").last!)/\(method.name)"
            let allowed = try #require(Self.expected[key])
            for (name, (transport, options)) in callers.sorted(by: { $0.key < $1.key }) {
                var limited = options
                limited.timeout = .milliseconds(300)
                let code = await call(method, transport, limited)
                if allowed.contains(name) {
                    #expect(code != .permissionDenied && code != .unauthenticated, "\(key) as \(name) was refused: \(code.map(String.init(describing:)) ?? "OK")")
                } else {
                    #expect(code == .permissionDenied || code == .unauthenticated, "\(key) as \(name) gave \(code.map(String.init(describing:)) ?? "OK")")
                }
            }
        }
    }

    /// The status of calling `method` with an empty request (nil for OK).
    func call(_ method: ProtoMethod, _ transport: InProcessTransport, _ options: CallOptions) async -> RPCCode? {
        do {
            if method.name == "WatchRevocations" {
                try await transport.serverStreaming(method, WatchRevocationsRequest(), options: options) { (_: WatchRevocationsResponse) in }
            } else if method.name == "ListSigningKeys" {
                _ = try await transport.unary(method, ListSigningKeysRequest(), options: options, as: ListSigningKeysResponse.self)
            } else if method.name == "RotateSigningKey" {
                // Rotating for real is harmless here, but keep the request empty like the others.
                _ = try await transport.unary(method, RotateSigningKeyRequest(), options: options, as: RotateSigningKeyResponse.self)
            } else {
                _ = try await transport.unary(method, GetClientRequest(), options: options, as: DeleteClientResponse.self)
            }
            return nil
        } catch let error as RPCError {
            return error.code
        } catch {
            return .unknown
        }
    }
}
