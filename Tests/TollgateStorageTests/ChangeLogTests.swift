import LMDBKit
import Synchronization
import TestSupport
import Testing
import TollgateProto
import TollgateStorage

/// A change-log over a record type of its own (any feed can use one), with
/// the entry's `sequence` as its revision.
struct NoteLog {
    static let table = TableDefinition<OutboxEntry>("notes", primaryKey: { Key(.uint64($0.sequence)) })
    let database: LogicalDatabase
    let log: ChangeLog<OutboxEntry>

    init(path: String, retained: UInt64) throws {
        database = try LogicalDatabase.open(schema: Schema(name: "notes", version: 1), in: path) { $0 }
        log = ChangeLog(database: database, table: try database.table(Self.table), sequence: "notes", retainedChanges: retained,
                        pollInterval: .seconds(3600), revision: { $0.sequence })
    }

    @discardableResult
    func append(_ text: String) async throws -> UInt64 {
        let log = self.log
        let revision = try await database.write { txn in
            try log.append(in: &txn) { revision in OutboxEntry(sequence: revision, kind: text) }
        }
        log.committed()
        return revision
    }
}

@Suite struct ChangeLogTests {
    @Test func revisionsAreGaplessAndContinueAfterReopening() async throws {
        try await withAsyncDataDirectory { path in
            do {
                let notes = try NoteLog(path: path, retained: 100)
                for index in 1...3 { #expect(try await notes.append("n\(index)") == UInt64(index)) }
            }
            let reopened = try NoteLog(path: path, retained: 100)
            #expect(try reopened.log.currentRevision() == 3)
            #expect(try await reopened.append("n4") == 4)
            #expect(try reopened.log.changes(after: 1, limit: 10)?.map(\.kind) == ["n2", "n3", "n4"])
            #expect(try reopened.log.changes(after: 4, limit: 10) == [])
            #expect(try reopened.log.changes(after: 9, limit: 10) == nil, "a watcher ahead of the log (a restored backup) needs a snapshot")
        }
    }

    @Test func retentionKeepsTheLastChangesAndOlderWatchersNeedASnapshot() async throws {
        try await withAsyncDataDirectory { path in
            let notes = try NoteLog(path: path, retained: 5)
            for index in 1...20 { try await notes.append("n\(index)") }
            // Pruned a few per append from the front: one unbroken run, never shorter than retained.
            let kept = try notes.database.read { txn in try notes.log.table.list(prefix: Key(), pageSize: 100, in: txn).items.map(\.sequence) }
            #expect(kept.count >= 5 && kept == Array(kept.first!...20))
            #expect(try notes.log.changes(after: 15, limit: 100)?.count == 5)
            #expect(try notes.log.changes(after: 2, limit: 100) == nil)
        }
    }

    @Test func followSendsASnapshotWhenNeededThenEachChangeAsItCommits() async throws {
        try await withAsyncDataDirectory { path in
            let notes = try NoteLog(path: path, retained: 3)
            for index in 1...6 { try await notes.append("old\(index)") }
            let received = Mutex<[String]>([])
            let (seen, seenContinuation) = AsyncStream<Int>.makeStream()
            let watcher = Task {
                try await notes.log.follow(since: 1, heartbeat: .seconds(3600), snapshot: { (parts: ["snapshot@6"], revision: 6) }) { event in
                    let count = received.withLock { list -> Int in
                        switch event {
                        case .snapshot(let part): list.append(part)
                        case .change(let change): list.append(change.kind)
                        case .caughtUp(let revision): list.append("caught-up@\(revision)")
                        }
                        return list.count
                    }
                    seenContinuation.yield(count)
                }
            }
            var iterator = seen.makeAsyncIterator()
            #expect(await iterator.next() == 1)
            #expect(await iterator.next() == 2)
            try await notes.append("new7")
            #expect(await iterator.next() == 3)
            try await notes.append("new8")
            #expect(await iterator.next() == 4)
            watcher.cancel()
            // Revision 1 is older than the log keeps: a snapshot, caught up at
            // its revision, then exact deltas (no heartbeat is due in an hour).
            #expect(received.withLock { $0 } == ["snapshot@6", "caught-up@6", "new7", "new8"])
        }
    }

    /// What a watcher receives, as text, in order, with a way to wait for more.
    final class Received: Sendable {
        let events = Watched<[String]>([])

        func add(_ event: ChangeLog<OutboxEntry>.Event<String>) {
            events.update { list in
                switch event {
                case .snapshot(let part): list.append(part)
                case .change(let change): list.append(change.kind)
                case .caughtUp(let revision): list.append("caught-up@\(revision)")
                }
            }
        }
    }

    @Test func followSaysCaughtUpAfterTheBacklogAndWhenThereIsNone() async throws {
        try await withAsyncDataDirectory { path in
            let notes = try NoteLog(path: path, retained: 100)
            for index in 1...5 { try await notes.append("n\(index)") }
            // Resuming where the log ends: nothing to send, so caught up at once.
            let current = Received()
            let idle = Task {
                try await notes.log.follow(since: 5, heartbeat: .seconds(3600), snapshot: { (parts: ["unexpected snapshot"], revision: 5) }) { current.add($0) }
            }
            _ = try await current.events.wait(for: "caught up with nothing to send") { !$0.isEmpty }
            // A fence: once it has arrived, anything wrongly sent before it has too.
            try await notes.append("n6")
            let events = try await current.events.wait(for: "the fence") { $0.contains("n6") }
            #expect(events == ["caught-up@5", "n6"])
            idle.cancel()

            // Resuming with a backlog: the backlog, then caught up at its end.
            let behind = Received()
            let resumed = Task {
                try await notes.log.follow(since: 3, snapshot: { (parts: ["unexpected snapshot"], revision: 6) }) { behind.add($0) }
            }
            #expect(try await behind.events.wait(for: "the backlog and caught-up") { $0.count == 4 } == ["n4", "n5", "n6", "caught-up@6"])
            resumed.cancel()
            _ = await (idle.result, resumed.result)
        }
    }

    @Test func aQuietFollowRepeatsCaughtUpAsAHeartbeat() async throws {
        try await withAsyncDataDirectory { path in
            // The poll interval is an hour: the heartbeat alone wakes the watcher.
            let notes = try NoteLog(path: path, retained: 100)
            try await notes.append("n1")
            let received = Received()
            let watcher = Task {
                try await notes.log.follow(since: 1, heartbeat: .milliseconds(100), snapshot: { (parts: ["unexpected snapshot"], revision: 1) }) {
                    received.add($0)
                }
            }
            _ = try await received.events.wait(for: "three heartbeats") { $0.count >= 3 }
            try await notes.append("n2")
            let events = try await received.events.wait(for: "the change, then heartbeats at its revision") { $0.contains("caught-up@2") }
            watcher.cancel()
            _ = await watcher.result
            let change = try #require(events.firstIndex(of: "n2"))
            #expect(events[..<change].allSatisfy { $0 == "caught-up@1" } && change >= 3, "\(events)")
            #expect(events[(change + 1)...].allSatisfy { $0 == "caught-up@2" }, "\(events)")
        }
    }

    @Test func aWatcherTheLogOvertakesIsToldToStartOver() async throws {
        try await withAsyncDataDirectory { path in
            let notes = try NoteLog(path: path, retained: 2)
            try await notes.append("n1")
            let (blocked, release) = AsyncStream<Void>.makeStream()
            let (started, startedContinuation) = AsyncStream<Void>.makeStream()
            let watcher = Task {
                var gate = blocked.makeAsyncIterator()
                try await notes.log.follow(since: 0, snapshot: { (parts: [0], revision: 0) }) { _ in
                    // The watcher stalls on its first event while the log moves on.
                    startedContinuation.yield()
                    _ = await gate.next()
                }
            }
            var first = started.makeAsyncIterator()
            _ = await first.next()
            for index in 2...10 { try await notes.append("n\(index)") }
            release.yield()
            release.yield()
            release.finish()
            await #expect(throws: ChangeLog<OutboxEntry>.FollowError.prunedPast(1)) { try await watcher.value }
        }
    }
}
