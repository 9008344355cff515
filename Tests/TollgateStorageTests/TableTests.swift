import Foundation
import LMDBKit
import Testing
import TollgateProto
import TollgateStorage

func api(_ id: String, name: String, version: String = "1.0", context: String? = nil, tenant: String = "carbon.super",
         provider: String = "admin", tags: [String] = [], state: LifecycleState = .created) -> Api {
    Api(id: id, tenantDomain: tenant, provider: provider, name: name, version: version,
        context: context ?? "/" + name.lowercased(), tags: tags, lifecycleState: state)
}

@Suite struct TableTests {
    @Test func indexesFollowUpdatesAndDeletes() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            try db.database.environment.write { txn in
                try db.apis.insert(api("1", name: "Pets", tags: ["animals", "shop"]), in: &txn)
                try db.apis.insert(api("2", name: "Cars", tags: ["shop"]), in: &txn)
            }
            #expect(try db.api(name: "pets", version: "1.0", tenant: "carbon.super")?.id == "1", "names compare case-insensitively")
            #expect(try db.apis(taggedWith: "shop", tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["1", "2"])

            // Rename, retag and move the context of API 1.
            var renamed = try #require(try db.api(id: "1"))
            renamed.name = "Animals"
            renamed.context = "/animals"
            renamed.tags = ["zoo"]
            renamed.lifecycleState = .published
            try db.database.environment.write { txn in _ = try db.apis.put(renamed, in: &txn) }

            #expect(try db.api(name: "Pets", version: "1.0", tenant: "carbon.super") == nil)
            #expect(try db.api(context: "/pets", version: "1.0", tenant: "carbon.super") == nil)
            #expect(try db.api(name: "Animals", version: "1.0", tenant: "carbon.super") == renamed)
            #expect(try db.api(context: "/animals", version: "1.0", tenant: "carbon.super") == renamed)
            #expect(try db.apis(taggedWith: "shop", tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["2"])
            #expect(try db.apis(taggedWith: "zoo", tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["1"])
            #expect(try db.apis(in: .published, tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["1"])
            #expect(try db.apis(in: .created, tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["2"])

            try db.database.environment.write { txn in _ = try db.apis.delete(Key(.string("1")), in: &txn) }
            #expect(try db.api(id: "1") == nil)
            #expect(try db.api(context: "/animals", version: "1.0", tenant: "carbon.super") == nil)
            #expect(try db.apis(taggedWith: "zoo", tenant: "carbon.super", pageSize: 10).items.isEmpty)
            #expect(try db.apis(provider: "admin", tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["2"])
            #expect(try db.apis(in: .published, tenant: "carbon.super", pageSize: 10).items.isEmpty)
        }
    }

    @Test func uniqueIndexesRefuseASecondHolderAndLeaveNothingBehind() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            try db.database.environment.write { txn in try db.apis.insert(api("1", name: "Pets"), in: &txn) }
            // Same name and version, different context: refused by the name index.
            #expect(throws: StorageError.uniqueConflict(table: "apis", index: "by_name_version")) {
                try db.database.environment.write { txn in try db.apis.insert(api("2", name: "PETS", context: "/other"), in: &txn) }
            }
            // Same context and version under another name: refused by the context index.
            #expect(throws: StorageError.uniqueConflict(table: "apis", index: "by_context_version")) {
                try db.database.environment.write { txn in try db.apis.insert(api("3", name: "Other", context: "/pets"), in: &txn) }
            }
            #expect(throws: StorageError.alreadyExists(table: "apis")) {
                try db.database.environment.write { txn in try db.apis.insert(api("1", name: "New"), in: &txn) }
            }
            // The failed transactions left no record or index entry.
            #expect(try db.api(id: "2") == nil && db.api(id: "3") == nil)
            #expect(try db.apis(tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["1"])
            // Another tenant may reuse both name and context.
            try db.database.environment.write { txn in try db.apis.insert(api("4", name: "Pets", tenant: "wso2.com"), in: &txn) }
            #expect(try db.api(name: "Pets", version: "1.0", tenant: "wso2.com")?.id == "4")
            // A new version of the same API is a different key.
            try db.database.environment.write { txn in try db.apis.insert(api("5", name: "Pets", version: "2.0"), in: &txn) }
            #expect(try db.apis(tenant: "carbon.super", pageSize: 10).items.map(\.id) == ["1", "5"])
        }
    }

    @Test func pagesCoverEveryRecordOnceInOrder() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            let names = (0..<25).map { String(format: "api-%02d", $0) }
            try db.database.environment.write { txn in
                for (i, name) in names.shuffled().enumerated() { try db.apis.insert(api("id\(i)", name: name), in: &txn) }
                try db.apis.insert(api("other", name: "api-00", tenant: "other.tenant"), in: &txn)
            }
            var seen: [String] = []
            var token: [UInt8] = []
            var pages = 0
            repeat {
                let page = try db.apis(tenant: "carbon.super", pageSize: 10, pageToken: token)
                seen += page.items.map(\.name)
                token = page.nextPageToken
                pages += 1
            } while !token.isEmpty
            #expect(pages == 3)
            #expect(seen == names)
            // A token from another listing is refused rather than misread.
            let otherToken = try db.apis(taggedWith: "x", tenant: "carbon.super", pageSize: 1).nextPageToken
            #expect(otherToken.isEmpty)
            #expect(throws: StorageError.invalidPageToken(table: "apis")) {
                _ = try db.apis(tenant: "other.tenant", pageSize: 10, pageToken: Key(.string("carbon.super")).bytes)
            }
        }
    }

    @Test func overlongKeysAreAClearError() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            #expect(throws: StorageError.keyTooLong(table: "apis", index: "by_name_version")) {
                try db.database.environment.write { txn in
                    try db.apis.insert(api("1", name: String(repeating: "n", count: 600)), in: &txn)
                }
            }
        }
    }

    @Test func corruptRecordsAreReportedWithTheTable() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            let env = db.database.environment
            let raw = try env.openDatabase("apis")
            try env.write { txn in try txn.put([0x0A, 0x05, 0x41], forKey: Key(.string("bad")).bytes, in: raw) }
            #expect(throws: StorageError.self) { _ = try db.api(id: "bad") }
            do {
                _ = try db.api(id: "bad")
            } catch {
                #expect("\(error)".contains("apis") && "\(error)".contains("tollgate.v1.Api"))
            }
        }
    }
}
