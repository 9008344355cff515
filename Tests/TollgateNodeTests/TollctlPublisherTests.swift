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

/// A real publisher node driven by `tollctl` as API providers would, with a
/// gateway's certificate watching the deployment feed over TLS.
@Suite(.serialized) struct TollctlPublisherTests {
    static let openAPI = """
        openapi: 3.0.3
        info: {title: Menu, version: "1.0", description: Dishes of the day}
        paths:
          /dishes:
            get:
              operationId: listDishes
              parameters:
                - {name: vegan, in: query, schema: {type: boolean}}
              responses: {"200": {description: The dishes}}
          /dishes/{dishId}:
            delete:
              x-auth-type: Application User
              responses: {"204": {description: Gone}}
        """

    /// The value of `"key" : "value"` in tollctl's JSON output.
    func jsonString(_ key: String, in output: String) -> String? {
        guard let range = output.range(of: "\"\(key)\" : \"") else { return nil }
        return String(output[range.upperBound...].prefix { $0 != "\"" })
    }

    @Test func apiDesignLifecycleDocumentsAndTheFeed() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("pub-1", roles: ["publisher"])
        try fixture.issueNode("gw-1", roles: ["gateway"])
        let (cluster, admin) = (try NodeFixture.freePort(), try NodeFixture.freePort())
        try await withNodes { nodes in
            let publisher = try nodes.start(config: try fixture.writeConfig("pub-1", roles: ["publisher"], clusterPort: cluster, adminPort: admin))
            #expect(await publisher.waitFor("ready: node pub-1"), "\(publisher.output)")

            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(admin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": fixture.path("state"),
                               "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> (status: Int32, output: String) {
                try runTollctl(arguments, environment: environment, input: input)
            }
            #expect(try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n").status == 0)
            #expect(try tollctl("user", "create", "carol", "--role", "creator", "--password-stdin", input: "Carol-Secret-1\n").status == 0)

            // A creator designs the API …
            environment["XDG_STATE_HOME"] = fixture.path("state-carol")
            #expect(try tollctl("login", "--user", "carol", "--password-stdin", input: "Carol-Secret-1\n").status == 0)
            let created = try tollctl("api", "create", "--name", "PizzaShack", "--api-version", "1.0.0", "--context", "/pizzashack",
                                      "--resource", "GET /menu", "--resource", "POST /order", "--tag", "food",
                                      "--endpoint", "https://backend.example.com/pizza", "--tier", "Gold", "--output", "json")
            #expect(created.status == 0, "\(created.output)")
            let id = try #require(jsonString("id", in: created.output), "\(created.output)")
            let bad = try tollctl("api", "create", "--name", "Bad", "--api-version", "1", "--context", "/t/acme", "--resource", "GET /x")
            #expect(bad.status != 0 && bad.output.contains("reserved for tenants"), "\(bad.output)")
            // What is wrong with a flag is said in terms of the flag, before anything is sent.
            let flagged: [([String], String)] = [
                (["--resource", "GET /x", "--endpoint", "https://backend.example.com:99999/x"], "--endpoint"),
                (["--resource", "GET /x", "--endpoint", "https://backend.example.com/x?debug=1"], "--endpoint"),
                (["--resource", "GET /order/{id"], "is not a URI template"),
                (["--resource", "GET /x", "--visibility", "restricted"], "--visible-role"),
            ]
            for (arguments, fragment) in flagged {
                let refused = try runTollctl(["api", "create", "--name", "Flags", "--api-version", "1", "--context", "/flags"] + arguments, environment: environment)
                #expect(refused.status != 0 && refused.output.contains(fragment) && !refused.output.contains("_endpoints") && !refused.output.contains("uri_template")
                        && !refused.output.contains("visible_roles"), "\(arguments): \(refused.output)")
            }
            let noContext = try tollctl("api", "import", "-", input: Self.openAPI)
            #expect(noContext.status != 0 && noContext.output.contains("--context"), "\(noContext.output)")
            let imported = try tollctl("api", "import", "-", "--context", "/menu", "--endpoint", "http://menu.internal:8080", "--output", "json",
                                       input: Self.openAPI)
            #expect(imported.status == 0 && imported.output.contains("\"listDishes\"") == false && imported.output.contains("/dishes/{dishId}"), "\(imported.output)")
            // … but cannot publish it.
            let refused = try tollctl("api", "lifecycle", id, "published")
            #expect(refused.status != 0 && refused.output.contains("permission denied") && refused.output.contains("roles that grant it: admin, publisher"),
                    "\(refused.output)")

            let list = try tollctl("api", "list")
            #expect(list.status == 0 && list.output.contains("PizzaShack") && list.output.contains("Menu") && list.output.contains("created"), "\(list.output)")
            let search = try tollctl("api", "search", "shack")
            #expect(search.status == 0 && search.output.contains("PizzaShack") && !search.output.contains("Menu"), "\(search.output)")
            let exported = fixture.path("menu.yaml")
            let menuID = try #require(jsonString("id", in: imported.output))
            #expect(try tollctl("api", "export", menuID, "--format", "yaml", "--file", exported).status == 0)
            let document = try String(contentsOfFile: exported, encoding: .utf8)
            #expect(document.hasPrefix("openapi: \"3.0.3\"") && document.contains("listDishes") && document.contains("Application User"), "\(document)")

            let doc = try tollctl("doc", "add", id, "--name", "Getting started", "--type", "how-to", "--text", "Order with POST /order")
            #expect(doc.status == 0, "\(doc.output)")
            let docs = try tollctl("doc", "list", id)
            #expect(docs.status == 0 && docs.output.contains("Getting started"), "\(docs.output)")

            // A gateway watches the feed over TLS with its node certificate.
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            try await withTeardown {
                let tls = try TLSContext(configuration: .client(trustRootsFile: fixture.caPath, certificateChainFile: fixture.path("gw-1.pem"),
                                                                privateKeyFile: fixture.path("gw-1.key"), applicationProtocols: [RPCServer.alpn]))
                let connection = try await RPCConnection.connect(host: "127.0.0.1", port: cluster, serverHostname: "localhost", tls: tls, group: group)
                let received = FeedLog()
                let watcher = Task {
                    try await PublisherServiceClient(connection).watchDeployments(WatchDeploymentsRequest()) { response in received.add(response) }
                }
                let snapshotSeen = await received.wait { $0.contains("snapshot") }
                var entries = received.entries.current
                #expect(snapshotSeen, "\(entries)")

                // The admin publishes; the gateway hears of it.
                environment["XDG_STATE_HOME"] = fixture.path("state")
                let published = try tollctl("api", "lifecycle", id, "published", "--comment", "go live")
                #expect(published.status == 0 && published.output.lowercased().contains("created") && published.output.lowercased().contains("published"), "\(published.output)")
                let publishSeen = await received.wait { $0.contains("api PizzaShack 1.0.0 published at /pizzashack/1.0.0") }
                entries = received.entries.current
                #expect(publishSeen, "\(entries)")
                let wrongMove = try tollctl("api", "lifecycle", id, "retired")
                #expect(wrongMove.status != 0 && wrongMove.output.contains("cannot move from PUBLISHED to RETIRED"), "\(wrongMove.output)")
                let history = try tollctl("api", "history", id)
                #expect(history.status == 0 && history.output.contains("carol") && history.output.contains("admin") && history.output.contains("go live"), "\(history.output)")

                let copy = try tollctl("api", "new-version", id, "2.0.0", "--default-version", "--output", "json")
                #expect(copy.status == 0 && copy.output.contains("2.0.0"), "\(copy.output)")
                let copyID = try #require(jsonString("id", in: copy.output), "\(copy.output)")
                #expect(try tollctl("doc", "list", copyID).output.contains("Getting started"))
                let subscriptions = try tollctl("sub", "list", id)
                #expect(subscriptions.status == 0, "\(subscriptions.output)")
                #expect(try tollctl("api", "delete", copyID).status == 0)
                let gone = try tollctl("api", "get", copyID)
                #expect(gone.status != 0 && gone.output.contains("no API \(copyID)"), "\(gone.output)")

                watcher.cancel()
                _ = await watcher.result
                await connection.close()
            } teardown: {
                try? await group.shutdownGracefully()
            }
        }
    }
}

/// The feed as one line per message, for simple assertions.
final class FeedLog: Sendable {
    let entries = Watched<[String]>([])

    func add(_ response: WatchDeploymentsResponse) {
        switch response.frame {
        case .snapshot(let chunk)?:
            entries.update { $0.append("snapshot at \(chunk.revision) with \(chunk.apis.count) APIs") }
        case .change(let change)?:
            if case .apiUpserted(let deployed)? = change.change, let api = deployed.api {
                entries.update { $0.append("api \(api.name) \(api.version) \(String(describing: api.lifecycleState)) at \(deployed.gatewayContext)") }
            } else {
                entries.update { $0.append("change \(change.revision)") }
            }
        case .caughtUp(let caughtUp)?:
            entries.update { $0.append("caught up at \(caughtUp.revision)") }
        case nil:
            break
        }
    }

    /// Waits until an entry satisfies `condition`; whether one did.
    func wait(_ condition: @escaping @Sendable (String) -> Bool) async -> Bool {
        (try? await entries.wait(for: "a feed entry") { $0.contains(where: condition) }) != nil
    }
}
