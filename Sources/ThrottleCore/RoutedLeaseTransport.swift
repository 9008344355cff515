import RPCCore
public import TollgateProto
public import TollgateServices

/// The gateway's ``LeaseTransport`` over RPC: each operation goes to the
/// traffic manager owning its key (``RendezvousOwners``), one
/// `ExchangeLeases` call per traffic manager, all at once. A call that
/// fails or passes `timeout` answers nil for its operations, which puts
/// those keys in fallback; the others are unaffected.
public struct RoutedLeaseTransport: LeaseTransport {
    public let owners: RendezvousOwners
    /// The client of a traffic manager by node id; nil when none is known
    /// (its operations fail at once).
    private let client: @Sendable (String) -> TrafficManagerServiceClient?
    public let timeout: Duration

    public init(owners: RendezvousOwners, timeout: Duration = .seconds(1), client: @escaping @Sendable (String) -> TrafficManagerServiceClient?) {
        self.owners = owners
        self.timeout = timeout
        self.client = client
    }

    public func exchange(_ operations: [LeaseOperation]) async -> [LeaseGrant?] {
        var byOwner: [String: [Int]] = [:]
        for (index, operation) in operations.enumerated() {
            guard let owner = owners.owner(of: operation.throttleKey) else { continue }
            byOwner[owner, default: []].append(index)
        }
        var replies = [LeaseGrant?](repeating: nil, count: operations.count)
        let answers = await withTaskGroup(of: (indices: [Int], grants: [LeaseGrant]?).self) { group in
            for (owner, indices) in byOwner {
                let client = client(owner)
                let request = ExchangeLeasesRequest(operations: indices.map { operations[$0] })
                group.addTask { [timeout] in
                    guard let client else { return (indices, nil) }
                    let response = try? await client.exchangeLeases(request, options: CallOptions(timeout: timeout))
                    guard let response, response.grants.count == indices.count else { return (indices, nil) }
                    return (indices, response.grants)
                }
            }
            var answers: [(indices: [Int], grants: [LeaseGrant]?)] = []
            for await answer in group { answers.append(answer) }
            return answers
        }
        for answer in answers {
            guard let grants = answer.grants else { continue }
            for (index, grant) in zip(answer.indices, grants) { replies[index] = grant }
        }
        return replies
    }
}
