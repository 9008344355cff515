internal import CLMDB
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One LMDB environment: a directory holding `data.mdb` and `lock.mdb`.
///
/// Transactions are scoped to closures with synchronous bodies and never
/// escape them. The environment is opened with `MDB_NOTLS`, because Swift
/// tasks hop between threads; each transaction is therefore begun, used and
/// finished on the one thread that runs its closure, and bodies must not
/// suspend. Writes in this process run one at a time; LMDB's lock file
/// serializes them against other processes sharing the directory.
///
/// Map growth: when a write fails with `MDB_MAP_FULL`, the transaction is
/// aborted, the map doubles (up to ``Options/maxMapSize``) and the body runs
/// again, so a write body must have no effects outside its transaction. When
/// another process has grown the map, `MDB_MAP_RESIZED` is answered by adopting
/// the new size. Resizing waits until no transaction of this process is open.
public final class Environment: @unchecked Sendable {
    // @unchecked Sendable: the MDB_env pointer is used only through LMDB calls
    // that are thread-safe under MDB_NOTLS; the two things LMDB requires callers
    // to serialize are serialized here: writers by `writerLock`, and map-size
    // changes against every open transaction by `gate` (a readers/writer lock).

    public struct Options: Sendable {
        /// Initial map size in bytes. Only address space until pages are written.
        public var mapSize: Int = 1 << 30
        /// The largest size automatic growth will reach.
        public var maxMapSize: Int = 1 << 40
        /// How many named databases (tables and indexes) the environment holds.
        public var maxDatabases: Int = 64
        /// Concurrent read transactions across every process sharing the environment.
        public var maxReaders: Int = 254

        public init(mapSize: Int = 1 << 30, maxMapSize: Int = 1 << 40, maxDatabases: Int = 64, maxReaders: Int = 254) {
            self.mapSize = mapSize
            self.maxMapSize = maxMapSize
            self.maxDatabases = maxDatabases
            self.maxReaders = maxReaders
        }
    }

    public let path: String
    private let handle: OpaquePointer
    private let options: Options
    private let writerLock = WriterLock()
    private let gate = ReadersWriterLock()
    /// Stale reader slots cleared when the environment was opened (left by
    /// processes that died inside a read transaction).
    public let staleReadersCleared: Int

    private static let openPaths = Mutex(Set<String>())

    /// Opens (creating if needed) the environment in the existing directory `path`.
    ///
    /// - Throws: ``EnvironmentError`` when the directory is missing, not
    ///   writable or already open in this process; ``LMDBError`` for LMDB's own
    ///   failures.
    public init(path: String, options: Options = Options()) throws {
        var status = stat()
        guard stat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFDIR else {
            throw EnvironmentError.directoryMissing(path: path)
        }
        guard access(path, R_OK | W_OK | X_OK) == 0 else {
            throw EnvironmentError.directoryNotWritable(path: path)
        }
        let canonical = realpath(path, nil).map { pointer in
            defer { free(pointer) }
            return String(cString: pointer)
        } ?? path
        // LMDB forbids opening one environment twice in a process: closing
        // either copy would drop the other's POSIX locks on lock.mdb.
        let inserted = Self.openPaths.withLock { $0.insert(canonical).inserted }
        guard inserted else { throw EnvironmentError.alreadyOpen(path: canonical) }

        var env: OpaquePointer?
        do {
            try check(mdb_env_create(&env))
            guard let env else { throw LMDBError(code: ENOMEM) }
            do {
                try check(mdb_env_set_maxdbs(env, MDB_dbi(options.maxDatabases)))
                try check(mdb_env_set_maxreaders(env, UInt32(options.maxReaders)))
                try check(mdb_env_set_mapsize(env, options.mapSize))
                // Owner only: what a node stores (password hashes among it) is no one else's to read.
                try check(mdb_env_open(env, canonical, UInt32(MDB_NOTLS), 0o600))
                var dead: Int32 = 0
                try check(mdb_reader_check(env, &dead))
                self.staleReadersCleared = Int(dead)
            } catch {
                mdb_env_close(env)
                throw error
            }
            self.handle = env
        } catch {
            _ = Self.openPaths.withLock { $0.remove(canonical) }
            throw error
        }
        self.path = canonical
        self.options = options
    }

    deinit {
        mdb_env_close(handle)
        _ = Self.openPaths.withLock { $0.remove(path) }
    }

    // MARK: Databases

    /// Opens the named database, creating it if it does not exist.
    ///
    /// Open every database once, at start-up: LMDB forbids opening handles
    /// concurrently, and the handle stays valid for the environment's life.
    public func openDatabase(_ name: String, flags: Database.Flags = []) throws -> Database {
        try write { txn in try txn.openDatabase(name, flags: flags) }
    }

    /// The named database if it already exists, opened without creating
    /// anything (the write transaction commits with no dirty pages).
    public func existingDatabase(_ name: String) throws -> Database? {
        try write { txn in
            var dbi: MDB_dbi = 0
            let code = mdb_dbi_open(txn.handle, name, 0, &dbi)
            if code == MDB_NOTFOUND { return nil }
            try check(code)
            return Database(name: name, dbi: dbi)
        }
    }

    // MARK: Transactions

    /// Runs `body` in a read-only snapshot of the environment.
    public func read<Result>(_ body: (borrowing ReadTransaction) throws -> Result) throws -> Result {
        try gate.withShared { () throws -> Result in
            let txn = try beginAdoptingResize(flags: UInt32(MDB_RDONLY))
            // A read-only transaction changes nothing: abort is how it ends.
            defer { mdb_txn_abort(txn) }
            return try body(ReadTransaction(handle: txn))
        }
    }

