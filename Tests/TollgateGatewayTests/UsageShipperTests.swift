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
/// every stream while `refusing` is set.
final class FakeAnalytics: RPCClientTransport {
    let received = Mutex<[UInt64]>([])
    /// Per batch received: its events and summary rows.
    let forms = Mutex<[(events: Int, summaries: Int)]>([])
    let streams = Atomic<Int>(0)
    let failAfter: Int?
    let refusing: Atomic<Bool>
    /// False plays a node older than `summaries`: it ignores them and says nothing of them.
    let countsSummaries: Bool

    init(failAfter: Int? = nil, refuse: Bool = false, countsSummaries: Bool = true) {
        self.failAfter = failAfter
        self.refusing = Atomic(refuse)
        self.countsSummaries = countsSummaries
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
        if refusing.load(ordering: .relaxed) { throw RPCError(.unavailable, "connection refused") }
        var count = 0
        for try await element in requests {
            // As an RPC server would: the bytes on the wire decoded as the method's request.
            let request = try PublishUsageEventsRequest(serializedBytes: element.serializedBytes())
            received.withLock { $0.append(request.sequence) }
            forms.withLock { $0.append((request.events.count, request.summaries.count)) }
            count += 1
            if stream == 1, let failAfter, count > failAfter {
                throw RPCError(.unavailable, "connection lost")  // this batch is never acknowledged
            }
            let calls = UInt64(request.events.count) + (countsSummaries ? request.summaries.reduce(0) { $0 + $1.requestCount } : 0)
            let response = PublishUsageEventsResponse(acceptedCount: calls, sequence: request.sequence, epoch: request.epoch,
                                                      summariesCounted: countsSummaries)
            try await onResponse(response as! Response)  // swiftlint:disable:this force_cast
        }
    }
}

/// Keeps the messages logged through it.
struct CapturingLogHandler: LogHandler {
    let sink: LogLines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        sink.lines.withLock { $0.append("\(event.level) \(event.message)") }
    }
}

final class LogLines: Sendable {
    let lines = Mutex<[String]>([])
    var logger: Logger { Logger(label: "test") { _ in CapturingLogHandler(sink: self) } }
}

struct FakePeers: PeerDirectory {
    let analytics: FakeAnalytics
    func transports(for role: Role) -> [any RPCClientTransport] { role == .analytics ? [analytics] : [] }
}

@Suite struct UsageShipperTests {
    /// Each call its own minute row (its own user), so batches take room in the spool as a call each.
    func event(_ index: Int) -> UsageEvent {
        UsageEvent(correlationId: "request-\(index)", requestTimestampUnixMs: 1_795_860_000_000 + Int64(index),
                   username: "user-\(index)-" + String(repeating: "x", count: 150))
    }

