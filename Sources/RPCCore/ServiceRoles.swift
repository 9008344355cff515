import TollgateProto

/// Which roles serve each service declared in proto/, and which roles the
/// answering node runs: what a server says for a declared method it does not
/// serve (UNIMPLEMENTED naming the roles that do, docs/rpc-protocol.md §13)
/// and what `NodeService/ListServices` reports. The node builds it from its
/// role modules' table; this only words it.
public struct ServiceRoles: Sendable, Hashable {
    /// The roles serving each declared service, by fully qualified name;
    /// empty for a service no role serves yet.
    public let rolesByService: [String: [String]]
    /// The roles of the answering node.
    public let localRoles: [String]

    public init(rolesByService: [String: [String]], localRoles: [String]) {
        self.rolesByService = rolesByService
        self.localRoles = localRoles
    }

    /// Paths of every method declared in proto/.
    private static let declared: Set<String> = Set(ProtoRegistry.methods.map(\.path))

    /// The status for a call to `path` (`/<service>/<method>`) that this
    /// node has no handler for.
    public func unimplemented(_ path: String) -> RPCError {
        let unknown = RPCError(.unimplemented, "unknown method \(path)")
        guard Self.declared.contains(path) else { return unknown }
        let name = path.dropFirst()
        let service = String(name.prefix { $0 != "/" })
        let here = "this node runs \(localRoles.joined(separator: ", "))"
        guard let roles = rolesByService[service], !roles.isEmpty else {
            return RPCError(.unimplemented, "\(name) is declared in proto/ but no role of this release serves it yet; \(here)")
        }
        // A service the node serves, without this method: an older node.
        guard Set(roles).isDisjoint(with: localRoles) else { return unknown }
        return RPCError(.unimplemented, "\(name) is served by \(Self.list(roles)) nodes; \(here)")
    }

    /// "store", "publisher and store", "publisher, store and keymanager".
    static func list(_ names: [String]) -> String {
        guard names.count > 1 else { return names.first ?? "" }
        return names.dropLast().joined(separator: ", ") + " and " + names.last!
    }
}
