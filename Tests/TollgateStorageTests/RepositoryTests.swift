import LMDBKit
import Testing
import TollgateProto
import TollgateStorage

@Suite struct RepositoryTests {
    let hasher = SecretHasher(settings: .testing)

    @Test func userDatabaseLookups() throws {
        try withDataDirectory { dir in
            let db = try UserDatabase.open(in: dir)
            let env = db.database.environment
            try env.write { txn in
                try db.tenants.insert(Tenant(domain: "WSO2.com", status: .active), in: &txn)
                try db.roles.insert(UserRole(tenantDomain: "wso2.com", name: "creator", builtin: true), in: &txn)
                try db.users.insert(User(tenantDomain: "wso2.com", username: "alice", email: "Alice@WSO2.com", roles: ["creator", "subscriber"]), in: &txn)
                try db.users.insert(User(tenantDomain: "wso2.com", username: "bob", email: "bob@wso2.com", roles: ["subscriber"]), in: &txn)
                try db.users.insert(User(tenantDomain: "carbon.super", username: "alice", roles: ["admin"]), in: &txn)
            }
            #expect(try db.tenant("wso2.com")?.domain == "WSO2.com")
            #expect(try db.user("alice", tenant: "wso2.com")?.email == "Alice@WSO2.com")
            #expect(try db.user("alice", tenant: "carbon.super")?.roles == ["admin"])
            #expect(try db.users(withEmail: "alice@wso2.com", tenant: "wso2.com").map(\.username) == ["alice"])
            #expect(try db.users(withRole: "subscriber", tenant: "wso2.com").map(\.username) == ["alice", "bob"])
            #expect(try db.users(tenant: "wso2.com", pageSize: 10).items.map(\.username) == ["alice", "bob"])
            #expect(try db.role("creator", tenant: "wso2.com")?.builtin == true)

            // Dropping a role from a user updates the role index.
            try env.write { txn in
                var alice = try #require(try db.users.get(UserDatabase.userKey("wso2.com", "alice"), in: txn))
                alice.roles = ["creator"]
                try db.users.put(alice, in: &txn)
            }
            #expect(try db.users(withRole: "subscriber", tenant: "wso2.com").map(\.username) == ["bob"])

            // Sessions are found by the bearer token's hash and purged by expiry.
            let live = try SecretHasher.newToken(), stale = try SecretHasher.newToken()
            try env.write { txn in
                try db.sessions.insert(Session(tokenHash: SecretHasher.tokenHash(live), tenantDomain: "wso2.com", username: "alice", expiresAtUnixMs: 2_000), in: &txn)
                try db.sessions.insert(Session(tokenHash: SecretHasher.tokenHash(stale), tenantDomain: "wso2.com", username: "alice", expiresAtUnixMs: 1_000), in: &txn)
            }
            #expect(try db.session(token: live)?.username == "alice")
            #expect(try db.sessions(of: "alice", tenant: "wso2.com").count == 2)
            #expect(try db.purgeExpiredSessions(before: 1_500) == 1)
            #expect(try db.session(token: stale) == nil)
            #expect(try db.session(token: live) != nil)
            #expect(try db.sessions(of: "alice", tenant: "wso2.com").count == 1)
        }
    }

    @Test func apiManagerDatabaseLookups() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            let env = db.database.environment
            let access = try SecretHasher.newOpaqueToken(at: 1_795_000_000_000)
            try env.write { txn in
                try db.apis.insert(api("api-1", name: "Pets"), in: &txn)
                try db.applications.insert(Application(id: "app-1", tenantDomain: "carbon.super", owner: "bob", name: "Mobile"), in: &txn)
                try db.subscriptions.insert(Subscription(id: "sub-1", tenantDomain: "carbon.super", apiId: "api-1", applicationId: "app-1", throttlingPolicy: "Gold"), in: &txn)
                try db.applicationKeys.insert(ApplicationKey(applicationId: "app-1", keyType: .production, consumerKey: "ck-prod"), in: &txn)
                try db.applicationKeys.insert(ApplicationKey(applicationId: "app-1", keyType: .sandbox, consumerKey: "ck-sand"), in: &txn)
                try db.clients.insert(OAuthClient(consumerKey: "ck-prod", consumerSecretHash: try hasher.hash("secret"), applicationId: "app-1"), in: &txn)
                try db.tokens.insert(OAuthToken(tokenHash: SecretHasher.tokenHash(access.token), kind: .access, consumerKey: "ck-prod", tenantDomain: "carbon.super", username: "bob",
                                                tokenId: access.id), in: &txn)
                try db.policies.insert(ThrottlePolicy(policy: .subscriptionPolicy(SubscriptionPolicy(tenantDomain: "carbon.super", name: "Gold"))), in: &txn)
                try db.policies.insert(ThrottlePolicy(policy: .applicationPolicy(ApplicationPolicy(tenantDomain: "carbon.super", name: "10PerMin"))), in: &txn)
                try db.blockConditions.insert(BlockCondition(id: "b1", tenantDomain: "carbon.super", conditionType: .ip, enabled: true, target: .value("192.0.2.1")), in: &txn)
            }
            #expect(try db.application(consumerKey: "ck-sand")?.name == "Mobile")
            #expect(try db.application(consumerKey: "missing") == nil)
            #expect(try db.applications(owner: "bob", tenant: "carbon.super").map(\.id) == ["app-1"])
            #expect(try db.subscription(application: "app-1", api: "api-1")?.throttlingPolicy == "Gold")
            #expect(try db.subscriptions(api: "api-1").map(\.id) == ["sub-1"])
            #expect(try db.subscriptions(application: "app-1").map(\.id) == ["sub-1"])
            #expect(try db.client(consumerKey: "ck-prod")?.applicationId == "app-1")
            #expect(try db.token(id: access.id)?.username == "bob")
            #expect(SecretHasher.opaqueTokenID(access.token) == access.id)
            #expect(try db.token(id: Array(repeating: 7, count: 16)) == nil)
            #expect(try db.tokens(consumerKey: "ck-prod").count == 1)
            #expect(try db.tokens(of: "bob", tenant: "carbon.super").count == 1)
            #expect(try db.policy(kind: .subscription, name: "Gold", tenant: "carbon.super") != nil)
            #expect(try db.policies(kind: .application, tenant: "carbon.super").count == 1)
            #expect(try db.policies(kind: .subscription, tenant: "other").isEmpty)
            #expect(try db.blockConditions(tenant: "carbon.super").map(\.id) == ["b1"])

