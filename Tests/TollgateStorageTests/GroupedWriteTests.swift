import Foundation
import LMDBKit
import Testing
import TollgateProto
import TollgateStorage

@Suite struct GroupedWriteTests {
    struct Refused: Error {}

    /// Writes queued together share a transaction, each in a nested one: a
    /// write that throws leaves nothing behind and its caller gets the error,
    /// while the writes beside it commit.
    @Test func aFailingWriteInAGroupIsUndoneAloneAndTheOthersCommit() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-grouped-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let db = try ApiManagerDatabase.open(in: path)
        let outcomes = try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
            for index in 0..<200 {
                group.addTask {
                    do {
                        try await db.database.writeGrouped { txn in
                            try db.applications.insert(Application(id: "app-\(index)", owner: "o", name: "n\(index)"), in: &txn)
                            // Every third write fails after writing: its insert must vanish with it.
                            if index % 3 == 0 { throw Refused() }
                        }
                        return (index, true)
                    } catch is Refused {
                        return (index, false)
                    }
                }
            }
            return try await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
        }
        #expect(outcomes.count == 200)
        for index in 0..<200 {
            let stored = try db.application(id: "app-\(index)") != nil
            #expect(outcomes[index] == (index % 3 != 0) && stored == (index % 3 != 0), "write \(index)")
        }
        // A unique-index conflict inside a group is that write's error alone.
        let conflicts = await withTaskGroup(of: Bool.self) { group in
            for id in ["dup-1", "dup-2"] {
                group.addTask {
                    (try? await db.database.writeGrouped { txn in try db.applications.insert(Application(id: id, owner: "o", name: "same"), in: &txn) }) != nil
                }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(conflicts.filter { $0 }.count == 1)
        #expect(try db.applications(owner: "o", tenant: "").filter { $0.name == "same" }.count == 1)
    }
}

