public import TollgateProto

/// WSO2 API Manager's API lifecycle, as a table of allowed moves.
public enum Lifecycle {
    /// For each state, the states an API may move to from it.
    public static let transitions: [LifecycleState: Set<LifecycleState>] = [
        .created: [.published, .prototyped],
        .prototyped: [.published, .created],
        .published: [.blocked, .deprecated, .prototyped, .created],
        .blocked: [.published, .deprecated],
        .deprecated: [.retired],
        .retired: [],
    ]

    /// The states a caller can name (all but UNSPECIFIED).
    public static let states: [LifecycleState] = [.created, .prototyped, .published, .blocked, .deprecated, .retired]

    public static func allows(_ from: LifecycleState, _ to: LifecycleState) -> Bool {
        transitions[from]?.contains(to) ?? false
    }

    public static func name(_ state: LifecycleState) -> String {
        switch state {
        case .created: "CREATED"
        case .prototyped: "PROTOTYPED"
        case .published: "PUBLISHED"
        case .blocked: "BLOCKED"
        case .deprecated: "DEPRECATED"
        case .retired: "RETIRED"
        case .unspecified, .unrecognized: "UNSPECIFIED"
        }
    }

    /// Why a move is refused, listing the moves that are allowed instead.
    public static func refusal(_ from: LifecycleState, _ to: LifecycleState) -> String {
        let allowed = states.filter { allows(from, $0) }.map(name)
        let list = allowed.count > 1 ? allowed.dropLast().joined(separator: ", ") + " or " + allowed[allowed.count - 1] : allowed.joined()
        let options = allowed.isEmpty ? "a \(name(from)) API cannot move any more" : "from \(name(from)) an API can move to \(list)"
        return "an API cannot move from \(name(from)) to \(name(to)): \(options)"
    }
}
