import Foundation
import LMDBKit
import Testing

/// A fresh directory under the system temp dir, removed when the test ends.
func withTemporaryDirectory<Result>(_ body: (String) throws -> Result) throws -> Result {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("lmdbkit-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

func bytes(_ string: String) -> [UInt8] { Array(string.utf8) }

@Suite struct EnvironmentTests {
    @Test func commitMakesWritesVisibleAndAbortDiscardsThem() throws {
        try withTemporaryDirectory { path in
            let env = try Environment(path: path)
            let db = try env.openDatabase("things")
            try env.write { txn in try txn.put(bytes("one"), forKey: bytes("k1"), in: db) }
            struct Boom: Error {}
            #expect(throws: Boom.self) {
                try env.write { txn in
                    try txn.put(bytes("two"), forKey: bytes("k2"), in: db)
                    throw Boom()
                }
            }
            // #expect cannot capture a noncopyable transaction: read first, then check.
            let (first, second, count) = try env.read { txn in
                (try txn.get(bytes("k1"), in: db), try txn.get(bytes("k2"), in: db), try txn.count(db))
            }
            #expect(first == bytes("one"))
            #expect(second == nil)
            #expect(count == 1)
        }
    }

    @Test func insertRefusesAnExistingKeyAndDeleteReportsPresence() throws {
        try withTemporaryDirectory { path in
            let env = try Environment(path: path)
            let db = try env.openDatabase("things")
            try env.write { txn in try txn.insert(bytes("a"), forKey: bytes("k"), in: db) }
            #expect(throws: LMDBError.keyExists) {
                try env.write { txn in try txn.insert(bytes("b"), forKey: bytes("k"), in: db) }
            }
            let removed = try env.write { txn in (try txn.delete(bytes("k"), in: db), try txn.delete(bytes("k"), in: db)) }
            #expect(removed == (true, false))
        }
    }

    @Test func cursorScansInKeyOrderAndByPrefix() throws {
        try withTemporaryDirectory { path in
            let env = try Environment(path: path)
            let db = try env.openDatabase("ordered")
            let keys = (0..<200).map { String(format: "%03d", $0) }.shuffled()
            try env.write { txn in
                for key in keys { try txn.put(bytes("v" + key), forKey: bytes(key), in: db) }
            }
            var seen: [String] = []
            try env.read { txn in
                try txn.scan(db) { key, value in
                    seen.append(String(decoding: key, as: UTF8.self))
                    let expected = bytes("v") + Array(key)
                    #expect(Array(value) == expected)
                    return true
                }
            }
            #expect(seen == keys.sorted())

            var prefixed: [String] = []
            try env.read { txn in
                try txn.scan(db, prefix: bytes("15")) { key, _ in
                    prefixed.append(String(decoding: key, as: UTF8.self))
                    return true
                }
            }
            #expect(prefixed == (150...159).map { String($0) })

            let lastTwo = try env.read { txn in
                try txn.withCursor(db) { cursor -> [String] in
                    var out: [String] = []
                    var more = try cursor.last()
                    while more && out.count < 2 {
                        out.append(String(decoding: cursor.currentKey, as: UTF8.self))
                        more = try cursor.previous()
                    }
                    return out
                }
            }
            #expect(lastTwo == ["199", "198"])
        }
    }

    @Test func aReadSnapshotDoesNotSeeLaterCommits() throws {
        try withTemporaryDirectory { path in
            let env = try Environment(path: path)
            let db = try env.openDatabase("snap")
            try env.write { txn in try txn.put(bytes("1"), forKey: bytes("k"), in: db) }
            let seenInSnapshot = try env.read { txn in
                // A writer on another thread commits while this snapshot is open.
                let done = DispatchSemaphore(value: 0)
                Thread.detachNewThread {
                    try? env.write { w in try w.put(bytes("2"), forKey: bytes("k"), in: db) }
                    done.signal()
                }
                done.wait()
                return try txn.get(bytes("k"), in: db)
            }
            #expect(seenInSnapshot == bytes("1"))
            #expect(try env.read { try $0.get(bytes("k"), in: db) } == bytes("2"))
        }
    }

    @Test func theMapGrowsWhenAWriteFillsIt() throws {
        try withTemporaryDirectory { path in
            let env = try Environment(path: path, options: .init(mapSize: 64 * 1024, maxMapSize: 1 << 30))
            let db = try env.openDatabase("bulk")
            let initial = env.mapSize
            let value = [UInt8](repeating: 0xAB, count: 1000)
            // Many commits, and one transaction larger than several doublings.
            for batch in 0..<20 {
                try env.write { txn in
                    for i in 0..<50 { try txn.put(value, forKey: bytes("\(batch)-\(i)"), in: db) }
                }
            }
            try env.write { txn in
                for i in 0..<3000 { try txn.put(value, forKey: bytes("big-\(i)"), in: db) }
            }
            #expect(env.mapSize > initial)
            #expect(try env.count(db) == 20 * 50 + 3000)
        }
    }

    @Test func theMapStopsGrowingAtItsMaximum() throws {
        try withTemporaryDirectory { path in
            let env = try Environment(path: path, options: .init(mapSize: 64 * 1024, maxMapSize: 256 * 1024))
            let db = try env.openDatabase("bulk")
            let value = [UInt8](repeating: 1, count: 4000)
            #expect(throws: LMDBError.mapFull) {
                try env.write { txn in
                    for i in 0..<1000 { try txn.put(value, forKey: bytes("k\(i)"), in: db) }
                }
            }
            #expect(try env.count(db) == 0)
        }
    }

    @Test func concurrentWritersAndReadersInOneProcessLoseNothing() async throws {
        try await withTemporaryDirectoryAsync { path in
            let env = try Environment(path: path, options: .init(mapSize: 128 * 1024))
            let db = try env.openDatabase("shared")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<4 {
                    group.addTask {
                        for i in 0..<200 {
                            try env.write { txn in try txn.put(bytes("\(i)"), forKey: bytes("w\(writer)-\(i)"), in: db) }
                        }
                    }
                }
                group.addTask {
                    for _ in 0..<200 { _ = try env.read { try $0.count(db) } }
                }
                try await group.waitForAll()
            }
            #expect(try env.count(db) == 800)
        }
    }

    @Test func missingOrDuplicateDirectoriesAreClearErrors() throws {
        #expect(throws: EnvironmentError.directoryMissing(path: "/nonexistent/tollgate-test")) {
            _ = try Environment(path: "/nonexistent/tollgate-test")
        }
        try withTemporaryDirectory { path in
            let env = try Environment(path: path)
            #expect(throws: EnvironmentError.self) { _ = try Environment(path: path) }
            withExtendedLifetime(env) {}
        }
    }

    @Test func errorsDescribeThemselves() {
        #expect(LMDBError.mapFull.description.contains("MDB_MAP_FULL"))
        #expect(EnvironmentError.directoryMissing(path: "/x").description.contains("mkdir -p /x"))
    }
}

func withTemporaryDirectoryAsync<Result>(_ body: (String) async throws -> Result) async throws -> Result {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("lmdbkit-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}
