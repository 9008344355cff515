import FoundationEssentials
import LMDBKit
import TollgateProto
import TollgateStorage

/// Applies the publisher's ``RegistryOperation``s to regdb, inside the
/// outbox's write transaction (see `Outbox`). Each runs once per operation,
/// so the operations need not be idempotent themselves.
struct RegistryOperations: Sendable {
    let registry: RegistryDatabase

    func apply(_ bytes: [UInt8], _ txn: inout WriteTransaction) throws {
        switch try RegistryOperation(serializedBytes: bytes).operation {
        case .recordHistory(let history)?:
            for entry in history.entries { try record(entry, in: &txn) }
        case .deleteApiArtifacts(let apiID)?:
            _ = try registry.definitions.delete(Key(.string(apiID)), in: &txn)
            for document in try registry.documents.all(index: RegistryDatabase.documentsByApiName, prefix: Key(.string(apiID)), in: txn) {
                _ = try registry.documents.delete(document, in: &txn)
            }
            for entry in try registry.lifecycleHistory.list(prefix: Key(.string(apiID)), pageSize: Int.max, in: txn).items {
                _ = try registry.lifecycleHistory.delete(entry, in: &txn)
            }
        case .copyApiArtifacts(let copy)?:
            if var definition = try registry.definitions.get(Key(.string(copy.sourceApiId)), in: txn) {
                definition.apiId = copy.targetApiId
                definition.revision = 1
                definition.updatedAtUnixMs = copy.atUnixMs
                _ = try registry.definitions.put(definition, in: &txn)
            }
            for var document in try registry.documents.all(index: RegistryDatabase.documentsByApiName, prefix: Key(.string(copy.sourceApiId)), in: txn) {
                document.id = UUID().uuidString.lowercased()
                document.apiId = copy.targetApiId
                document.createdBy = copy.actor
                document.createdAtUnixMs = copy.atUnixMs
                document.updatedAtUnixMs = copy.atUnixMs
                try registry.documents.insert(document, in: &txn)
            }
        case .storeDefinition(var definition)?:
            let previous = try registry.definitions.get(Key(.string(definition.apiId)), in: txn)
            definition.revision = (previous?.revision ?? 0) + 1
            _ = try registry.definitions.put(definition, in: &txn)
        case nil:
            // Written by a newer build: left pending rather than dropped.
            throw OutboxError.unknownKind("publisher.registry operation of a newer build")
        }
    }

    /// Stores a history entry; a second move of one API within the same
    /// millisecond is stamped a millisecond later so neither is lost.
    func record(_ entry: LifecycleHistoryEntry, in txn: inout WriteTransaction) throws {
        var entry = entry
        let last = try registry.lifecycleHistory.list(prefix: Key(.string(entry.apiId)), pageSize: Int.max, in: txn).items.last
        if let last, last.occurredAtUnixMs >= entry.occurredAtUnixMs { entry.occurredAtUnixMs = last.occurredAtUnixMs + 1 }
        _ = try registry.lifecycleHistory.put(entry, in: &txn)
    }
}
