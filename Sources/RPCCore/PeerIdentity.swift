/// Who is at the other end of a connection, as its certificate says.
///
/// Cluster certificates carry one URI subject alternative name:
/// `tollgate://node/<node-id>?role=<role>` (the `role` parameter repeated for
/// a node running several roles) for nodes, `tollgate://user/<name>` for
/// admin users (see certs/README.md).
public enum PeerIdentity: Hashable, Sendable, CustomStringConvertible {
    case node(id: String, roles: [String])
    case user(name: String)

    static let scheme = "tollgate://"

    /// The identity in a certificate URI, or nil if the URI is not one of ours.
    public init?(uri: String) {
        guard uri.hasPrefix(Self.scheme) else { return nil }
        let rest = uri.dropFirst(Self.scheme.count)
        let pathAndQuery = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = pathAndQuery[0].split(separator: "/", omittingEmptySubsequences: false)
        guard path.count == 2, !path[1].isEmpty, path[1].allSatisfy(Self.isNameCharacter) else { return nil }
        let name = String(path[1])
        switch path[0] {
        case "node":
            var roles: [String] = []
            if pathAndQuery.count == 2 {
                for parameter in pathAndQuery[1].split(separator: "&") {
                    let pair = parameter.split(separator: "=", maxSplits: 1)
                    guard pair.count == 2, pair[0] == "role", !pair[1].isEmpty, pair[1].allSatisfy(Self.isNameCharacter) else { return nil }
                    roles.append(String(pair[1]))
                }
            }
            guard !roles.isEmpty else { return nil }
            self = .node(id: name, roles: roles)
        case "user":
            guard pathAndQuery.count == 1 else { return nil }
            self = .user(name: name)
        default:
            return nil
        }
    }

    /// The first identity found among a certificate's URIs.
    public init?(certificateURIs: [String]) {
        guard let identity = certificateURIs.lazy.compactMap(PeerIdentity.init(uri:)).first else { return nil }
        self = identity
    }

    /// The URI to put in a certificate for this identity.
    public var uri: String {
        switch self {
        case .node(let id, let roles): Self.scheme + "node/" + id + "?" + roles.map { "role=" + $0 }.joined(separator: "&")
        case .user(let name): Self.scheme + "user/" + name
        }
    }

    public var description: String {
        switch self {
        case .node(let id, let roles): "node \(id) (\(roles.joined(separator: ", ")))"
        case .user(let name): "user \(name)"
        }
    }

    /// Names and roles: letters, digits, '-', '_', '.' and '@' (for user@tenant).
    static func isNameCharacter(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber || "-_.@".contains(character))
    }
}