            // An application subscribes to an API once.
            #expect(throws: StorageError.uniqueConflict(table: "subscriptions", index: "by_application_api")) {
                try env.write { txn in
                    try db.subscriptions.insert(Subscription(id: "sub-2", apiId: "api-1", applicationId: "app-1"), in: &txn)
                }
            }
            // A consumer key belongs to one application key.
            #expect(throws: StorageError.uniqueConflict(table: "application_keys", index: "by_consumer_key")) {
                try env.write { txn in
                    try db.applicationKeys.insert(ApplicationKey(applicationId: "app-2", keyType: .production, consumerKey: "ck-prod"), in: &txn)
                }
            }
        }
    }

    @Test func registryStatisticsAndMessageStore() throws {
        try withDataDirectory { dir in
            let reg = try RegistryDatabase.open(in: dir)
            try reg.database.environment.write { txn in
                try reg.definitions.put(ApiDefinition(apiId: "api-1", format: .json, document: "{}"), in: &txn)
                try reg.documents.insert(Document(id: "d2", apiId: "api-1", name: "Samples"), in: &txn)
                try reg.documents.insert(Document(id: "d1", apiId: "api-1", name: "How To"), in: &txn)
                try reg.documents.insert(Document(id: "d3", apiId: "api-2", name: "How To"), in: &txn)
                for (at, to) in [(300, LifecycleState.deprecated), (100, .published), (200, .blocked)] {
                    try reg.lifecycleHistory.insert(LifecycleHistoryEntry(apiId: "api-1", toState: to, occurredAtUnixMs: Int64(at)), in: &txn)
                }
            }
            #expect(try reg.definition(api: "api-1")?.document == "{}")
            #expect(try reg.documents(api: "api-1").map(\.id) == ["d1", "d2"])
            #expect(try reg.lifecycleHistory(api: "api-1").map(\.toState) == [.published, .blocked, .deprecated])

            let stats = try StatisticsDatabase.open(in: dir)
            try stats.database.environment.write { txn in
                for minute in 0..<5 {
                    try stats.summaries.put(UsageSummary(granularity: .minute, bucketStartUnixMs: Int64(minute) * 60_000, apiContext: "/pets", requestCount: UInt64(minute)), in: &txn)
                }
                try stats.summaries.put(UsageSummary(granularity: .hour, bucketStartUnixMs: 0, apiContext: "/pets", requestCount: 10), in: &txn)
            }
            let range = try stats.summaries(.minute, fromUnixMs: 60_000, toUnixMs: 240_000)
            #expect(range.map(\.requestCount) == [1, 2, 3])

            let mb = try MessageStoreDatabase.open(in: dir)
            let first = try mb.append(TrafficLogRecord(entry: .decision(ThrottleDecision(throttleKey: "k1", throttled: true))))
            let second = try mb.append(TrafficLogRecord(entry: .decision(ThrottleDecision(throttleKey: "k2"))))
            #expect(second == first + 1)
            #expect(try mb.records(after: first, limit: 10).map(\.sequence) == [second])
            #expect(try mb.records(after: 0, limit: 1).map(\.sequence) == [first])
        }
    }

    @Test func sequencesSurviveReopening() throws {
        try withDataDirectory { dir in
            let last: UInt64 = try {
                let mb = try MessageStoreDatabase.open(in: dir)
                try mb.append(TrafficLogRecord())
                return try mb.append(TrafficLogRecord())
            }()
            let mb = try MessageStoreDatabase.open(in: dir)
            #expect(try mb.append(TrafficLogRecord()) == last + 1)
        }
    }
}
