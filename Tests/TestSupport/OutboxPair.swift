public import Foundation
public import LMDBKit
public import TollgateStorage

/// Two environments joined by an outbox, with an operation that is *not*
/// idempotent (it adds one to a counter), so applying an entry twice shows.
/// Used by the storage probe and the outbox crash tests, which run it in
/// separate processes over the same directories.
public struct OutboxPair: Sendable {
    public static let kind = "probe.count"
    public let source: LogicalDatabase
    public let target: LogicalDatabase
    public let marks: Database
    public let counts: Database
    public let outbox: Outbox

    public init(dataDirectory: String) throws {
        source = try LogicalDatabase.open(schema: Schema(name: "outsource", version: 1), in: dataDirectory) { $0 }
        target = try LogicalDatabase.open(schema: Schema(name: "outtarget", version: 1), in: dataDirectory) { $0 }
        marks = try source.environment.openDatabase("marks")
        let counts = try target.environment.openDatabase("counts")
        self.counts = counts
        outbox = try Outbox(source: source, target: target, appliers: [Self.kind: { key, txn in
            let current = try txn.get(key, in: counts).map { Int($0.first ?? 0) } ?? 0
            try txn.put([UInt8(current + 1)], forKey: key, in: counts)
        }])
    }

    public static func key(_ prefix: String, _ n: Int) -> [UInt8] { Array("\(prefix)-\(n)".utf8) }
    public static func key(_ n: Int) -> [UInt8] { key("k", n) }

    /// Every mark committed in the source, and every counter in the target.
    public func contents() throws -> (marks: Set<[UInt8]>, counts: [[UInt8]: Int]) {
        let marked = try source.read { txn in
            var keys = Set<[UInt8]>()
            try txn.scan(marks) { key, _ in keys.insert(Array(key)); return true }
            return keys
        }
        let counted = try target.read { txn in
            var values: [[UInt8]: Int] = [:]
            try txn.scan(counts) { key, value in values[Array(key)] = Int(value.first ?? 0); return true }
            return values
        }
        return (marked, counted)
    }
}

/// `tollgate-storage-probe`, which SwiftPM builds beside the test bundle.
public func storageProbeExecutable() throws -> URL {
    let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    let url = directory.appendingPathComponent("tollgate-storage-probe")
    guard FileManager.default.isExecutableFile(atPath: url.path) else {
        throw StorageProbeMissing(description: "tollgate-storage-probe not found in \(directory.path); build it with swift build --build-tests")
    }
    return url
}

public struct StorageProbeMissing: Error, CustomStringConvertible {
    public let description: String
}
