import FoundationEssentials
public import LMDBKit
public import TollgateProto

/// The revocation feed's change-log in `apimgtdb`: what gateways must stop
/// trusting from their validation caches (`WatchRevocations` replays it).
///
/// The key manager (revoked tokens, regenerated secrets, deleted clients),
/// the store (deleted applications, removed subscriptions) and the
/// publisher (blocked subscriptions) append inside the write transaction
/// that makes the change and call ``committed()`` after it commits. Writers
/// in another process sharing the environment are seen within
/// ``ChangeLog/pollInterval``.
public final class RevocationLog: Sendable {
    public let log: ChangeLog<TokenRevocation>
    let now: @Sendable () -> Int64

    public init(database: ApiManagerDatabase, retainedChanges: UInt64 = 100_000, pollInterval: Duration = .milliseconds(200),
                now: (@Sendable () -> Int64)? = nil) {
        self.log = ChangeLog(database: database.database, table: database.revocations, sequence: ApiManagerDatabase.revocationSequence,
                             retainedChanges: retainedChanges, pollInterval: pollInterval, revision: { $0.sequence })
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    /// Appends one revocation in the caller's write transaction and returns its sequence.
    @discardableResult
    public func append(_ target: TokenRevocation.Target, in txn: inout WriteTransaction) throws -> UInt64 {
        let timestamp = now()
        return try log.append(in: &txn) { sequence in
            TokenRevocation(sequence: sequence, revokedAtUnixMs: timestamp, target: target)
        }
    }

    /// Wakes this process's watchers; call after the appending transaction commits.
    public func committed() { log.committed() }

    public func currentSequence() throws -> UInt64 { try log.currentRevision() }
}
