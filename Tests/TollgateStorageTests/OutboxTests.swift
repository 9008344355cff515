import Foundation
import LMDBKit
import Synchronization
import TestSupport
import Testing
import TollgateStorage

/// An async data directory, removed when the test ends (also when it throws).
func withAsyncDataDirectory(_ body: (String) async throws -> Void) async throws {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-storage-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    do {
        try await body(path)
    } catch {
        try? FileManager.default.removeItem(atPath: path)
        throw error
    }
    try? FileManager.default.removeItem(atPath: path)
}

/// A running `tollgate-storage-probe outbox`, its "ack" and "delivered"
/// lines read as they arrive on a thread of their own (`PipeReader`, which
/// sees the end of the output reliably). Waits are on those lines, never on time.
final class OutboxProbe: Sendable {
    let process: Process
    private let reader: PipeReader

    init(dataDirectory: String, prefix: String = "k", count: Int, crash: Bool) throws {
        process = Process()
        process.executableURL = try storageProbeExecutable()
        process.arguments = ["outbox", dataDirectory, prefix, String(count)] + (crash ? ["crash"] : [])
        let pipe = Pipe()
        process.standardOutput = pipe
        reader = PipeReader(pipe)
        try process.run()
    }

    /// The highest round whose source commit the probe acknowledged.
    var lastAcknowledged: Int {
        reader.text.split(separator: "\n").compactMap { $0.hasPrefix("ack ") ? Int($0.dropFirst(4)) : nil }.max() ?? -1
    }

    /// Waits until the probe prints `line` (or its output ends).
    func waitFor(_ line: String) async -> Bool {
        let seen = try? await reader.output.wait(for: "\"\(line)\" from the probe", timeout: .seconds(60)) {
            ("\n" + $0.text).contains("\n" + line + "\n") || $0.ended
        }
        return seen.map { ("\n" + $0.text).contains("\n" + line + "\n") } ?? false
    }

    func waitForExit() async throws {
        _ = try await reader.end()
        process.waitUntilExit()
    }
}

@Suite(.serialized) struct OutboxTests {
    @Test func anEntryIsAppliedOnceHoweverOftenItIsDelivered() async throws {
        try await withAsyncDataDirectory { path in
            let pair = try OutboxPair(dataDirectory: path)
            for n in 0..<3 {
                try await pair.source.write { [pair] txn in
                    try txn.put([1], forKey: OutboxPair.key(n), in: pair.marks)
                    try pair.outbox.enqueue(kind: OutboxPair.kind, operation: OutboxPair.key(n), in: &txn)
                }
            }
            #expect(try pair.outbox.pendingCount() == 3)
            #expect(try await pair.outbox.deliver() == 3)
            #expect(try await pair.outbox.deliver() == 0)
            #expect(try pair.outbox.pendingCount() == 0)
            let (marks, counts) = try pair.contents()
            #expect(marks.count == 3)
            #expect(counts == [OutboxPair.key(0): 1, OutboxPair.key(1): 1, OutboxPair.key(2): 1])
        }
    }

    @Test func appliedEntriesArePrunedByLaterWritesWithoutACommitOfTheirOwn() async throws {
        try await withAsyncDataDirectory { path in
            let pair = try OutboxPair(dataDirectory: path)
            for n in 0..<40 {
                try await pair.source.write { [pair] txn in try pair.outbox.enqueue(kind: OutboxPair.kind, operation: OutboxPair.key(n), in: &txn) }
                try await pair.outbox.deliver()
                // Only the newest entry waits for a later write to prune it.
                #expect(try pair.outbox.storedCount() <= 2)
                #expect(try pair.outbox.pendingCount() == 0)
            }
            #expect(try await pair.outbox.compact() == 1)
            #expect(try pair.outbox.storedCount() == 0)
            #expect(try pair.contents().counts.count == 40)
        }
    }

    @Test func anEntryAppliedButNotRemovedIsNotAppliedAgain() async throws {
        // A crash after the target's commit and before the outbox cleanup:
        // the entry is still pending, but the target remembers it applied it.
        try await withAsyncDataDirectory { path in
            let pair = try OutboxPair(dataDirectory: path)
            try await pair.source.write { [pair] txn in try pair.outbox.enqueue(kind: OutboxPair.kind, operation: OutboxPair.key(7), in: &txn) }
            try await pair.target.write { [pair] txn in
                try txn.put([1], forKey: OutboxPair.key(7), in: pair.counts)
                try pair.target.setMetaValue(withUnsafeBytes(of: UInt64(1).bigEndian, Array.init), for: "outbox.applied.outsource", in: &txn)
            }
            #expect(try pair.outbox.storedCount() == 1, "still in the outbox")
            #expect(try pair.outbox.pendingCount() == 0, "but the target says it is applied")
            #expect(try await pair.outbox.deliver() == 0)
            #expect(try pair.contents().counts == [OutboxPair.key(7): 1])
            #expect(try await pair.outbox.compact() == 1)
        }
    }

