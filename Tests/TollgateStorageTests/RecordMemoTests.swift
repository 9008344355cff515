import Foundation
import LMDBKit
import Testing
import TollgateProto
@testable import TollgateStorage

@Suite struct RecordMemoTests {
    /// A memo returns what is stored now: a rewritten record is decoded
    /// again, a deleted one is gone, and an index lookup goes through it too.
    @Test func aMemoNeverReturnsAStaleRecord() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-memo-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let db = try ApiManagerDatabase.open(in: path)
        let memo = RecordMemo<Application>(capacity: 2)
        let app = Application(id: "app-1", tenantDomain: "carbon.super", owner: "alice", name: "Mobile", throttlingPolicy: "Gold")
        try await db.database.write { txn in try db.applications.insert(app, in: &txn) }
        let read = { try db.database.read { try db.applications.get(Key(.string("app-1")), in: $0, memo: memo) } }
        #expect(try read()?.throttlingPolicy == "Gold")
        #expect(try read()?.throttlingPolicy == "Gold")
        var edited = app
        edited.throttlingPolicy = "Silver"
        let changed = edited
        try await db.database.write { txn in _ = try db.applications.put(changed, in: &txn) }
        #expect(try read()?.throttlingPolicy == "Silver")
        let byOwner = try db.database.read {
            try db.applications.get(ApiManagerDatabase.applicationsByOwnerName, Key(.string("carbon.super"), .string("alice"), .string("mobile")), in: $0, memo: memo)
        }
        #expect(byOwner?.throttlingPolicy == "Silver")
        // Past its capacity the memo replaces records, and still answers from the bytes.
        for index in 2...4 {
            try await db.database.write { txn in try db.applications.insert(Application(id: "app-\(index)", owner: "bob", name: "a\(index)"), in: &txn) }
            #expect(try db.database.read { try db.applications.get(Key(.string("app-\(index)")), in: $0, memo: memo) }?.name == "a\(index)")
        }
        try await db.database.write { txn in _ = try db.applications.delete(Key(.string("app-1")), in: &txn) }
        #expect(try read() == nil)
    }

    /// Read over and over, a working set a fifth larger than the memo is
    /// mostly found in it (a memo that started over when full would decode
    /// every record every time), and it never holds more than its capacity.
    @Test func aFullMemoKeepsMostOfALargerWorkingSet() throws {
        let memo = RecordMemo<Application>(capacity: 100)
        let encoded = try (0..<120).map { try Application(id: "app-\($0)", name: "a\($0)").serializedBytes() }
        var decodes = 0
        for _ in 0..<4 {
            decodes = 0
            for (index, bytes) in encoded.enumerated() {
                let record = try bytes.withUnsafeBytes { raw in
                    try memo.record(for: Array("key-\(index)".utf8), bytes: raw) { decodes += 1; return try Application(serializedBytes: $0) }
                }
                #expect(record.id == "app-\(index)")
            }
        }
        #expect(decodes < 80, "\(decodes) of 120 records decoded again")
        #expect(memo.count == 100)
    }
}
