import Foundation
import LMDBKit
import Testing
import TollgateProto
import TollgateStorage

@Suite struct SchemaTests {
    @Test func aNewerSchemaIsRefusedAndNothingIsWritten() throws {
        try withDataDirectory { dir in
            do {
                let db = try UserDatabase.open(in: dir)
                // Simulate a later Tollgate having upgraded the environment.
                let meta = try db.database.environment.openDatabase("meta")
                try db.database.environment.write { txn in
                    try txn.put(withUnsafeBytes(of: UInt64(99).bigEndian, Array.init), forKey: Array("schema_version".utf8), in: meta)
                }
            }
            let before = try Data(contentsOf: URL(fileURLWithPath: dir + "/userdb/data.mdb"))
            #expect(throws: StorageError.newerSchema(database: "userdb", found: 99, supported: UserDatabase.schema.version)) {
                _ = try UserDatabase.open(in: dir)
            }
            let after = try Data(contentsOf: URL(fileURLWithPath: dir + "/userdb/data.mdb"))
            #expect(before == after)
            #expect(StorageError.newerSchema(database: "userdb", found: 99, supported: 1).description.contains("upgrade"))
        }
    }

    @Test func migrationsRunOnceFromTheStoredVersion() throws {
        try withDataDirectory { dir in
            let table = TableDefinition<Tenant>("tenants", primaryKey: { Key(.string($0.domain)) })
            let v1 = Schema(name: "migrating", version: 1)
            do {
                // Closed at the end of this scope, before the upgrade reopens it.
                let first = try LogicalDatabase.open(schema: v1, in: dir) { db in (db, try db.table(table)) }
                try first.0.environment.write { txn in try first.1.insert(Tenant(domain: "a.com"), in: &txn) }
                #expect(try first.0.storedVersion() == 1)
            }

            // Version 2 marks every tenant active; version 3 is a no-op step.
            let v3 = Schema(name: "migrating", version: 3, migrations: [
                .init(version: 2) { txn, db in
                    let tenants = try db.table(table, in: &txn)
                    for tenant in try tenants.list(pageSize: Int.max, in: txn).items {
                        var updated = tenant
                        updated.status = .active
                        try tenants.put(updated, in: &txn)
                    }
                },
                .init(version: 3) { _, _ in },
            ])
            let second = try LogicalDatabase.open(schema: v3, in: dir) { db in (db, try db.table(table)) }
            #expect(try second.0.storedVersion() == 3)
            let status = try second.0.environment.read { try second.1.get(Key(.string("a.com")), in: $0)?.status }
            #expect(status == .active)
        }
    }

    @Test func databaseFilesAreTheOwnersOnly() throws {
        try withDataDirectory { dir in
            _ = try UserDatabase.open(in: dir)
            func mode(_ path: String) throws -> Int {
                try #require(FileManager.default.attributesOfItem(atPath: dir + path)[.posixPermissions] as? Int)
            }
            #expect(try mode("/userdb") == 0o700)
            #expect(try mode("/userdb/data.mdb") == 0o600)
            #expect(try mode("/userdb/lock.mdb") == 0o600)
        }
    }

    @Test func dataDirectoryProblemsAreOneClearLine() throws {
        #expect(throws: StorageError.self) { _ = try Databases.open(dataDirectory: "/nonexistent/tollgate") }
        do {
            _ = try Databases.open(dataDirectory: "/nonexistent/tollgate")
        } catch {
            let text = "\(error)"
            #expect(text.contains("/nonexistent/tollgate") && text.contains("mkdir -p") && !text.contains("\n"))
        }
        try withDataDirectory { dir in
            let file = dir + "/not-a-directory"
            _ = FileManager.default.createFile(atPath: file, contents: Data())
            do {
                _ = try Databases.open(dataDirectory: file)
                Issue.record("opened a regular file as a data directory")
            } catch {
                #expect("\(error)".contains("is not a directory"))
            }
        }
    }

    @Test func allFiveDatabasesOpenAsSeparateEnvironments() throws {
        try withDataDirectory { dir in
            let databases = try Databases.open(dataDirectory: dir)
            #expect(databases.opened == LogicalDatabaseName.allCases)
            for name in LogicalDatabaseName.allCases {
                #expect(FileManager.default.fileExists(atPath: "\(dir)/\(name.rawValue)/data.mdb"))
            }
            let some = try withDataDirectory { other in try Databases.open(dataDirectory: other, only: [.mbstoredb]).opened }
            #expect(some == [.mbstoredb])
        }
    }
}

