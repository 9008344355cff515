public import LMDBKit
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The schema of one logical database: its version and how to reach it.
public struct Schema: Sendable {
    /// A step from `version - 1` to `version`, run in the opening write
    /// transaction, after every table of the current version is open.
    public struct Migration: Sendable {
        public let version: Int
        public let apply: @Sendable (inout WriteTransaction, LogicalDatabase) throws -> Void

        public init(version: Int, apply: @escaping @Sendable (inout WriteTransaction, LogicalDatabase) throws -> Void) {
            self.version = version
            self.apply = apply
        }
    }

    /// The environment's directory name under the data directory, e.g. `userdb`.
    public let name: String
    /// The version this build writes; bump it with a migration for every layout change.
    public let version: Int
    public let migrations: [Migration]

    public init(name: String, version: Int, migrations: [Migration] = []) {
        self.name = name
        self.version = version
        self.migrations = migrations
    }
}

/// One of the five logical databases: an LMDB environment with a `meta`
/// table holding its schema version, and the tables its repository opens.
public final class LogicalDatabase: Sendable {
    public let schema: Schema
    public let environment: Environment
    let meta: Database
    /// Where this process runs the environment's write transactions: one
    /// thread at a time, off the event loops and the cooperative pool.
    public let writer: BlockingExecutor

    static let versionKey = Array("schema_version".utf8)

