import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import Synchronization
import TestSupport
import Testing
import ThriftCore
import ThriftNIO
import TollgateProto

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

/// The gateway's Thrift client against stock Apache Thrift servers playing
/// WSO2 keymanagers: results equal what the server sent, failover when one
/// is killed mid-load, recovery from refused sessions, and no leaked sockets.
@Suite(.serialized) struct ThriftClientTests {
    static let answers = """
        {"tokens": {
           "good-token": {"authorized": true, "validationStatus": 0, "subscriber": "alice", "tier": "Gold", "type": "SANDBOX",
                          "endUserName": "alice@carbon.super", "applicationName": "web", "applicationId": "42", "applicationTier": "Unlimited",
                          "apiName": "Menu", "consumerKey": "ck-1", "apiPublisher": "admin", "authorizedDomains": ["ALL"], "scopes": ["read"],
                          "validityPeriod": 3600000, "issuedTime": 1700000000000, "isContentAware": true, "apiTier": "Burst",
                          "throttlingDataList": ["api_level_throttling_key"], "spikeArrestLimit": 10, "subscriberTenantDomain": "carbon.super",
                          "spikeArrestUnit": "sec", "stopOnQuotaReach": false, "endUserToken": "jwt.for.backend"},
           "blocked-token": {"authorized": false, "validationStatus": 900907}
         },
         "templates": [{"uriTemplate": "/dishes", "httpVerb": "GET", "authType": "Any", "throttlingTier": "Unlimited", "applicableLevel": "apiLevel",
                        "throttlingConditions": [], "conditionGroups": [{"conditionGroupId": "g1",
                          "conditions": [{"conditionType": "IP", "conditionName": "ip", "conditionValue": "10.0.0.1", "isInverted": true}]}]}]}
        """

    static func configuration(_ keymanagers: [ThriftKeyValidationClient.Endpoint], fixture: NodeFixture) -> ThriftKeyValidationClient.Configuration {
        var configuration = ThriftKeyValidationClient.Configuration(keymanagers: keymanagers, username: "gateway", password: "gateway-secret",
                                                                    trustRootsFile: fixture.caPath)
        configuration.failedBackoff = .milliseconds(200)
        configuration.readTimeout = .seconds(30)
        return configuration
    }

    static func validate(_ client: ThriftKeyValidationClient, _ token: String) async throws -> KeyValidationInfo {
        try await client.validateKey(context: "/menu/1.0.0", version: "1.0.0", accessToken: token, requiredAuthenticationLevel: "Any",
                                     clientDomain: nil, matchingResource: "/dishes", httpVerb: "GET")
    }

    @Test func resultsEqualWhatAStockServerSent() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("km-a", roles: ["keymanager"])
        let server = try await StockKeymanager(fixture: fixture, certificate: "km-a", answers: Self.answers)
        defer { server.kill() }
        let client = try ThriftKeyValidationClient(configuration: Self.configuration([server.endpoint()], fixture: fixture),
                                                   eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        let info = try await Self.validate(client, "good-token")
        var expected = KeyValidationInfo(authorized: true, validationStatus: 0, keyType: .sandbox)
        expected.subscriber = "alice"
        expected.subscriptionPolicy = "Gold"
        expected.endUserName = "alice@carbon.super"
        expected.endUserToken = "jwt.for.backend"
        expected.applicationName = "web"
        expected.applicationId = "42"
        expected.applicationPolicy = "Unlimited"
        expected.apiName = "Menu"
        expected.consumerKey = "ck-1"
        expected.apiPublisher = "admin"
        expected.authorizedDomains = ["ALL"]
        expected.scopes = ["read"]
        expected.issuedAtUnixMs = 1_700_000_000_000
        expected.expiresAtUnixMs = 1_700_000_000_000 + 3_600_000
        expected.contentAware = true
        expected.apiPolicy = "Burst"
        expected.throttlingData = ["api_level_throttling_key"]
        expected.spikeArrestLimit = 10
        expected.spikeArrestUnit = .second
        expected.subscriberTenantDomain = "carbon.super"
        expected.stopOnQuotaReach = false
        #expect(info == expected)

        let blocked = try await Self.validate(client, "blocked-token")
        #expect(!blocked.authorized && blocked.validationStatus == 900907)
        let unknown = try await Self.validate(client, "no-such-token")
        #expect(!unknown.authorized && unknown.validationStatus == 900901)

        let templates = try await client.uriTemplates(context: "/menu/1.0.0", version: "1.0.0")
        #expect(templates.count == 1)
        #expect(templates.first?.uriTemplate == "/dishes" && templates.first?.applicableLevel == "apiLevel")
        #expect(templates.first?.conditionGroups?.first?.conditions == [ConditionDTO(conditionType: "IP", conditionName: "ip", conditionValue: "10.0.0.1", isInverted: true)])
        await client.shutdown()
    }

