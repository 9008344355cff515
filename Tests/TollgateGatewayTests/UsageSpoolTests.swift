import Foundation
import Testing
@testable import TollgateGateway
import TollgateProto

@Suite struct UsageSpoolTests {
    func withDirectory<Result>(_ body: (String) throws -> Result) throws -> Result {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-spool-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(path)
    }

    func batch(_ epoch: UInt64, _ sequence: UInt64, events: Int = 3) throws -> [UInt8] {
        var request = PublishUsageEventsRequest(gatewayId: "gw", epoch: epoch, sequence: sequence)
        request.events = (0..<events).map { UsageEvent(correlationId: "e\(sequence)-\($0)", requestTimestampUnixMs: 1000) }
        return try request.serializedBytes()
    }

    func append(_ spool: UsageSpool, count: Int) throws -> [UInt64] {
        try (0..<count).map { _ in try #require(try spool.append(events: 3) { try batch($0, $1) }).sequence }
    }

    @Test func sequencesAndUnacknowledgedBatchesSurviveAReopen() throws {
        try withDirectory { directory in
            let spool = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 42)
            #expect(try append(spool, count: 5) == [1, 2, 3, 4, 5])
            // The events of the batches an acknowledgement releases (the shipped count), once.
            #expect(spool.acknowledge(through: 2) == 6)
            #expect(spool.acknowledge(through: 2) == 0)
            #expect(spool.statistics.pendingBatches == 3)
            #expect(try spool.pending(after: 0, limit: 10).map(\.sequence) == [3, 4, 5])
            #expect(try spool.pending(after: 3, limit: 1).map(\.sequence) == [4])
            // Killed here (no close, no sync): the kernel has the writes.
            let reopened = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 99)
            #expect(reopened.recovery.nextSequence == 6)
            #expect(reopened.recovery.problems.isEmpty)
            // Not closed: had a power loss cost the newest appends, numbering
            // on would reuse numbers analytics has seen. A new epoch, numbers going on.
            #expect(reopened.recovery.epoch == 99 && reopened.recovery.newEpochReason != nil)
            #expect(reopened.holds(epoch: 42) && reopened.holds(epoch: 99))
            // Acknowledgements are not persisted: 1 and 2 come again, and analytics answers them as duplicates.
            let pending = try reopened.pending(after: 0, limit: 10)
            #expect(pending.map(\.sequence) == [1, 2, 3, 4, 5])
            let decoded = try PublishUsageEventsRequest(serializedBytes: pending[3].bytes)
            #expect(decoded.sequence == 4 && decoded.epoch == 42 && decoded.events.count == 3, "a spooled batch keeps its epoch")
            #expect(try append(reopened, count: 1) == [6])
            let sixth = try PublishUsageEventsRequest(serializedBytes: try #require(try reopened.pending(after: 5, limit: 1).first).bytes)
            #expect(sixth.epoch == 99 && sixth.sequence == 6)
            // Closed cleanly, the next run keeps the epoch.
            reopened.close()
            let again = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 500)
            #expect(again.recovery.epoch == 99 && again.recovery.newEpochReason == nil && again.recovery.nextSequence == 7)
            #expect(try again.pending(after: 0, limit: 10).map(\.sequence) == [1, 2, 3, 4, 5, 6])
            // And a run that is killed again moves on once more.
            let killed = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 600)
            #expect(killed.recovery.epoch == 600 && killed.recovery.nextSequence == 7)
        }
    }

    @Test func aBatchIsFlushedOnlyOnceItWaitedUnacknowledged() throws {
        try withDirectory { directory in
            let spool = try UsageSpool(directory: directory, maxBytes: 1 << 20)
            // Acknowledged at once, as while analytics keeps up: never flushed.
            for _ in 0..<3 {
                let sequence = try append(spool, count: 1)
                spool.acknowledge(through: sequence[0])
                spool.syncIfDue()
            }
            spool.syncIfDue()
            #expect(spool.syncs == 0)
            // One left unacknowledged: flushed at the second call after it (half an interval apart).
            _ = try append(spool, count: 1)
            spool.syncIfDue()
            #expect(spool.syncs == 0)
            spool.syncIfDue()
            #expect(spool.syncs == 1)
            spool.syncIfDue()
            #expect(spool.syncs == 1, "nothing new to flush")
            spool.close()
            #expect(spool.syncs == 1)
        }
    }

    @Test func batchesAfterAHoleInTheSequencesAreStillSent() throws {
        try withDirectory { directory in
            // Small segments; the first one kept aside as a power loss would keep a deleted file.
            let spool = try UsageSpool(directory: directory, maxBytes: 1 << 30, segmentBytes: 2048)
            let sequences = try append(spool, count: 200)
            let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".spool") }.sorted()
            #expect(files.count > 3)
            let first = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + files[0]))
            spool.acknowledge(through: sequences[149])
            spool.close()
            try first.write(to: URL(fileURLWithPath: directory + "/" + files[0]))
            let reopened = try UsageSpool(directory: directory, maxBytes: 1 << 30, segmentBytes: 2048)
            let all = try reopened.pending(after: 0, limit: 1000).map(\.sequence)
            #expect(all.first == 1 && all.last == 200 && all.count < 200, "\(all)")
            // Sent a few at a time, as the shipper does, every batch goes out once, in order.
            var sent: [UInt64] = []
            var after: UInt64 = 0
            while true {
                let next = try reopened.pending(after: after, limit: 3)
                guard let last = next.last else { break }
                sent += next.map(\.sequence)
                after = last.sequence
            }
            #expect(sent == all)
        }
    }

    @Test func aTornOrDamagedTailIsCutAndTheRestKept() throws {
        try withDirectory { directory in
            let spool = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 7)
            _ = try append(spool, count: 4)
            spool.close()
            let file = try #require(try FileManager.default.contentsOfDirectory(atPath: directory).first { $0.hasSuffix(".spool") })
            let path = directory + "/" + file
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            let whole = bytes.count
            // A torn last record: half of it written.
            bytes.removeLast(20)
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let torn = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 8)
            #expect(torn.recovery.nextSequence == 4)
            #expect(torn.recovery.pendingBatches == 3)
            #expect(torn.recovery.cutBytes > 0 && torn.recovery.problems.count == 1, "\(torn.recovery.problems)")
            // Batch 4 may have reached analytics before it was lost here: the next 4 goes under a new epoch.
            #expect(torn.recovery.epoch == 8 && torn.recovery.newEpochReason?.contains("cut") == true)
            torn.close()
            let cut = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(cut.count < whole - 20)
            // A flipped bit in the second record: it and what follows are cut.
            var damaged = cut
            let second = UsageSpool.headerBytes + (cut.count - UsageSpool.headerBytes) / 3 + 30
            damaged[second] ^= 0x40
            try Data(damaged).write(to: URL(fileURLWithPath: path))
            let reopened = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 9)
            #expect(reopened.recovery.pendingBatches == 1, "\(reopened.recovery.problems)")
            // The new epoch's segment (from 4) still holds the next number.
            #expect(reopened.recovery.nextSequence == 4 && reopened.recovery.epoch == 9)
            #expect(reopened.recovery.problems.first?.contains("CRC") == true, "\(reopened.recovery.problems)")
            #expect(try append(reopened, count: 1) == [4])
            // Garbage instead of headers: the files are dropped, a new epoch begins from 1.
            reopened.close()
            for name in try FileManager.default.contentsOfDirectory(atPath: directory) where name.hasSuffix(".spool") {
                try Data("not a spool".utf8).write(to: URL(fileURLWithPath: directory + "/" + name))
            }
            let fresh = try UsageSpool(directory: directory, maxBytes: 1 << 20, now: 1234)
            #expect(fresh.recovery.epoch == 1234 && fresh.recovery.nextSequence == 1)
        }
    }

    @Test func theCapRefusesBatchesWithoutUsingSequenceNumbers() throws {
        try withDirectory { directory in
            let one = try batch(1, 1).count + UsageSpool.recordHeaderBytes
            let spool = try UsageSpool(directory: directory, maxBytes: Int64(one * 3 + 5), now: 1)
            #expect(try append(spool, count: 3) == [1, 2, 3])
            #expect(try spool.append(events: 3) { try batch($0, $1) } == nil)
            #expect(spool.pendingBytes == Int64(one * 3))
            spool.acknowledge(through: 1)
            #expect(try spool.append(events: 3) { try batch($0, $1) }?.sequence == 4)
        }
    }

    @Test func acknowledgedSegmentsAreDeleted() throws {
        try withDirectory { directory in
            let spool = try UsageSpool(directory: directory, maxBytes: 1 << 30, segmentBytes: 2048)
            let sequences = try append(spool, count: 200)
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory).count > 3)
            spool.acknowledge(through: sequences.last!)
            _ = try append(spool, count: 1)
            let left = try FileManager.default.contentsOfDirectory(atPath: directory)
            #expect(left.count == 1, "\(left)")
            #expect(spool.statistics.fileBytes < 2048 + 1024)
            let reopened = try UsageSpool(directory: directory, maxBytes: 1 << 30, segmentBytes: 2048)
            #expect(reopened.recovery.nextSequence == 202)
        }
    }
}