    /// Opens `<dataDirectory>/<schema.name>`, refusing an environment written
    /// by a newer schema before anything is written, then lets `makeTables`
    /// open its tables, runs pending migrations and records the version.
    public static func open<Repository>(
        schema: Schema,
        in dataDirectory: String,
        options: Environment.Options = .init(),
        makeTables: (LogicalDatabase) throws -> Repository
    ) throws -> Repository {
        let path = dataDirectory + "/" + schema.name
        // Owner only, like the files LMDB creates in it (docs/storage.md).
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw StorageError.dataDirectory("cannot create \(path): \(String(cString: strerror(errno))); make \(dataDirectory) writable by this user")
        }
        let environment = try Environment(path: path, options: options)
        // Read the stored version without creating anything.
        let stored = try environment.existingDatabase("meta").map { meta in
            try environment.read { txn in try txn.get(versionKey, in: meta).map(decodeVersion) } ?? 0
        } ?? 0
        if stored > schema.version {
            throw StorageError.newerSchema(database: schema.name, found: stored, supported: schema.version)
        }
        let database = LogicalDatabase(schema: schema, environment: environment, meta: try environment.openDatabase("meta"))
        let repository = try makeTables(database)
        if stored < schema.version {
            try environment.write { txn in
                // A new environment starts at the current layout; an older one
                // replays each step it has not seen.
                if stored > 0 {
                    for migration in schema.migrations.sorted(by: { $0.version < $1.version })
                    where migration.version > stored && migration.version <= schema.version {
                        try migration.apply(&txn, database)
                    }
                }
                try txn.put(encodeVersion(schema.version), forKey: versionKey, in: database.meta)
            }
        }
        return repository
    }

    private init(schema: Schema, environment: Environment, meta: Database) {
        self.schema = schema
        self.environment = environment
        self.meta = meta
        self.writer = BlockingExecutor(name: "tollgate.\(schema.name).writer")
    }

    private let grouped = Mutex<[GroupedWrite]>([])

    /// Runs `body` in a write transaction on the environment's writer and
    /// commits it. The caller's task waits without holding a thread; writes
    /// queue in arrival order. `body` may run more than once (map growth) and
    /// must not suspend or change anything outside the transaction.
    public func write<Result: Sendable>(_ body: @escaping @Sendable (inout WriteTransaction) throws -> Result) async throws -> Result {
        let environment = self.environment
        return try await writer.run { () throws -> Result in try environment.write(body) }
    }

    /// Like ``write(_:)``, but writes queued while an earlier one was being
    /// committed share one transaction and one fsync (group commit), each in
    /// a nested transaction of its own: one that throws is undone alone and
    /// its caller gets the error, the others commit. For small, frequent,
    /// independent writes (issued tokens) whose rate would otherwise be
    /// bounded by the disk's fsyncs per second.
    public func writeGrouped<Result: Sendable>(_ body: @escaping @Sendable (inout WriteTransaction) throws -> Result) async throws -> Result {
        let value = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<any Sendable, any Error>) in
            grouped.withLock { $0.append(GroupedWrite(body: { txn in try body(&txn) }, continuation: continuation)) }
            writer.submit { [self] in commitGroup() }
        }
        return value as! Result  // swiftlint:disable:this force_cast — built from `body`, whose type is Result
    }

    /// Commits every queued grouped write in one transaction; a job finding
    /// the queue already drained by an earlier one has nothing to do.
    private func commitGroup() {
        let writes = grouped.withLock { queue in
            let taken = queue
            queue.removeAll(keepingCapacity: true)
            return taken
        }
        guard !writes.isEmpty else { return }
        var outcomes: [Swift.Result<any Sendable, any Error>] = []
        do {
            try environment.write { txn in
                outcomes.removeAll(keepingCapacity: true)  // the body reruns after map growth
                if writes.count == 1 {
                    outcomes.append(.success(try writes[0].body(&txn)))
                    return
                }
                for write in writes {
                    do {
                        outcomes.append(.success(try txn.nested { try write.body(&$0) }))
                    } catch let error as LMDBError where error == .mapFull {
                        throw error  // the whole group is retried after the map grows
                    } catch {
                        outcomes.append(.failure(error))
                    }
                }
            }
        } catch {
            for write in writes { write.continuation.resume(throwing: error) }
            return
        }
        for (write, outcome) in zip(writes, outcomes) { write.continuation.resume(with: outcome) }
    }

    /// Runs `body` in a read-only snapshot. Reads take no lock and never wait
    /// for writers, so they run where the caller is.
    public func read<Result>(_ body: (borrowing ReadTransaction) throws -> Result) throws -> Result {
        try environment.read(body)
    }

    /// Opens (creating on first use) the record and index databases of a table.
    public func table<Record>(_ definition: TableDefinition<Record>) throws -> Table<Record> {
        try environment.write { txn in try table(definition, in: &txn) }
    }

    /// Opens a table inside a write transaction that is already open (for
    /// migrations, which run inside the opening transaction).
    public func table<Record>(_ definition: TableDefinition<Record>, in txn: inout WriteTransaction) throws -> Table<Record> {
        let records = try txn.openDatabase(definition.name)
        var indexes: [String: Database] = [:]
        for index in definition.indexes {
            indexes[index.name] = try txn.openDatabase(definition.name + "." + index.name)
        }
        return Table(definition: definition, records: records, indexDatabases: indexes)
    }

    /// The schema version recorded in the environment.
    public func storedVersion() throws -> Int {
        try environment.read { txn in try txn.get(Self.versionKey, in: meta).map(Self.decodeVersion) } ?? 0
    }

    /// A value in the `meta` table (counters such as the deployment revision live here).
    public func metaValue<T: TransactionReading & ~Copyable>(_ name: String, in txn: borrowing T) throws -> [UInt8]? {
        try txn.get(Array(name.utf8), in: meta)
    }

    public func setMetaValue(_ value: [UInt8], for name: String, in txn: inout WriteTransaction) throws {
        try txn.put(value, forKey: Array(name.utf8), in: meta)
    }

    /// The next value of a persisted counter (1, 2, 3, …), in the caller's
    /// write transaction, so it is never handed out twice even across crashes.
    public func nextSequence(_ name: String, in txn: inout WriteTransaction) throws -> UInt64 {
        let key = "sequence." + name
        let current = try metaValue(key, in: txn).map { UInt64(Self.decodeVersion($0)) } ?? 0
        try setMetaValue(Self.encodeVersion(Int(current + 1)), for: key, in: &txn)
        return current + 1
    }

    static func encodeVersion(_ version: Int) -> [UInt8] {
        withUnsafeBytes(of: UInt64(version).bigEndian, Array.init)
    }

    static func decodeVersion(_ bytes: [UInt8]) -> Int {
        bytes.prefix(8).reduce(0) { $0 << 8 | Int($1) }
    }
}

/// One caller's part of a group commit.
private struct GroupedWrite: Sendable {
    let body: @Sendable (inout WriteTransaction) throws -> any Sendable
    let continuation: CheckedContinuation<any Sendable, any Error>
}
