public import TollgateStorage
import Dispatch
import Foundation
import SystemdKit

#if canImport(Glibc)
import Glibc
#endif

/// The version every binary reports.
public enum TollgateVersion {
    public static let current = "0.1.0"
}

/// The roles a node can run (DESIGN.md: publisher, store, keymanager,
/// gateway, trafficmanager, analytics).
public enum Role: String, CaseIterable, Sendable {
    case publisher, store, keymanager, gateway, trafficmanager, analytics

    /// The logical databases a role opens. The gateway opens none: it works
    /// from what its peers send it.
    public var databases: Set<LogicalDatabaseName> {
        switch self {
        case .publisher, .store: [.userdb, .apimgtdb, .regdb, .statdb]
        case .keymanager: [.userdb, .apimgtdb, .regdb]
        case .gateway: []
        case .trafficmanager: [.mbstoredb]
        case .analytics: [.statdb]
        }
    }
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
    public static func open(roles: [Role], dataDirectory: String) throws -> Node {
        let needed = roles.reduce(into: Set<LogicalDatabaseName>()) { $0.formUnion($1.databases) }
        let databases = try Databases.open(dataDirectory: dataDirectory, only: needed)
        return Node(roles: roles, databases: databases)
    }

    public var statusLine: String {
        let opened = databases.opened.map(\.rawValue).sorted().joined(separator: ", ")
        return "ready: roles \(roles.map(\.rawValue).joined(separator: ", ")); databases \(opened) in \(databases.dataDirectory)"
    }

    /// Tells systemd (if present) and the operator that the node is ready.
    public func reportReady() {
        ServiceNotifier.ready(status: statusLine)
        printLine("tollgated \(TollgateVersion.current) \(statusLine)")
    }

    public func reportStopping(signal: Int32) {
        ServiceNotifier.stopping(status: "stopping on signal \(signal)")
        printLine("tollgated stopping on signal \(signal)")
    }

}

/// SIGTERM and SIGINT, taken from dispatch signal sources: the default
/// action (die at once) is replaced as soon as `catchTerminationSignals` runs,
/// whatever threads already exist.
public enum NodeSignals {
    private final class Waiter: @unchecked Sendable {
        // @unchecked: `continuation`, `pending` and `sources` are only touched on `queue`.
        let queue = DispatchQueue(label: "tollgate.signals")
        var continuation: CheckedContinuation<Int32, Never>?
        var pending: Int32?
        var sources: [any DispatchSourceSignal] = []
    }
    private static let waiter = Waiter()

    /// Starts catching the signals; call before anything that takes time.
    public static func catchTerminationSignals() {
        let waiter = self.waiter
        waiter.queue.sync {
            guard waiter.sources.isEmpty else { return }
            for number in [SIGTERM, SIGINT] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: waiter.queue)
                source.setEventHandler {
                    if let continuation = waiter.continuation {
                        waiter.continuation = nil
                        continuation.resume(returning: number)
                    } else if waiter.pending == nil {
                        waiter.pending = number
                    }
                }
                source.resume()
                waiter.sources.append(source)
            }
        }
    }

    /// The next SIGTERM or SIGINT (or one that came before this call).
    public static func nextTerminationSignal() async -> Int32 {
        let waiter = self.waiter
        return await withCheckedContinuation { continuation in
            waiter.queue.async {
                if let pending = waiter.pending {
                    waiter.pending = nil
                    continuation.resume(returning: pending)
                } else {
                    waiter.continuation = continuation
                }
            }
        }
    }
}

extension NodeRuntime {
    /// Tells systemd (if present) and the operator that the node serves.
    public func reportReady() {
        ServiceNotifier.ready(status: statusLine)
        printLine("tollgated \(TollgateVersion.current) \(statusLine)")
    }

    public func reportStopping(signal: Int32) {
        let status = "stopping on signal \(signal): draining calls for up to \(config.drainTimeoutSeconds) s"
        ServiceNotifier.stopping(status: status)
        printLine("tollgated \(status)")
    }
}

/// Writes one line to stdout unbuffered (journald reads it line by line).
public func printLine(_ line: String) {
    var line = line + "\n"
    line.withUTF8 { bytes in _ = write(STDOUT_FILENO, bytes.baseAddress, bytes.count) }
}
