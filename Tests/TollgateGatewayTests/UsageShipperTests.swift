import Foundation
import Logging
import RoleCore
import RPCCore
import Synchronization
import Testing
@testable import TollgateGateway
import TollgateProto

/// An analytics node played in process: acknowledges every batch, or fails
/// the stream after `failAfter` batches of the first stream, or refuses
/// every stream.
final class FakeAnalytics: RPCClientTransport {
    let received = Mutex<[UInt64]>([])
    let streams = Atomic<Int>(0)
    let failAfter: Int?
    let refuse: Bool

    init(failAfter: Int? = nil, refuse: Bool = false) {
        self.failAfter = failAfter
        self.refuse = refuse
    }

    func unary<Request: ProtoMessage, Response: ProtoMessage>(_ method: ProtoMethod, _ request: Request, options: CallOptions,
                                                              as: Response.Type) async throws -> Response {
        throw RPCError(.unimplemented, "fake")
    }

    func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(_ method: ProtoMethod, _ request: Request, options: CallOptions,
                                                                        onResponse: @escaping @Sendable (Response) async throws -> Void) async throws {
        throw RPCError(.unimplemented, "fake")
    }

    func clientStreaming<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(_ method: ProtoMethod, requests: Requests, options: CallOptions,
                                                                                     as: Response.Type) async throws -> Response where Requests.Element: ProtoMessage {
        throw RPCError(.unimplemented, "fake")
    }

    func bidirectional<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions, onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage {
        let stream = streams.add(1, ordering: .relaxed).newValue
        if refuse { throw RPCError(.unavailable, "connection refused") }
        var count = 0
        for try await element in requests {
            let request = element as! PublishUsageEventsRequest  // swiftlint:disable:this force_cast
            received.withLock { $0.append(request.sequence) }
            count += 1
            if stream == 1, let failAfter, count > failAfter {
                throw RPCError(.unavailable, "connection lost")  // this batch is never acknowledged
            }
            let response = PublishUsageEventsResponse(acceptedCount: UInt64(request.events.count), sequence: request.sequence, epoch: request.epoch)
            try await onResponse(response as! Response)  // swiftlint:disable:this force_cast
        }
    }
}

struct FakePeers: PeerDirectory {
    let analytics: FakeAnalytics
    func transports(for role: Role) -> [any RPCClientTransport] { role == .analytics ? [analytics] : [] }
}

@Suite struct UsageShipperTests {
    func event(_ index: Int) -> UsageEvent {
        UsageEvent(correlationId: "request-\(index)-" + String(repeating: "x", count: 150), requestTimestampUnixMs: 1_795_860_000_000 + Int64(index))
    }

    func withShipper(analytics: FakeAnalytics, maxBytes: Int64, _ body: (UsageQueue, UsageSpool, UsageShipping) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-shipper-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let queue = UsageQueue(capacity: 100_000)
        let spool = try UsageSpool(directory: directory, maxBytes: maxBytes)
        let shipping = UsageShipping()
        let shipper = UsageShipper(queue: queue, batchSize: 50, logger: Logger(label: "test"), gatewayID: "gw-1", peers: FakePeers(analytics: analytics),
                                   spool: spool, shipping: shipping, window: 4, ackTimeout: .seconds(5))
        let running = Task { try await shipper.run() }
        defer { running.cancel() }
        try await body(queue, spool, shipping)
    }

    func waitFor(_ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while !condition() {
            guard ContinuousClock.now < deadline else { Issue.record("timed out waiting for \(what)"); return }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test func aLostStreamIsResumedFromTheOldestUnacknowledgedBatch() async throws {
        let analytics = FakeAnalytics(failAfter: 3)
        try await withShipper(analytics: analytics, maxBytes: 1 << 30) { queue, spool, shipping in
            for index in 0..<1000 { queue.enqueue(event(index)) }
            try await waitFor("every batch acknowledged") { queue.statistics.shipped == 1000 && !spool.hasPending }
            let received = analytics.received.withLock { $0 }
            #expect(analytics.streams.load(ordering: .relaxed) >= 2)
            // Every batch arrived, in order within each stream; 4 was sent again on the new stream.
            let last = spool.statistics.nextSequence - 1
            #expect(last >= 5 && Set(received) == Set(1...last), "\(received)")
            #expect(received.filter { $0 == 4 }.count == 2, "\(received)")
            #expect(shipping.snapshot.discarded.isEmpty)
        }
    }

    @Test func aFullSpoolDiscardsCountsAndKeepsItsCap() async throws {
        let analytics = FakeAnalytics(refuse: true)
        try await withShipper(analytics: analytics, maxBytes: 64 << 10) { queue, spool, shipping in
            for index in 0..<3000 { queue.enqueue(event(index)) }
            try await waitFor("the queue drained into the spool or the bin") { queue.statistics.queued == 0 && (shipping.snapshot.discarded["spool_full"] ?? 0) > 0 }
            try await Task.sleep(for: .milliseconds(300))
            let discarded = shipping.snapshot.discarded["spool_full"] ?? 0
            let spooled = spool.statistics.pendingEvents
            #expect(spool.pendingBytes <= 64 << 10)
            #expect(discarded + UInt64(spooled) == 3000, "discarded \(discarded), spooled \(spooled)")
            #expect(queue.statistics.discarded == discarded)
        }
    }
}
