import Foundation
import Logging
import NIOCore
import NIOPosix
import OpenSSLKit
import RoleCore
import RPCCore
import RPCNIO
import TestSupport
import Testing
@testable import TollgateNode
import TollgateProto
import TollgateServices
import TollgateStorage

/// Issue 11, item 7: a service declared in proto/ that a node does not serve
/// answers UNIMPLEMENTED naming the roles that serve it, and `tollctl
/// methods` shows which roles serve what. The roles come from one place,
/// the role modules' table, each module declaring its services.
@Suite(.serialized) struct ServiceRolesTests {
    /// What each module declares in `rpcServices` is exactly what its
    /// methods serve, so the table cannot drift from the handlers.
    @Test func eachModuleDeclaresTheServicesItServes() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-services-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let roles: [Role] = [.publisher, .store, .keymanager, .gateway, .trafficmanager]
        let databases = try Databases.open(dataDirectory: path, only: roles.reduce(into: Set()) { $0.formUnion(RoleModules.databases(for: $1)) })
        let assembly = try await NodeAssembly.assemble(roles: roles, databases: databases, logger: Logger(label: "test"))
        #expect(assembly.modules.count == RoleModules.standard.all.count)
        for module in assembly.modules {
            let served = Set(module.methods.map(\.method.service))
            #expect(served == Set(type(of: module).rpcServices), "\(type(of: module).name) serves \(served.sorted())")
        }
    }

    /// docs/rpc-protocol.md §13's list of who serves what is the table's.
    @Test func theDocumentListsTheServicesRoles() throws {
        let document = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/rpc-protocol.md")
        let text = try String(contentsOf: document, encoding: .utf8)
        let begin = try #require(text.range(of: "<!-- services-begin -->")), end = try #require(text.range(of: "<!-- services-end -->"))
        let rows = RoleModules.standard.serviceRoles.map { entry in
            let roles = entry.roles == Role.allCases ? "every role" : entry.roles.isEmpty ? "none yet" : entry.roles.map(\.rawValue).joined(separator: ", ")
            return "| `\(entry.service)` | \(roles) |"
        }.sorted()
        let expected = (["| service | served by nodes with role |", "|---|---|"] + rows).joined(separator: "\n")
        #expect(text[begin.upperBound..<end.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines) == expected,
                "docs/rpc-protocol.md §13 should hold:\n\(expected)")
    }

    @Test func aPublisherNamesTheRolesServingWhatItDoesNot() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("pub-1", roles: ["publisher"])
        let admin = try NodeFixture.freePort()
        let config = try NodeConfig.load(path: try fixture.writeConfig("pub-1", roles: ["publisher"], clusterPort: try NodeFixture.freePort(), adminPort: admin))
        let runtime = try await NodeRuntime.start(config: config, logger: Logger(label: "test"), threads: 1)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        try await withTeardown {
            let tls = try TLSContext(configuration: .client(trustRootsFile: fixture.caPath, certificateChainFile: fixture.path("admin.pem"),
                                                            privateKeyFile: fixture.path("admin.key"), applicationProtocols: [RPCServer.alpn]))
            let connection = try await RPCConnection.connect(host: "127.0.0.1", port: admin, serverHostname: "localhost", tls: tls, group: group)
            /// The UNIMPLEMENTED message `body` fails with.
            func unimplemented(_ body: () async throws -> Void) async -> String? {
                do { try await body() } catch let error as RPCError where error.code == .unimplemented { return error.message } catch {}
                return nil
            }
            // Refused before any identity is asked for: the method lookup comes first.
            #expect(await unimplemented { _ = try await StoreServiceClient(connection).subscribe(SubscribeRequest()) }
                    == "tollgate.v1.StoreService/Subscribe is served by store nodes; this node runs publisher")
            #expect(await unimplemented { _ = try await KeyManagerServiceClient(connection).validateKey(ValidateKeyRequest()) }
                    == "tollgate.v1.KeyManagerService/ValidateKey is served by keymanager nodes; this node runs publisher")
            #expect(await unimplemented { _ = try await GatewayServiceClient(connection).getGatewayStatus(GetGatewayStatusRequest()) }
                    == "tollgate.v1.GatewayService/GetGatewayStatus is served by gateway nodes; this node runs publisher")
            #expect(await unimplemented { _ = try await TrafficManagerServiceClient(connection).getThrottleStatus(GetThrottleStatusRequest()) }
                    == "tollgate.v1.TrafficManagerService/GetThrottleStatus is served by trafficmanager nodes; this node runs publisher")
            let unknown = ProtoMethod(service: "tollgate.v1.StoreService", name: "Nothing", inputType: "tollgate.v1.PingRequest",
                                      outputType: "tollgate.v1.PingResponse", clientStreaming: false, serverStreaming: false)
            #expect(await unimplemented { let _: PingResponse = try await connection.unary(unknown, PingRequest()) }
                    == "unknown method /tollgate.v1.StoreService/Nothing")

            let listed = try await NodeServiceClient(connection).listServices(ListServicesRequest())
            #expect(listed.nodeRoles == [.publisher])
            let placement = Dictionary(uniqueKeysWithValues: listed.services.map { ($0.service, $0) })
            #expect(placement["tollgate.v1.PublisherService"]?.servedHere == true && placement["tollgate.v1.PublisherService"]?.roles == [.publisher])
            #expect(placement["tollgate.v1.StoreService"]?.servedHere == false && placement["tollgate.v1.StoreService"]?.roles == [.store])
            #expect(placement["tollgate.v1.UserService"]?.roles == [.publisher, .store, .keyManager])
            #expect(placement["tollgate.v1.GatewayService"]?.roles == [.gateway] && placement["tollgate.v1.AnalyticsService"]?.roles == [.publisher, .store, .analytics]
                    && placement["tollgate.v1.AnalyticsService"]?.servedHere == true
                    && placement["tollgate.v1.NodeService"]?.servedHere == true)
            #expect(Set(listed.services.map(\.service)) == Set(ProtoRegistry.methods.map(\.service)))
            await connection.close()

            // tollctl, with the admin certificate: every method, who serves it, and whether this node does.
            let environment = ["TOLLCTL_NODE": "127.0.0.1:\(admin)", "TOLLCTL_CA": fixture.caPath, "TOLLCTL_CERT": fixture.path("admin.pem"),
                               "TOLLCTL_KEY": fixture.path("admin.key"), "XDG_STATE_HOME": fixture.path("state"), "XDG_CONFIG_HOME": fixture.path("config")]
            let methods = try runTollctl(["methods"], environment: environment)
            #expect(methods.status == 0, "\(methods.output)")
            let lines = methods.output.split(separator: "\n")
            #expect(lines.first == "node roles: publisher", "\(methods.output)")
            #expect(lines.filter { $0.hasPrefix("/tollgate.v1.") }.count == ProtoRegistry.methods.count)
            #expect(lines.contains { $0.hasPrefix("/tollgate.v1.StoreService/Subscribe ") && $0.hasSuffix("served by: store  not here") }, "\(methods.output)")
            #expect(lines.contains { $0.hasPrefix("/tollgate.v1.PublisherService/CreateApi ") && $0.hasSuffix("served by: publisher  here") }, "\(methods.output)")
            #expect(lines.contains { $0.hasPrefix("/tollgate.v1.GatewayService/FlushCaches ") && $0.hasSuffix("served by: gateway  not here") }, "\(methods.output)")
            #expect(lines.contains { $0.hasPrefix("/tollgate.v1.AnalyticsService/QueryUsage ") && $0.hasSuffix("served by: publisher,store,analytics  here") },
                    "\(methods.output)")
            // Offline: the methods alone.
            let offline = try runTollctl(["methods", "--offline", "--filter", "StoreService/Subscribe"], environment: environment)
            #expect(offline.status == 0 && offline.output.hasPrefix("/tollgate.v1.StoreService/Subscribe ") && !offline.output.contains("served by"),
                    "\(offline.output)")
            // A command for another role passes the node's answer on.
            let apps = try runTollctl(["app", "list"], environment: environment)
            #expect(apps.status != 0 && apps.output.contains("tollgate.v1.StoreService/ListApplications is served by store nodes; this node runs publisher"),
                    "\(apps.output)")
        } teardown: {
            await runtime.stop()
            try? await group.shutdownGracefully()
        }
    }
}