    /// Runs `body` in a write transaction and commits it; any error thrown by
    /// `body` or by the commit aborts it and is rethrown.
    ///
    /// `body` may run more than once (after the map grows), so it must not
    /// change anything outside the transaction.
    public func write<Result>(_ body: (inout WriteTransaction) throws -> Result) throws -> Result {
        try writerLock.withLock { () throws -> Result in
            var lastError: LMDBError = .mapFull
            while true {
                do {
                    return try gate.withShared { () throws -> Result in
                        let txn = try beginAdoptingResize(flags: 0)
                        var transaction = WriteTransaction(handle: txn)
                        let result: Result
                        do {
                            result = try body(&transaction)
                        } catch {
                            mdb_txn_abort(txn)
                            throw error
                        }
                        // The handle is freed by commit whatever its outcome.
                        try check(mdb_txn_commit(txn))
                        return result
                    }
                } catch let error as LMDBError where error == .mapFull {
                    lastError = error
                }
                guard try growMap() else { throw lastError }
            }
        }
    }

    private func beginAdoptingResize(flags: UInt32) throws(LMDBError) -> OpaquePointer {
        var attempts = 0
        while true {
            var txn: OpaquePointer?
            let code = mdb_txn_begin(handle, nil, flags, &txn)
            if code == 0, let txn { return txn }
            guard code == MDB_MAP_RESIZED, attempts < 3 else { throw LMDBError(code: code) }
            attempts += 1
            // Another process grew the map; adopt its size. This must happen
            // with no transaction of ours open, so step outside the shared gate.
            try gate.withExclusiveFromShared { () throws(LMDBError) in
                try check(mdb_env_set_mapsize(handle, 0))
            }
        }
    }

    /// Doubles the map size; false when it is already at the configured maximum.
    private func growMap() throws -> Bool {
        try gate.withExclusive { () throws(LMDBError) -> Bool in
            let current = mapSize
            guard current < options.maxMapSize else { return false }
            try check(mdb_env_set_mapsize(handle, min(current * 2, options.maxMapSize)))
            return true
        }
    }

    // MARK: Information

    /// The current map size in bytes (possibly grown since opening).
    public var mapSize: Int {
        var info = MDB_envinfo()
        mdb_env_info(handle, &info)
        return info.me_mapsize
    }

    /// The id of the last committed write transaction, by any process
    /// sharing the environment: it changes exactly when data was written.
    /// Read from the shared map without a lock, so it is cheap enough to
    /// check per call (what validity caches key on).
    public var lastTransactionID: Int {
        var info = MDB_envinfo()
        mdb_env_info(handle, &info)
        return info.me_last_txnid
    }

    /// Bytes of the data file in use: pages up to the last one written.
    public var usedBytes: Int {
        var info = MDB_envinfo()
        var status = MDB_stat()
        mdb_env_info(handle, &info)
        mdb_env_stat(handle, &status)
        return (info.me_last_pgno + 1) * Int(status.ms_psize)
    }

    /// Flushes the data file to disk (commits already do unless the OS crashes mid-write).
    public func sync() throws {
        try check(mdb_env_sync(handle, 1))
    }

    /// Number of entries in `database`.
    public func count(_ database: Database) throws -> Int {
        try read { txn in try txn.count(database) }
    }
}

/// A named database (a table or an index) inside an ``Environment``.
public struct Database: Hashable, Sendable {
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
    }

    public let name: String
    let dbi: UInt32
}

/// Problems with the environment's directory, reported with the path and the fix.
public enum EnvironmentError: Error, Hashable, Sendable, CustomStringConvertible {
    case directoryMissing(path: String)
    case directoryNotWritable(path: String)
    case alreadyOpen(path: String)

    public var description: String {
        switch self {
        case .directoryMissing(let path):
            return "database directory \(path) does not exist: create it (mkdir -p \(path)) or point data_dir elsewhere"
        case .directoryNotWritable(let path):
            return "database directory \(path) is not writable by this user: fix its owner or mode (chown/chmod) or point data_dir elsewhere"
        case .alreadyOpen(let path):
            return "database \(path) is already open in this process"
        }
    }
}

/// A plain pthread mutex. `Synchronization.Mutex` wants results it can send
/// across isolation domains, which a generic transaction result need not be.
///
/// It remembers its owner so that a nested write transaction on the same
/// thread, which would wait for itself forever, stops with a clear message.
final class WriterLock: @unchecked Sendable {
    // @unchecked Sendable: the pthread_mutex_t lives at a stable heap address
    // and is only touched through pthread calls, which are thread-safe; the
    // owner is an atomic.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let owner = Atomic<UInt>(0)

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        let me = UInt(pthread_self())
        precondition(owner.load(ordering: .relaxed) != me,
                     "nested write transaction: this thread already holds the environment's write transaction; pass it down instead of starting another")
        pthread_mutex_lock(mutex)
        owner.store(me, ordering: .relaxed)
        defer {
            owner.store(0, ordering: .relaxed)
            pthread_mutex_unlock(mutex)
        }
        return try body()
    }
}

/// A pthread readers/writer lock that prefers writers, so a map resize is not
/// starved by a steady stream of transactions.
final class ReadersWriterLock: @unchecked Sendable {
    // @unchecked Sendable: the pthread_rwlock_t lives at a stable heap address
    // and is only touched through pthread calls, which are thread-safe.
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func withShared<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func withExclusive<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// From inside `withShared`: releases the shared hold, runs `body`
    /// exclusively, then takes the shared hold back.
    func withExclusiveFromShared<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_rwlock_unlock(lock)
        pthread_rwlock_wrlock(lock)
        defer {
            pthread_rwlock_unlock(lock)
            pthread_rwlock_rdlock(lock)
        }
        return try body()
    }
}
