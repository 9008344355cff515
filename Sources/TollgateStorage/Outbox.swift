import FoundationEssentials
public import LMDBKit
import Synchronization
public import TollgateProto

/// Makes a write that spans two LMDB environments crash-safe.
///
/// LMDB has no transaction across environments. So the first environment
/// (the *source*) records the second half of the write as an
/// ``OutboxEntry`` in the same transaction as the first half; after that
/// commits, ``deliver()`` applies pending entries to the *target*
/// environment, each in a transaction that also records the entry's sequence
/// in the target's meta table.
///
/// - An entry is applied at most once: the target remembers the highest
///   sequence it applied, in the same transaction as the application.
/// - An entry is applied at least once: a crash between the two commits
///   leaves it pending, and the next ``deliver()`` (every write calls it; the
///   node calls it when it starts) applies it.
/// - Entries are applied in sequence order, so later operations see earlier ones.
/// - Applied entries are removed from the source by later source
///   transactions (``enqueue(kind:operation:in:)`` prunes a few), so a
///   two-environment write costs two commits, as it would without the outbox.
public final class Outbox: Sendable {
    /// Applies one kind of operation to the target inside its write transaction.
    public typealias Applier = @Sendable (_ operation: [UInt8], _ txn: inout WriteTransaction) throws -> Void

    public let source: LogicalDatabase
    public let target: LogicalDatabase
    let entries: Table<OutboxEntry>
    private let appliers: [String: Applier]
    private let now: @Sendable () -> Int64
    /// The highest sequence this process knows the target applied: entries
    /// at or below it are done and may be pruned. Only a hint: the target's
    /// own record decides what is applied.
    private let appliedHint: Atomic<UInt64>

    /// The outbox's table in the source environment, one per target.
    public static func table(target: String) -> TableDefinition<OutboxEntry> {
        TableDefinition("outbox." + target, primaryKey: { Key(.uint64($0.sequence)) })
    }

    /// Entries pruned per enqueue at most, so no write pays for many.
    static let prunedPerEnqueue = 8

    /// - Parameter appliers: how to apply each kind of operation, by kind.
    public init(source: LogicalDatabase, target: LogicalDatabase, appliers: [String: Applier], now: (@Sendable () -> Int64)? = nil) throws {
        self.source = source
        self.target = target
        self.entries = try source.table(Self.table(target: target.schema.name))
        self.appliers = appliers
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
        let appliedKey = "outbox.applied." + source.schema.name
        self.appliedHint = Atomic(try target.read { txn in Self.decodeSequence(try target.metaValue(appliedKey, in: txn)) })
    }

    private var sequenceName: String { "outbox." + target.schema.name }
    /// The target's record of what it applied from this source.
    private var appliedKey: String { "outbox.applied." + source.schema.name }

    /// Records `operation`, of a kind an applier was registered for, in the
    /// caller's write transaction on the source environment; removes a few
    /// entries already applied while it is there.
    public func enqueue(kind: String, operation: [UInt8], in txn: inout WriteTransaction) throws {
        guard appliers[kind] != nil else { throw OutboxError.unknownKind(kind) }
        let applied = appliedHint.load(ordering: .relaxed)
        if applied > 0 {
            for entry in try entries.list(prefix: Key(), pageSize: Self.prunedPerEnqueue, in: txn).items where entry.sequence <= applied {
                _ = try entries.delete(entry, in: &txn)
            }
        }
        let sequence = try source.nextSequence(sequenceName, in: &txn)
        try entries.insert(OutboxEntry(sequence: sequence, recordedAtUnixMs: now(), kind: kind, operation: operation), in: &txn)
    }

    /// Entries recorded and not yet applied to the target.
    public func pendingCount() throws -> Int {
        let applied = try target.read { txn in Self.decodeSequence(try target.metaValue(appliedKey, in: txn)) }
        return try source.read { txn in
            try entries.list(prefix: Key(), pageSize: Int.max, pageToken: Key(.uint64(applied + 1)).bytes, in: txn).items.count
        }
    }

    /// Entries kept in the source, applied or not (pruning removes the applied).
    public func storedCount() throws -> Int {
        try source.read { txn in try entries.count(in: txn) }
    }

    /// Applies every pending entry to the target. Returns how many were newly
    /// applied. Concurrent deliveries, in this process or another, are safe:
    /// the target's applied-sequence check inside its write transaction lets
    /// only one apply each entry.
    ///
    /// Throws the first failure (a full target disk, say); the entries left
    /// stay pending for the next delivery.
    @discardableResult
    public func deliver() async throws -> Int {
        var applied = 0
        while true {
            let entries = self.entries
            let after = appliedHint.load(ordering: .relaxed)
            let pending = try source.read { txn in
                try entries.list(prefix: Key(), pageSize: 64, pageToken: Key(.uint64(after + 1)).bytes, in: txn).items
            }
            guard !pending.isEmpty else { return applied }
            let appliers = self.appliers, appliedKey = self.appliedKey, target = self.target
            let (count, done) = try await target.write { txn -> (Int, UInt64) in
                var done = Self.decodeSequence(try target.metaValue(appliedKey, in: txn))
                var count = 0
                for entry in pending where entry.sequence > done {
                    guard let apply = appliers[entry.kind] else { throw OutboxError.unknownKind(entry.kind) }
                    try apply(entry.operation, &txn)
                    done = entry.sequence
                    count += 1
                }
                // A delivery that found everything applied (another got there
                // first) changes nothing, so its commit costs no disk write.
                if count > 0 { try target.setMetaValue(Self.encodeSequence(done), for: appliedKey, in: &txn) }
                return (count, done)
            }
            applied += count
            _ = appliedHint.max(done, ordering: .relaxed)
        }
    }

    /// Removes every applied entry from the source in one transaction, for
    /// an outbox that saw no new entries to prune them along the way.
    /// Returns how many went.
    @discardableResult
    public func compact() async throws -> Int {
        let applied = appliedHint.load(ordering: .relaxed)
        let entries = self.entries
        guard applied > 0, try storedCount() > pendingCount() else { return 0 }
        return try await source.write { txn in
            var removed = 0
            for entry in try entries.list(prefix: Key(), pageSize: 1024, in: txn).items where entry.sequence <= applied {
                _ = try entries.delete(entry, in: &txn)
                removed += 1
            }
            return removed
        }
    }

    static func encodeSequence(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.bigEndian, Array.init) }

    static func decodeSequence(_ bytes: [UInt8]?) -> UInt64 { (bytes ?? []).prefix(8).reduce(0) { $0 << 8 | UInt64($1) } }
}

public enum OutboxError: Error, Hashable, Sendable, CustomStringConvertible {
    /// No applier is registered for an entry's kind (written by a newer build?).
    case unknownKind(String)

    public var description: String {
        switch self {
        case .unknownKind(let kind): "the outbox holds an operation of kind \(kind), which this build cannot apply"
        }
    }
}