    @Test func certificatesAreCheckedAgainstTheTrustRootsAndTheHostName() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("km-a", roles: ["keymanager"])
        let server = try await StockKeymanager(fixture: fixture, certificate: "km-a", answers: Self.answers)
        defer { server.kill() }
        // Another CA's roots: refused.
        let stranger = try NodeFixture()
        defer { stranger.remove() }
        let untrusting = try ThriftKeyValidationClient(configuration: Self.configuration([server.endpoint()], fixture: stranger),
                                                       eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        await #expect(throws: ThriftKeyValidationClient.ValidationError.self) { _ = try await Self.validate(untrusting, "good-token") }
        await untrusting.shutdown()
        // A server whose certificate names another host: refused, unless the check is off.
        let elsewhere = try CertificateIssuer.issue(CertificateRequest(commonName: "km-elsewhere", usage: .node, dnsNames: ["km.elsewhere.example"],
                                                                       validUntilOffset: 3600), signedBy: fixture.ca)
        try elsewhere.certificatePEM.write(toFile: fixture.path("km-elsewhere.pem"), atomically: true, encoding: .utf8)
        try elsewhere.privateKeyPEM.write(toFile: fixture.path("km-elsewhere.key"), atomically: true, encoding: .utf8)
        let misnamed = try await StockKeymanager(fixture: fixture, certificate: "km-elsewhere", answers: Self.answers)
        defer { misnamed.kill() }
        let wrongName = misnamed.endpoint()
        let checking = try ThriftKeyValidationClient(configuration: Self.configuration([wrongName], fixture: fixture), eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        await #expect(throws: ThriftKeyValidationClient.ValidationError.self) { _ = try await Self.validate(checking, "good-token") }
        await checking.shutdown()
        var lax = Self.configuration([wrongName], fixture: fixture)
        lax.verifyHostname = false
        let notChecking = try ThriftKeyValidationClient(configuration: lax, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        #expect(try await Self.validate(notChecking, "good-token").authorized)
        await notChecking.shutdown()
    }

    @Test func failsOverWhenAKeymanagerIsKilledMidLoad() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("km-a", roles: ["keymanager"])
        let first = try await StockKeymanager(fixture: fixture, certificate: "km-a", answers: Self.answers)
        defer { first.kill() }
        let second = try await StockKeymanager(fixture: fixture, certificate: "km-a", answers: Self.answers)
        defer { second.kill() }
        let client = try ThriftKeyValidationClient(configuration: Self.configuration([first.endpoint(), second.endpoint()], fixture: fixture),
                                                   eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        let completed = Counter(), refused = Counter()
        let perTask = 300
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<6 {
                group.addTask {
                    for _ in 0..<perTask {
                        let info = try await Self.validate(client, "good-token")
                        if !info.authorized { refused.value.add(1, ordering: .relaxed) }
                        completed.value.add(1, ordering: .relaxed)
                    }
                }
            }
            // Kill the first keymanager once the load is well under way.
            group.addTask {
                try await eventually("some calls to complete", timeout: .seconds(120)) { completed.value.load(ordering: .relaxed) >= 200 }
                first.kill()
            }
            try await group.waitForAll()
        }
        #expect(completed.value.load(ordering: .relaxed) == 6 * perTask)
        #expect(refused.value.load(ordering: .relaxed) == 0)
        #expect(!first.process.isRunning)
        await client.shutdown()
    }

    @Test func refusedSessionsAreRenewedAndNoSocketLeaks() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("km-a", roles: ["keymanager"])
        // Every session is refused after 10 calls: the client must authenticate again 1,000 times.
        let server = try await StockKeymanager(fixture: fixture, certificate: "km-a", answers: Self.answers, sessionCalls: 10)
        defer { server.kill() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let before = openFileDescriptors()
        let client = try ThriftKeyValidationClient(configuration: Self.configuration([server.endpoint()], fixture: fixture), eventLoopGroup: group)
        var authorized = 0
        for _ in 0..<10_000 where try await Self.validate(client, "good-token").authorized { authorized += 1 }
        #expect(authorized == 10_000)
        #expect(client.openConnections <= 1)
        #expect(server.reader.text.components(separatedBy: "authenticated ").count - 1 >= 1000)
        await client.shutdown()
        try await eventually("the client's sockets to close", timeout: .seconds(30)) { openFileDescriptors() <= before }
        try await group.shutdownGracefully()
    }
}
