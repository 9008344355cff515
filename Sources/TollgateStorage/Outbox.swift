import FoundationEssentials
public import LMDBKit
public import TollgateProto

/// Makes a write that spans two LMDB environments crash-safe.
///
/// LMDB has no transaction across environments. So the first environment
/// (the *source*) records the second half of the write as an
/// ``OutboxEntry`` in the same transaction as the first half; after that
/// commits, ``deliver()`` applies pending entries to the *target*
/// environment, each in a transaction that also records the entry's sequence
/// in the target's meta table, and only then removes them from the outbox.
///
/// - An entry is applied at most once: the target remembers the highest
///   sequence it applied, in the same transaction as the application.
/// - An entry is applied at least once: a crash between the two commits
///   leaves it in the outbox, and the next ``deliver()`` (every write calls
///   it; the node calls it when it starts) applies it.
/// - Entries are applied in sequence order, so later operations see earlier ones.
public final class Outbox: Sendable {
    /// Applies one kind of operation to the target inside its write transaction.
    public typealias Applier = @Sendable (_ operation: [UInt8], _ txn: inout WriteTransaction) throws -> Void

    public let source: LogicalDatabase
    public let target: LogicalDatabase
    let entries: Table<OutboxEntry>
    private let appliers: [String: Applier]
    private let now: @Sendable () -> Int64

    /// The outbox's table in the source environment, one per target.
    public static func table(target: String) -> TableDefinition<OutboxEntry> {
        TableDefinition("outbox." + target, primaryKey: { Key(.uint64($0.sequence)) })
    }

    /// - Parameter appliers: how to apply each kind of operation, by kind.
    public init(source: LogicalDatabase, target: LogicalDatabase, appliers: [String: Applier], now: (@Sendable () -> Int64)? = nil) throws {
        self.source = source
        self.target = target
        self.entries = try source.table(Self.table(target: target.schema.name))
        self.appliers = appliers
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    private var sequenceName: String { "outbox." + target.schema.name }
    /// The target's record of what it applied from this source.
    private var appliedKey: String { "outbox.applied." + source.schema.name }

    /// Records `operation`, of a kind an applier was registered for, in the
    /// caller's write transaction on the source environment.
    public func enqueue(kind: String, operation: [UInt8], in txn: inout WriteTransaction) throws {
        guard appliers[kind] != nil else { throw OutboxError.unknownKind(kind) }
        let sequence = try source.nextSequence(sequenceName, in: &txn)
        try entries.insert(OutboxEntry(sequence: sequence, recordedAtUnixMs: now(), kind: kind, operation: operation), in: &txn)
    }

    /// Entries recorded but not yet removed (applied or not).
    public func pendingCount() throws -> Int {
        try source.read { txn in try entries.count(in: txn) }
    }

    /// Applies every pending entry to the target, then removes the applied
    /// ones from the outbox. Returns how many were newly applied. Concurrent
    /// deliveries, in this process or another, are safe: the target's
    /// applied-sequence check inside its write transaction lets only one
    /// apply each entry.
    ///
    /// Throws the first failure (a full target disk, say); the entries left
    /// stay pending for the next delivery.
    @discardableResult
    public func deliver() async throws -> Int {
        var applied = 0
        while true {
            let entries = self.entries
            let pending = try source.read { txn in try entries.list(prefix: Key(), pageSize: 64, in: txn).items }
            guard let last = pending.last else { return applied }
            let appliers = self.appliers, appliedKey = self.appliedKey, target = self.target
            applied += try await target.write { txn -> Int in
                var done = try Self.decodeSequence(target.metaValue(appliedKey, in: txn))
                var count = 0
                for entry in pending where entry.sequence > done {
                    guard let apply = appliers[entry.kind] else { throw OutboxError.unknownKind(entry.kind) }
                    try apply(entry.operation, &txn)
                    done = entry.sequence
                    count += 1
                }
                try target.setMetaValue(Self.encodeSequence(done), for: appliedKey, in: &txn)
                return count
            }
            try await source.write { txn in
                for entry in try entries.list(prefix: Key(), pageSize: pending.count, in: txn).items where entry.sequence <= last.sequence {
                    _ = try entries.delete(entry, in: &txn)
                }
            }
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
