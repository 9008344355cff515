import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
import RPCNIO
import TestSupport
import Testing
import TollgateProto
import TollgateServices

/// The consumer side through real processes, as an operator runs it: a
/// publisher-and-store node and a keymanager node sharing the host's
/// control-plane databases; tollctl as the users; curl as an OAuth client;
/// a gateway-certificate client calling ValidateKey and WatchRevocations.
@Suite(.serialized) struct ConsumerEndToEndTests {
    struct Cluster {
        let fixture: NodeFixture
        let storeAdmin: Int
        let keyManagerCluster: Int
        let oauth: Int
    }

    /// Starts the two nodes; `body` runs while they are up.
    func withCluster(_ body: (Cluster, NodeProcesses) async throws -> Void) async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("cp-1", roles: ["publisher", "store"])
        try fixture.issueNode("km-1", roles: ["keymanager"])
        try fixture.issueNode("gw-1", roles: ["gateway"])
        let ports = try (0..<5).map { _ in try NodeFixture.freePort() }
        let shared = fixture.path("control-plane")
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        func config(_ id: String, roles: [String], cluster: Int, admin: Int, extra: String) throws -> String {
            let text = """
                node_id = "\(id)"
                roles = [\(roles.map { "\"\($0)\"" }.joined(separator: ", "))]
                data_directory = "control-plane"
                [listen]
                cluster = "127.0.0.1:\(cluster)"
                admin = "127.0.0.1:\(admin)"
                \(extra)
                [tls]
                ca = "ca.pem"
                certificate = "\(id).pem"
                private_key = "\(id).key"
                [users]
                bootstrap_admin = "admin"
                bootstrap_password_file = "admin.password"
                [store]
                self_signup_tenants = "*"

                """
            let path = fixture.path("\(id).toml")
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let storeConfig = try config("cp-1", roles: ["publisher", "store"], cluster: ports[0], admin: ports[1], extra: "")
        let keyManagerConfig = try config("km-1", roles: ["keymanager"], cluster: ports[2], admin: ports[3], extra: "oauth = \"127.0.0.1:\(ports[4])\"")
        try await withNodes { nodes in
            let store = try nodes.start(config: storeConfig)
            #expect(await store.waitFor("ready: node cp-1"), "\(store.output)")
            let keyManager = try nodes.start(config: keyManagerConfig)
            #expect(await keyManager.waitFor("ready: node km-1"), "\(keyManager.output)")
            #expect(keyManager.output.contains("oauth 127.0.0.1:\(ports[4])"), "\(keyManager.output)")
            try await body(Cluster(fixture: fixture, storeAdmin: ports[1], keyManagerCluster: ports[2], oauth: ports[4]), nodes)
        }
    }

    static func json(_ text: String) -> [String: Any] {
        guard let start = text.firstIndex(of: "{") else { return [:] }
        return (try? JSONSerialization.jsonObject(with: Data(text[start...].utf8))) as? [String: Any] ?? [:]
    }

