public import RPCCore
public import TollgateProto
public import TollgateServices
import TollgateStorage

/// `tollgate.v1.TrafficManagerService` over a ``TrafficManager``.
public struct TrafficManagerRPCService: TrafficManagerServiceHandler {
    public let trafficManager: TrafficManager
    /// More operations than this in one call is a broken gateway, not load.
    public static let maxOperations = 10_000

    public init(trafficManager: TrafficManager) {
        self.trafficManager = trafficManager
    }

    public func exchangeLeases(_ request: ExchangeLeasesRequest, context: ServerCallContext) async throws -> ExchangeLeasesResponse {
        guard request.operations.count <= Self.maxOperations else {
            throw RPCError(.invalidArgument, "\(request.operations.count) operations in one exchange; at most \(Self.maxOperations)")
        }
        for operation in request.operations {
            guard !operation.throttleKey.isEmpty, operation.windowEndUnixMs > operation.windowStartUnixMs else {
                throw RPCError(.invalidArgument, "every operation needs a throttle_key and a window that ends after it starts")
            }
        }
        // The access table admits gateway nodes only; their id is in the certificate.
        let gateway: String = if case .node(let id, _)? = context.peer { id } else { context.caller.description }
        let grants = try await RPCError.catching { try await trafficManager.exchange(request.operations, gateway: gateway) }
        return ExchangeLeasesResponse(grants: grants, trafficManagerId: trafficManager.nodeID)
    }

    public func watchDecisions(_ request: WatchDecisionsRequest, writer: ResponseWriter<WatchDecisionsResponse>, context: ServerCallContext) async throws {
        try await context.untilStopping { [trafficManager] in
            // Subscribed before reading the log, so nothing decided in between is missed.
            let (id, live) = trafficManager.subscribe()
            defer { trafficManager.unsubscribe(id) }
            let database = trafficManager.database
            let head = try RPCError.catching { try database.headSequence() }
            let since = request.sinceSequence
            let oldest = try RPCError.catching { try database.oldestRecord() }
            let resumable = since > 0 && since <= head && (since == head || (oldest.map { $0.sequence <= since + 1 } ?? false))
            var last: UInt64
            if resumable {
                last = since
                while true {
                    let records = try RPCError.catching { try database.records(after: last, limit: 512) }
                    guard let newest = records.last else { break }
                    let decisions = records.compactMap { record -> ThrottleDecision? in
                        if case .decision(let decision)? = record.entry { return decision }
                        return nil
                    }
                    try await writer.write(WatchDecisionsResponse(snapshot: false, decisions: decisions, headSequence: newest.sequence))
                    last = newest.sequence
                }
            } else {
                try await writer.write(WatchDecisionsResponse(snapshot: true, decisions: trafficManager.currentDecisions(head: head), headSequence: head))
                last = head
            }
            for await decision in live where decision.sequence > last {
                try await writer.write(WatchDecisionsResponse(snapshot: false, decisions: [decision], headSequence: decision.sequence))
                last = decision.sequence
            }
        }
    }

    public func getThrottleStatus(_ request: GetThrottleStatusRequest, context: ServerCallContext) async throws -> GetThrottleStatusResponse {
        guard !request.throttleKey.isEmpty else { throw RPCError(.invalidArgument, "throttle_key is required, e.g. sub:{appId}:{context}:{version}") }
        return GetThrottleStatusResponse(trafficManagerId: trafficManager.nodeID, counters: trafficManager.status(of: request.throttleKey))
    }
}