@Suite struct SecretTests {
    @Test func hashesVerifyOnlyTheirSecret() throws {
        for settings in [SecretHasher.Settings.testing, .pbkdf2SHA256(iterations: 1000)] {
            let hasher = SecretHasher(settings: settings)
            let stored = try hasher.hash("correct horse battery staple")
            #expect(try hasher.verify("correct horse battery staple", against: stored))
            #expect(try !hasher.verify("correct horse battery stapl", against: stored))
            #expect(try !hasher.verify("", against: stored))
            #expect(try hasher.hash("same") != hasher.hash("same"), "salted")
            #expect(!hasher.needsRehash(stored))
        }
        let weak = try SecretHasher(settings: .testing).hash("pw")
        #expect(SecretHasher(settings: .standard).needsRehash(weak))
        var unknown = weak
        unknown.algorithm = .unrecognized(9)
        #expect(try !SecretHasher(settings: .testing).verify("pw", against: unknown))
    }

    @Test func noSecretIsStoredInTheClear() throws {
        try withDataDirectory { dir in
            let hasher = SecretHasher(settings: .testing)
            let databases = try Databases.open(dataDirectory: dir)
            let users = try #require(databases.userdb), apimgt = try #require(databases.apimgtdb)
            let password = "Hunter2-Correct-Horse-Battery-Staple"
            let clientSecret = "cs_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
            let session = try SecretHasher.newToken()
            let (access, accessID) = try SecretHasher.newOpaqueToken(at: 1_795_000_000_000)
            let (refresh, refreshID) = try SecretHasher.newOpaqueToken(at: 1_795_000_000_001)
            try users.database.environment.write { txn in
                try users.users.insert(User(tenantDomain: "carbon.super", username: "visible-username-marker", passwordHash: try hasher.hash(password)), in: &txn)
                try users.sessions.insert(Session(tokenHash: SecretHasher.tokenHash(session), tenantDomain: "carbon.super", username: "visible-username-marker"), in: &txn)
            }
            try apimgt.database.environment.write { txn in
                try apimgt.clients.insert(OAuthClient(consumerKey: "visible-consumer-key", consumerSecretHash: try hasher.hash(clientSecret)), in: &txn)
                try apimgt.tokens.insert(OAuthToken(tokenHash: SecretHasher.tokenHash(access), kind: .access, consumerKey: "visible-consumer-key", tokenId: accessID), in: &txn)
                try apimgt.tokens.insert(OAuthToken(tokenHash: SecretHasher.tokenHash(refresh), kind: .refresh, consumerKey: "visible-consumer-key", tokenId: refreshID), in: &txn)
            }
            try users.database.environment.sync()
            try apimgt.database.environment.sync()
            let bytes = try allDatabaseBytes(under: dir)
            // The scan sees what is stored: identifiers are there…
            #expect(bytes.contains(subsequence: Array("visible-username-marker".utf8)))
            #expect(bytes.contains(subsequence: Array("visible-consumer-key".utf8)))
            #expect(bytes.contains(subsequence: SecretHasher.tokenHash(access)))
            // …secrets are not.
            for secret in [password, clientSecret, session, access, refresh] {
                #expect(!bytes.contains(subsequence: Array(secret.utf8)), "a secret is stored in the clear")
            }
            // And what is stored still verifies.
            let stored = try #require(try users.user("visible-username-marker", tenant: "carbon.super")?.passwordHash)
            #expect(try hasher.verify(password, against: stored))
            #expect(try apimgt.token(id: accessID)?.tokenHash == SecretHasher.tokenHash(access))
        }
    }
}