    @Test func publishSignUpSubscribeGetATokenValidateRevokeAndWatch() async throws {
        try await withCluster { cluster, _ in
            let fixture = cluster.fixture
            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(cluster.storeAdmin)", "TOLLCTL_CA": fixture.caPath,
                               "XDG_STATE_HOME": fixture.path("state-admin"), "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> (status: Int32, output: String) {
                try runTollctl(arguments, environment: environment, input: input)
            }
            // The provider publishes an API offering Gold.
            #expect(try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n").status == 0)
            let created = try tollctl("api", "create", "--name", "PizzaShack", "--api-version", "1.0.0", "--context", "/pizzashack",
                                      "--resource", "GET /menu", "--endpoint", "https://backend.example.com/pizza", "--tier", "Gold", "--output", "json")
            let apiID = try #require(Self.json(created.output)["id"] as? String, "\(created.output)")
            #expect(try tollctl("api", "lifecycle", apiID, "published").status == 0)

            // A consumer signs up, creates an application, subscribes at Gold and generates keys.
            let signUp = try tollctl("signup", "--user", "dana", "--email", "dana@example.com", "--password-stdin", input: "Dana-Secret-1\n")
            #expect(signUp.status == 0 && signUp.output.contains("subscriber"), "\(signUp.output)")
            environment["XDG_STATE_HOME"] = fixture.path("state-dana")
            #expect(try tollctl("login", "--user", "dana", "--password-stdin", input: "Dana-Secret-1\n").status == 0)
            let listed = try tollctl("store", "api", "list")
            #expect(listed.status == 0 && listed.output.contains("PizzaShack"), "\(listed.output)")
            let shown = try tollctl("store", "api", "show", apiID)
            #expect(shown.output.contains("Gold") && shown.output.contains("/menu"), "\(shown.output)")
            let app = try tollctl("app", "create", "--name", "Mobile", "--tier", "50PerMin", "--output", "json")
            let appID = try #require(Self.json(app.output)["id"] as? String, "\(app.output)")
            let deprecatedTier = try tollctl("sub", "create", "--app", appID, "--api", apiID, "--tier", "Bronze")
            #expect(deprecatedTier.status != 0 && deprecatedTier.output.contains("choose one of Gold"), "\(deprecatedTier.output)")
            let subscribed = try tollctl("sub", "create", "--app", appID, "--api", apiID, "--tier", "Gold")
            #expect(subscribed.status == 0 && subscribed.output.contains("at Gold"), "\(subscribed.output)")
            #expect(try tollctl("sub", "list").output.contains("unblocked"))
            let keys = Self.json(try tollctl("key", "generate", appID, "--output", "json").output)
            let consumerKey = try #require(keys["consumer_key"] as? String, "\(keys)")
            let consumerSecret = try #require(keys["consumer_secret"] as? String)

            // curl gets a token from the keymanager's HTTPS token endpoint.
            let curl = try await runTool("/usr/bin/curl", ["-sS", "--cacert", fixture.caPath, "-u", "\(consumerKey):\(consumerSecret)",
                                                           "-d", "grant_type=client_credentials", "https://127.0.0.1:\(cluster.oauth)/oauth2/token"])
            let issued = Self.json(curl.output)
            let token = try #require(issued["access_token"] as? String, "\(curl.output)")
            #expect(issued["token_type"] as? String == "Bearer")

            // A gateway asks the keymanager about it and gets the Gold limits.
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            try await withTeardown {
                let tls = try TLSContext(configuration: .client(trustRootsFile: fixture.caPath, certificateChainFile: fixture.path("gw-1.pem"),
                                                                privateKeyFile: fixture.path("gw-1.key"), applicationProtocols: [RPCServer.alpn]))
                let connection = try await RPCConnection.connect(host: "127.0.0.1", port: cluster.keyManagerCluster, serverHostname: "localhost",
                                                                 tls: tls, group: group)
                let keyManager = KeyManagerServiceClient(connection)
                let request = ValidateKeyRequest(context: "/pizzashack", version: "1.0.0", tokenHash: SHA256.hash(token), requiredAuthLevel: .any,
                                                 matchingResource: "/menu", verb: .get)
                let info = try #require(try await keyManager.validateKey(request).info)
                #expect(info.authorized && info.subscriptionPolicy == "Gold" && info.subscriptionLimit?.quota == .requestCount(5000), "\(info)")
                #expect(info.applicationPolicy == "50PerMin" && info.subscriber == "dana" && info.keyType == .production)

                // Revoked through the store node, heard by the keymanager's watcher.
                let feed = Watched<[WatchRevocationsResponse]>([])
                let watcher = Task { try await keyManager.watchRevocations(WatchRevocationsRequest()) { response in feed.update { $0.append(response) } } }
                try await feed.wait(for: "the feed's first answer") { !$0.isEmpty }
                let revoked = try tollctl("token", "revoke", appID, token)
                #expect(revoked.status == 0, "\(revoked.output)")
                let hash = SHA256.hash(token)
                try await feed.wait(for: "the revocation on the feed") { responses in
                    responses.contains { $0.revocations.contains { $0.target == TokenRevocation.Target.tokenHash(hash) } }
                }
                #expect(try await keyManager.validateKey(request).info?.validationStatus == 900901)
                watcher.cancel()
                _ = await watcher.result
                await connection.close()
            } teardown: {
                try? await group.shutdownGracefully()
            }

            // The raw RFC 6749 error shape, seen by curl.
            let bad = try await runTool("/usr/bin/curl", ["-sS", "-i", "--cacert", fixture.caPath, "-u", "\(consumerKey):wrong",
                                                          "-d", "grant_type=client_credentials", "https://127.0.0.1:\(cluster.oauth)/oauth2/token"])
            #expect(bad.output.hasPrefix("HTTP/1.1 401") && bad.output.contains("WWW-Authenticate: Basic") && bad.output.contains("\"invalid_client\""), "\(bad.output)")
        }
    }
}
