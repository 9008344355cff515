#if canImport(Glibc)
import Glibc
#endif

/// The five logical databases (DESIGN.md), each an LMDB environment in a
/// directory of this name under the node's data directory.
public enum LogicalDatabaseName: String, CaseIterable, Sendable, Hashable {
    case userdb, apimgtdb, regdb, statdb, mbstoredb
}

/// The logical databases a node opened under its data directory.
public struct Databases: Sendable {
    public let dataDirectory: String
    public let userdb: UserDatabase?
    public let apimgtdb: ApiManagerDatabase?
    public let regdb: RegistryDatabase?
    public let statdb: StatisticsDatabase?
    public let mbstoredb: MessageStoreDatabase?

    /// Opens the named databases under `dataDirectory`, which must exist and be writable.
    public static func open(dataDirectory: String, only names: Set<LogicalDatabaseName> = Set(LogicalDatabaseName.allCases)) throws -> Databases {
        try checkDataDirectory(dataDirectory)
        return Databases(
            dataDirectory: dataDirectory,
            userdb: names.contains(.userdb) ? try UserDatabase.open(in: dataDirectory) : nil,
            apimgtdb: names.contains(.apimgtdb) ? try ApiManagerDatabase.open(in: dataDirectory) : nil,
            regdb: names.contains(.regdb) ? try RegistryDatabase.open(in: dataDirectory) : nil,
            statdb: names.contains(.statdb) ? try StatisticsDatabase.open(in: dataDirectory) : nil,
            mbstoredb: names.contains(.mbstoredb) ? try MessageStoreDatabase.open(in: dataDirectory) : nil)
    }

    /// The databases that are open, in the order of ``LogicalDatabaseName``.
    public var opened: [LogicalDatabaseName] {
        LogicalDatabaseName.allCases.filter { name in
            switch name {
            case .userdb: userdb != nil
            case .apimgtdb: apimgtdb != nil
            case .regdb: regdb != nil
            case .statdb: statdb != nil
            case .mbstoredb: mbstoredb != nil
            }
        }
    }

    /// Refuses a missing, non-directory or unwritable data directory with one
    /// line naming the path and the fix.
    static func checkDataDirectory(_ path: String) throws {
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw StorageError.dataDirectory("data directory \(path) does not exist: create it (mkdir -p \(path)) and make it writable by the node's user, or set another data directory")
        }
        guard (status.st_mode & S_IFMT) == S_IFDIR else {
            throw StorageError.dataDirectory("data directory \(path) is not a directory: point the data directory at a directory")
        }
        guard access(path, R_OK | W_OK | X_OK) == 0 else {
            throw StorageError.dataDirectory("data directory \(path) is not writable by this user (uid \(getuid())): chown or chmod it, or run as its owner")
        }
    }
}
