public import RoleCore
public import TollgateStorage
import Foundation
import SystemdKit

#if canImport(Glibc)
import Glibc
#endif

/// The version every binary reports.
public enum TollgateVersion {
    public static let current = "0.1.0"
}

/// A running node: its roles and the databases they opened.
public final class Node: Sendable {
    public let roles: [Role]
    public let databases: Databases

    private init(roles: [Role], databases: Databases) {
        self.roles = roles
        self.databases = databases
    }

    /// Opens every database the roles need under `dataDirectory`.
    public static func open(roles: [Role], dataDirectory: String, table: RoleModules = .standard) throws -> Node {
        let needed = roles.reduce(into: Set<LogicalDatabaseName>()) { $0.formUnion(table.databases(for: $1)) }
        let databases = try Databases.open(dataDirectory: dataDirectory, only: needed)
        return Node(roles: roles, databases: databases)
    }

    public var statusLine: String {
        let opened = databases.opened.map(\.rawValue).sorted().joined(separator: ", ")
        return "ready: roles \(roles.map(\.rawValue).joined(separator: ", ")); databases \(opened) in \(databases.dataDirectory)"
    }
}

/// Writes one line to stdout unbuffered (journald reads it line by line).
public func printLine(_ line: String) {
    var line = line + "\n"
    line.withUTF8 { bytes in _ = write(STDOUT_FILENO, bytes.baseAddress, bytes.count) }
}