    func withShipper(analytics: FakeAnalytics, maxBytes: Int64, logger: Logger = Logger(label: "test"), failureLogInterval: Duration = .seconds(60),
                     _ body: (UsageQueue, UsageSpool, UsageShipping) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-shipper-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let queue = UsageQueue(capacity: 100_000)
        let spool = try UsageSpool(directory: directory, maxBytes: maxBytes)
        let shipping = UsageShipping()
        let shipper = UsageShipper(queue: queue, batchSize: 50, logger: logger, gatewayID: "gw-1", peers: FakePeers(analytics: analytics),
                                   spool: spool, shipping: shipping, window: 4, ackTimeout: .seconds(5), failureLogInterval: failureLogInterval)
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

    /// Batches spooled while no analytics node answered go out once one
    /// does, with no new batch to wake the shipper: after many refused
    /// streams, each cancelling its sender wherever it was.
    @Test func batchesSpooledDuringAnOutageGoOutWhenAnalyticsReturns() async throws {
        let analytics = FakeAnalytics(refuse: true)
        let log = LogLines()
        try await withShipper(analytics: analytics, maxBytes: 1 << 30, logger: log.logger, failureLogInterval: .seconds(1)) { queue, spool, shipping in
            for index in 0..<400 {
                queue.enqueue(event(index))
                if index % 50 == 49 { try await Task.sleep(for: .milliseconds(30)) }
            }
            try await waitFor("the queue drained into the spool") { queue.statistics.queued == 0 && spool.statistics.pendingEvents == 400 }
            // A few refused streams, then analytics is back and nothing new is queued.
            try await waitFor("several refused streams") { analytics.streams.load(ordering: .relaxed) >= 5 }
            analytics.refusing.store(false, ordering: .relaxed)
            try await waitFor("every spooled batch acknowledged") { queue.statistics.shipped == 400 && !spool.hasPending }
            #expect(Set(analytics.received.withLock { $0 }) == Set(1...(spool.statistics.nextSequence - 1)))
            // The outage was in the journal from its first refusal, then once per interval, not once per attempt.
            let lines = log.lines.withLock { $0 }
            let failing = lines.filter { $0.contains("still failing after") }
            let attempts = analytics.streams.load(ordering: .relaxed)
            let sawLoss = lines.contains { $0.contains("lost; batches wait in the spool") }
            let sawReturn = lines.contains { $0.contains("usage batches go to analytics") }
            #expect(sawLoss, "\(lines)")
            #expect(!failing.isEmpty, "\(lines)")
            #expect(failing.count < attempts - 1, "\(attempts) attempts: \(lines)")
            #expect(sawReturn, "\(lines)")
        }
    }

    /// A wait that starts in a cancelled task returns at once: nothing
    /// would ever wake it otherwise (the cause of a shipper stuck after an
    /// analytics outage, and of a gateway stop that hung until SIGKILL).
    @Test func waitsStartedAfterCancellationReturn() async throws {
        let wakeup = Wakeup()
        let waits = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            await wakeup.wait(timeout: .seconds(3600))
        }
        let freed = Atomic<Bool>(false)
        let watchdog = Task {
            try await Task.sleep(for: .seconds(20))
            // Free the wait so the test ends, failing.
            freed.store(true, ordering: .relaxed)
            wakeup.signal()
        }
        await waits.value
        watchdog.cancel()
        let wasFreed = freed.load(ordering: .relaxed)
        #expect(!wasFreed, "a wait begun in a cancelled task returned only when signalled")
    }

    /// Batches are folded into minute rows only once an analytics node has
    /// said it counts them; a node that does not gets a message per call,
    /// and the journal says why.
    @Test func batchesAreFoldedOnlyForANodeThatCountsSummaries() async throws {
        for counts in [true, false] {
            let analytics = FakeAnalytics(countsSummaries: counts)
            let log = LogLines()
            try await withShipper(analytics: analytics, maxBytes: 1 << 30, logger: log.logger) { queue, spool, _ in
                // Calls of one row each minute: a batch of 50 folds to one row.
                func call(_ index: Int) -> UsageEvent { UsageEvent(correlationId: "c\(index)", requestTimestampUnixMs: 1_795_860_000_000 + Int64(index)) }
                for index in 0..<50 { queue.enqueue(call(index)) }
                try await waitFor("the first batch acknowledged") { queue.statistics.shipped == 50 }
                for index in 50..<250 { queue.enqueue(call(index)) }
                try await waitFor("every batch acknowledged") { queue.statistics.shipped == 250 && !spool.hasPending }
                let forms = analytics.forms.withLock { $0 }
                #expect(forms.first?.events == 50 && forms.first?.summaries == 0, "\(forms)")
                if counts {
                    #expect(forms.dropFirst().allSatisfy { $0.events == 0 && $0.summaries == 1 }, "\(forms)")
                } else {
                    #expect(forms.allSatisfy { $0.summaries == 0 }, "\(forms)")
                    #expect(forms.map(\.events).reduce(0, +) == 250)
                    #expect(log.lines.withLock { $0 }.filter { $0.contains("does not count usage summaries") }.count == 1)
                }
            }
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

@Suite struct SpoolChecksumTests {
    /// The spool's CRC-32 is zlib's: its published check values, and a
    /// byte-at-a-time reference over every length and split of a buffer.
    @Test func crc32IsZlibsAtEveryLengthAndSplit() {
        #expect(CRC32.checksum([UInt8](), [UInt8]()) == 0)
        #expect(CRC32.checksum(Array("123456789".utf8), [UInt8]()) == 0xCBF4_3926)
        #expect(CRC32.checksum(Array("The quick brown ".utf8), Array("fox jumps over the lazy dog".utf8)) == 0x414F_A339)
        func reference(_ bytes: [UInt8]) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 != 0 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
            }
            return crc ^ 0xFFFF_FFFF
        }
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<67).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for length in 0...bytes.count {
            let prefix = Array(bytes[..<length])
            let expected = reference(prefix)
            for split in Set([0, length / 3, length / 2, length]) {
                #expect(CRC32.checksum(prefix[..<split], prefix[split...]) == expected, "length \(length), split \(split)")
            }
        }
    }
}