    @Test func aFailedApplicationStaysPendingAndIsRetried() async throws {
        try await withAsyncDataDirectory { path in
            let source = try LogicalDatabase.open(schema: Schema(name: "src", version: 1), in: path) { $0 }
            let target = try LogicalDatabase.open(schema: Schema(name: "dst", version: 1), in: path) { $0 }
            let applied = try target.environment.openDatabase("applied")
            let failNext = Atomic(true)
            struct DiskFull: Error {}
            let outbox = try Outbox(source: source, target: target, appliers: ["step": { operation, txn in
                if failNext.exchange(false, ordering: .relaxed) { throw DiskFull() }
                try txn.put([1], forKey: operation, in: applied)
            }])
            for key in ["a", "b"] {
                try await source.write { txn in try outbox.enqueue(kind: "step", operation: Array(key.utf8), in: &txn) }
            }
            await #expect(throws: DiskFull.self) { try await outbox.deliver() }
            #expect(try outbox.pendingCount() == 2, "nothing is lost when the target refuses")
            #expect(try await outbox.deliver() == 2)
            #expect(try target.read { txn in try txn.count(applied) } == 2)
        }
    }

    @Test func anUnknownKindIsRefusedOnEnqueueAndKeptPendingOnDelivery() async throws {
        try await withAsyncDataDirectory { path in
            let source = try LogicalDatabase.open(schema: Schema(name: "src", version: 1), in: path) { $0 }
            let target = try LogicalDatabase.open(schema: Schema(name: "dst", version: 1), in: path) { $0 }
            let newer = try Outbox(source: source, target: target, appliers: ["newer": { _, _ in }, "known": { _, _ in }])
            await #expect(throws: OutboxError.unknownKind("other")) {
                try await source.write { txn in try newer.enqueue(kind: "other", operation: [], in: &txn) }
            }
            // A newer build wrote an entry this build has no applier for.
            try await source.write { txn in try newer.enqueue(kind: "newer", operation: [], in: &txn) }
            let older = try Outbox(source: source, target: target, appliers: ["known": { _, _ in }])
            await #expect(throws: OutboxError.unknownKind("newer")) { try await older.deliver() }
            #expect(try older.pendingCount() == 1)
        }
    }

    @Test func aProcessDyingBetweenTheTwoCommitsIsRepairedOnRestart() async throws {
        try await withAsyncDataDirectory { path in
            let probe = try OutboxProbe(dataDirectory: path, count: 5, crash: true)
            try await probe.waitForExit()
            #expect(probe.process.terminationStatus == 9, "the probe exits between the source commit and the delivery")
            #expect(probe.lastAcknowledged == 0)

            let pair = try OutboxPair(dataDirectory: path)
            let before = try pair.contents()
            #expect(before.marks == [OutboxPair.key(0)])
            #expect(before.counts.isEmpty, "the target's half was never written")
            #expect(try pair.outbox.pendingCount() == 1)
            #expect(try await pair.outbox.deliver() == 1)
            #expect(try pair.contents().counts == [OutboxPair.key(0): 1])
            #expect(try await pair.outbox.deliver() == 0)
        }
    }

    @Test func killedAtRandomPointsEveryCommittedEntryIsAppliedExactlyOnce() async throws {
        try await withAsyncDataDirectory { path in
            var generator = SystemRandomNumberGenerator()
            for round in 0..<6 {
                let probe = try OutboxProbe(dataDirectory: path, prefix: "r\(round)", count: 1_000_000, crash: false)
                // Kill once the probe is some way into its work; where exactly
                // (after a source commit, mid-delivery) is up to the scheduler.
                let target = Int.random(in: 0...40, using: &generator)
                let reached = await probe.waitFor("ack \(target)")
                #expect(reached, "round \(round): the probe stopped before round \(target)")
                kill(probe.process.processIdentifier, SIGKILL)
                try await probe.waitForExit()
                #expect(probe.process.terminationReason == .uncaughtSignal)

                // "Restart": the next opening delivers what is pending.
                let pair = try OutboxPair(dataDirectory: path)
                try await pair.outbox.deliver()
                let (marks, counts) = try pair.contents()
                #expect(Set(counts.keys) == marks, "round \(round): every committed mark, and only those, was applied")
                #expect(counts.values.allSatisfy { $0 == 1 }, "round \(round): an entry was applied twice")
                #expect(try pair.outbox.pendingCount() == 0)
            }
        }
    }
}
