import Foundation
import Synchronization

/// The gateway's write-ahead file of usage batches (docs/analytics.md,
/// "The spool"). Every batch gets its sequence number here and is appended
/// before it is sent; it leaves when analytics acknowledges it. So a batch
/// is either in the spool or acknowledged: an analytics outage, a lost
/// acknowledgement or a gateway killed with `kill -9` loses nothing and
/// re-sends what is unacknowledged, which analytics counts once.
///
/// Files: `<data directory>/usage-spool/segment-<first sequence>.spool`, each
/// a 24-byte header (`TGSPOOL1`, epoch, first sequence, big-endian) and
/// records of `length u32 · crc32 u32 · sequence u64 · events u32 · batch`
/// (the CRC covers what follows it). A new segment starts past
/// `segmentBytes`; a segment whose batches are all acknowledged is deleted,
/// except the newest, which keeps the next sequence number.
///
/// Durability: appends are `write(2)`s, which survive the process being
/// killed (the kernel holds them); `fdatasync` runs at shutdown and once a
/// batch has waited `syncInterval` unacknowledged (``syncIfDue(force:)``),
/// so a power loss costs at most that much. A torn or damaged record is
/// found by its length or CRC when the spool is opened, and the segment is
/// cut there (logged).
///
/// Epochs: a spool not closed cleanly (``close()`` leaves a marker), or one
/// whose tail was cut, may have lost appends whose numbers analytics has
/// already seen; numbering again from there would have new batches taken
/// for those and dropped as duplicates. So such a spool goes on under a new
/// epoch (numbers continuing), and the batches it still holds go out under
/// theirs.
final class UsageSpool: Sendable {
    struct Record: Sendable {
        let sequence: UInt64
        let events: Int
        let segment: UInt64
        let offset: Int64
        let length: Int
    }

    struct Recovery: Sendable {
        var epoch: UInt64
        var nextSequence: UInt64
        var pendingBatches: Int
        var pendingEvents: Int
        var cutBytes: Int64
        var problems: [String]
        /// Why the spool went on under a new epoch; nil when it did not.
        var newEpochReason: String?
    }

    private struct Segment {
        let firstSequence: UInt64
        let path: String
        var descriptor: Int32
        var size: Int64
        /// Unacknowledged records in this segment.
        var pending: Int
    }

    private struct State {
        var epoch: UInt64 = 0
        var nextSequence: UInt64 = 1
        var segments: [Segment] = []
        var pending: [Record] = []
        var pendingHead = 0
        var pendingBytes: Int64 = 0
        var totalBytes: Int64 = 0
        var dirty = false
        /// The next sequence as the previous ``syncIfDue(force:)`` found it.
        var syncMark: UInt64 = 0
        var syncs = 0
        /// Every epoch of a batch in the spool, and the current one.
        var epochs: Set<UInt64> = []
    }

    static let magic = Array("TGSPOOL1".utf8)
    /// Written by ``close()``, removed on opening: its absence says the
    /// last run ended without closing the spool.
    static let cleanMarker = "closed-cleanly"
    static let headerBytes = 24
    static let recordHeaderBytes = 20

    let directory: String
    let maxBytes: Int64
    let segmentBytes: Int64
    let syncInterval: Duration
    private let state = Mutex(State())

    /// Opens (creating) the spool in `directory`, reading what an earlier
    /// run left and cutting damaged tails.
    init(directory: String, maxBytes: Int64, segmentBytes: Int64 = 4 << 20, syncInterval: Duration = .seconds(1),
         now: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000)) throws {
        self.directory = directory
        self.maxBytes = maxBytes
        self.segmentBytes = segmentBytes
        self.syncInterval = syncInterval
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SpoolError("cannot create \(directory): \(String(cString: strerror(errno)))")
        }
        recovery = try state.withLock { state in try Self.recover(directory: directory, into: &state, now: now) }
    }

    /// What opening found.
    let recovery: Recovery

    struct SpoolError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    // MARK: Opening

    private static func recover(directory: String, into state: inout State, now: UInt64) throws -> Recovery {
        var recovery = Recovery(epoch: 0, nextSequence: 1, pendingBatches: 0, pendingEvents: 0, cutBytes: 0, problems: [])
        let marker = directory + "/" + cleanMarker
        let closedCleanly = access(marker, F_OK) == 0
        if closedCleanly {
            unlink(marker)
            syncDirectory(directory)
        }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix("segment-") && $0.hasSuffix(".spool") }.sorted()
        var epoch: UInt64?
        for name in names {
            let path = directory + "/" + name
            let descriptor = open(path, O_RDWR | O_CLOEXEC)
            guard descriptor >= 0 else { throw SpoolError("cannot open \(path): \(String(cString: strerror(errno)))") }
            var size = Int64(lseek(descriptor, 0, SEEK_END))
            var header = [UInt8](repeating: 0, count: headerBytes)
            guard size >= Int64(headerBytes), pread(descriptor, &header, headerBytes, 0) == headerBytes, Array(header[0..<8]) == magic else {
                recovery.problems.append("\(name): no valid header; removed (\(size) bytes)")
                recovery.cutBytes += max(0, size)
                Foundation.close(descriptor)
                unlink(path)
                continue
            }
            let segmentEpoch = readUInt64(header, 8)
            let first = readUInt64(header, 16)
            // Segments of earlier epochs precede those of later ones.
            if let epoch, segmentEpoch < epoch {
                recovery.problems.append("\(name): from epoch \(segmentEpoch), older than \(epoch) before it; kept as is")
            }
            epoch = max(epoch ?? 0, segmentEpoch)
            state.epochs.insert(segmentEpoch)
            var offset = Int64(headerBytes)
            var expected = first
            var segment = Segment(firstSequence: first, path: path, descriptor: descriptor, size: size, pending: 0)
            while offset < size {
                var head = [UInt8](repeating: 0, count: recordHeaderBytes)
                let problem: String?
                if size - offset < Int64(recordHeaderBytes) || pread(descriptor, &head, recordHeaderBytes, off_t(offset)) != recordHeaderBytes {
                    problem = "a torn record header"
                } else {
                    let length = Int(readUInt32(head, 0))
                    let crc = readUInt32(head, 4)
                    let sequence = readUInt64(head, 8)
                    let events = Int(readUInt32(head, 16))
                    if length > 64 << 20 || offset + Int64(recordHeaderBytes + length) > size {
                        problem = "a torn record"
                    } else {
                        var body = [UInt8](repeating: 0, count: length)
                        if length > 0 && pread(descriptor, &body, length, off_t(offset) + off_t(recordHeaderBytes)) != length {
                            problem = "an unreadable record"
                        } else if CRC32.checksum(head[8..<20], body) != crc {
                            problem = "a record failing its CRC"
                        } else if sequence != expected {
                            problem = "sequence \(sequence) where \(expected) was due"
                        } else {
                            problem = nil
                            state.pending.append(Record(sequence: sequence, events: events, segment: first, offset: offset + Int64(recordHeaderBytes),
                                                        length: length))
                            state.pendingBytes += Int64(recordHeaderBytes + length)
                            segment.pending += 1
                            recovery.pendingEvents += events
                            offset += Int64(recordHeaderBytes + length)
                            expected += 1
                            continue
                        }
                    }
                }
                if let problem {
                    recovery.problems.append("\(name): \(problem) at byte \(offset); cut \(size - offset) bytes")
                    recovery.cutBytes += size - offset
                    _ = ftruncate(descriptor, off_t(offset))
                    _ = fdatasync(descriptor)
                    size = offset
                    segment.size = size
                }
            }
            state.nextSequence = expected
            state.segments.append(segment)
            state.totalBytes += size
        }
        if let epoch {
            state.epoch = epoch
            if !closedCleanly || recovery.cutBytes > 0 {
                recovery.newEpochReason = recovery.cutBytes > 0 ? "a damaged tail was cut"
                    : "the spool was not closed (the gateway was killed, or the machine lost power)"
                state.epoch = max(now, epoch + 1)
                state.epochs.insert(state.epoch)
                // A newest segment without records is replaced: its file name is the new one's.
                if let last = state.segments.last, last.size <= Int64(headerBytes) {
                    Foundation.close(last.descriptor)
                    state.totalBytes -= last.size
                    state.segments.removeLast()
                }
                try startSegment(directory: directory, &state)
            }
        } else {
            // No spool yet, or none left: a new epoch, so sequences from 1
            // are never taken for an earlier run's.
            state.epoch = now
            state.nextSequence = 1
            state.epochs.insert(now)
        }
        if state.segments.isEmpty { try startSegment(directory: directory, &state) }
        recovery.epoch = state.epoch
        recovery.nextSequence = state.nextSequence
        recovery.pendingBatches = state.pending.count
        return recovery
    }

    private static func startSegment(directory: String, _ state: inout State) throws {
        let first = state.nextSequence
        let name = "segment-" + String(repeating: "0", count: max(0, 20 - String(first).count)) + String(first) + ".spool"
        let path = directory + "/" + name
        let descriptor = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw SpoolError("cannot create \(path): \(String(cString: strerror(errno)))") }
        var header = magic
        appendUInt64(&header, state.epoch)
        appendUInt64(&header, first)
        guard header.withUnsafeBytes({ write(descriptor, $0.baseAddress, $0.count) }) == header.count else {
            Foundation.close(descriptor)
            throw SpoolError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        _ = fdatasync(descriptor)
        // The directory entry too, so the segment survives a power loss.
        syncDirectory(directory)
        state.segments.append(Segment(firstSequence: first, path: path, descriptor: descriptor, size: Int64(headerBytes), pending: 0))
        state.totalBytes += Int64(headerBytes)
    }

    private static func syncDirectory(_ directory: String) {
        let descriptor = open(directory, O_RDONLY | O_CLOEXEC)
        if descriptor >= 0 {
            _ = fsync(descriptor)
            Foundation.close(descriptor)
        }
    }

    // MARK: Appending and acknowledging

    var epoch: UInt64 { state.withLock { $0.epoch } }

    /// Whether a batch of `epoch` is or was in this spool (acknowledgements
    /// name their batch's epoch, which after a restart may be an earlier one).
    func holds(epoch: UInt64) -> Bool { state.withLock { $0.epochs.contains(epoch) } }

    /// Appends a batch made by `make` with the next sequence number; nil
    /// (nothing written, no number used) when the spool is at its cap.
    func append(events: Int, make: (UInt64, UInt64) throws -> [UInt8]) throws -> (sequence: UInt64, bytes: Int)? {
        try state.withLock { state in
            let sequence = state.nextSequence
            let body = try make(state.epoch, sequence)
            let recordBytes = Int64(Self.recordHeaderBytes + body.count)
            guard state.pendingBytes + recordBytes <= maxBytes else { return nil }
            let current = state.segments[state.segments.count - 1]
            // A full segment, or a fully acknowledged one worth dropping, gives way to a new one.
            if current.size > Int64(Self.headerBytes)
                && (current.size + recordBytes > segmentBytes || (current.pending == 0 && current.size > 64 << 10)) {
                try Self.startSegment(directory: directory, &state)
                dropAcknowledgedSegments(&state)
            }
            var head: [UInt8] = []
            head.reserveCapacity(Self.recordHeaderBytes)
            Self.appendUInt32(&head, UInt32(body.count))
            Self.appendUInt32(&head, 0)
            Self.appendUInt64(&head, sequence)
            Self.appendUInt32(&head, UInt32(events))
            let crc = CRC32.checksum(head[8..<20], body)
            head[4] = UInt8(crc >> 24); head[5] = UInt8(crc >> 16 & 0xFF); head[6] = UInt8(crc >> 8 & 0xFF); head[7] = UInt8(crc & 0xFF)
            let index = state.segments.count - 1
            let segment = state.segments[index]
            let record = head + body
            var written = 0
            while written < record.count {
                let n = record[written...].withUnsafeBytes { pwrite(segment.descriptor, $0.baseAddress, $0.count, off_t(segment.size) + off_t(written)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    // Leave no partial record behind.
                    _ = ftruncate(segment.descriptor, off_t(segment.size))
                    throw SpoolError("cannot append to \(segment.path): \(String(cString: strerror(errno)))")
                }
                written += n
            }
            state.pending.append(Record(sequence: sequence, events: events, segment: segment.firstSequence,
                                        offset: segment.size + Int64(Self.recordHeaderBytes), length: body.count))
            state.segments[index].size += recordBytes
            state.segments[index].pending += 1
            state.pendingBytes += recordBytes
            state.totalBytes += recordBytes
            state.nextSequence += 1
            state.dirty = true
            return (sequence, record.count)
        }
    }

    /// Forgets every batch up to and including `sequence` (acknowledged);
    /// returns the events of those it held until now.
    @discardableResult
    func acknowledge(through sequence: UInt64) -> Int {
        state.withLock { state in
            var events = 0
            while state.pendingHead < state.pending.count && state.pending[state.pendingHead].sequence <= sequence {
                let record = state.pending[state.pendingHead]
                events += record.events
                state.pendingHead += 1
                state.pendingBytes -= Int64(Self.recordHeaderBytes + record.length)
                if let index = state.segments.firstIndex(where: { $0.firstSequence == record.segment }) {
                    state.segments[index].pending -= 1
                }
            }
            if state.pendingHead > 1024 && state.pendingHead * 2 > state.pending.count {
                state.pending.removeFirst(state.pendingHead)
                state.pendingHead = 0
            }
            dropAcknowledgedSegments(&state)
            return events
        }
    }

    private func dropAcknowledgedSegments(_ state: inout State) {
        while state.segments.count > 1 && state.segments[0].pending == 0 {
            let segment = state.segments.removeFirst()
            Foundation.close(segment.descriptor)
            unlink(segment.path)
            state.totalBytes -= segment.size
        }
    }

    /// Unacknowledged batches after `sequence` (0: from the oldest), oldest
    /// first, at most `limit`, read back from the files.
    func pending(after sequence: UInt64, limit: Int) throws -> [(sequence: UInt64, events: Int, bytes: [UInt8])] {
        try state.withLock { state in
            var out: [(UInt64, Int, [UInt8])] = []
            // The first record after `sequence`: sequences rise, though not
            // always by one (a deleted segment that a power loss brought back).
            var index = state.pendingHead, end = state.pending.count
            while index < end {
                let middle = (index + end) / 2
                if state.pending[middle].sequence <= sequence { index = middle + 1 } else { end = middle }
            }
            while index < state.pending.count && out.count < limit {
                let record = state.pending[index]
                index += 1
                if record.sequence <= sequence { continue }
                guard let segment = state.segments.first(where: { $0.firstSequence == record.segment }) else { continue }
                var body = [UInt8](repeating: 0, count: record.length)
                if record.length > 0 {
                    guard pread(segment.descriptor, &body, record.length, off_t(record.offset)) == record.length else {
                        throw SpoolError("cannot read \(segment.path): \(String(cString: strerror(errno)))")
                    }
                }
                out.append((record.sequence, record.events, body))
            }
            return out
        }
    }

    /// Called every half `syncInterval`: flushes appended records to the
    /// disk when one appended before the previous call is still
    /// unacknowledged (or on `force`). An acknowledged batch is analytics'
    /// to keep (statdb's commits are synced); flushing it here would only
    /// write pages the spool deletes a moment later. So while analytics
    /// keeps up, the spool costs no disk writes, and no batch waits longer
    /// than `syncInterval` unacknowledged and unflushed. (Appends lost to a
    /// power loss cannot be taken for later batches: see the epochs above.)
    func syncIfDue(force: Bool = false) {
        state.withLock { state in
            let mark = state.syncMark
            state.syncMark = state.nextSequence
            guard state.dirty, !state.segments.isEmpty else { return }
            if !force {
                guard state.pendingHead < state.pending.count, state.pending[state.pendingHead].sequence < mark else { return }
            }
            let newest = state.segments.count - 1
            for (index, segment) in state.segments.enumerated() where segment.pending > 0 || index == newest {
                _ = fdatasync(segment.descriptor)
            }
            state.dirty = false
            state.syncs += 1
        }
    }

    /// How many times the spool was flushed to the disk.
    var syncs: Int { state.withLock { $0.syncs } }

    var statistics: (pendingBatches: Int, pendingEvents: Int, pendingBytes: Int64, fileBytes: Int64, nextSequence: UInt64) {
        state.withLock { state in
            var events = 0
            for record in state.pending[state.pendingHead...] { events += record.events }
            return (state.pending.count - state.pendingHead, events, state.pendingBytes, state.totalBytes, state.nextSequence)
        }
    }

    var pendingBytes: Int64 { state.withLock { $0.pendingBytes } }
    var oldestPendingSequence: UInt64? { state.withLock { $0.pendingHead < $0.pending.count ? $0.pending[$0.pendingHead].sequence : nil } }
    var hasPending: Bool { state.withLock { $0.pendingHead < $0.pending.count } }

    /// Flushes the spool, closes its files and marks it closed cleanly.
    func close() {
        syncIfDue(force: true)
        let closed = state.withLock { state -> Bool in
            guard !state.segments.isEmpty else { return false }
            for segment in state.segments { Foundation.close(segment.descriptor) }
            state.segments.removeAll()
            return true
        }
        guard closed else { return }
        let descriptor = open(directory + "/" + Self.cleanMarker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if descriptor >= 0 {
            _ = fsync(descriptor)
            Foundation.close(descriptor)
            Self.syncDirectory(directory)
        }
    }

    // MARK: Bytes

    static func readUInt64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        bytes[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func readUInt32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func appendUInt64(_ bytes: inout [UInt8], _ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(value >> UInt64(shift) & 0xFF)) }
    }

    static func appendUInt32(_ bytes: inout [UInt8], _ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(value >> UInt32(shift) & 0xFF)) }
    }
}

/// CRC-32 (IEEE 802.3, as zlib computes it), eight bytes a step
/// ("slicing-by-8"): table k holds the CRC of a byte followed by k zero
/// bytes, so eight lookups fold eight bytes at once. A record of 512 calls
/// is some 150 KB; one byte a step cost a gateway about 4 % of its
/// shipping work.
enum CRC32 {
    /// Eight tables of 256, one after the other.
    static let tables: [UInt32] = {
        var tables = [UInt32](repeating: 0, count: 8 * 256)
        for index in 0..<256 {
            var c = UInt32(index)
            for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            tables[index] = c
        }
        for k in 1..<8 {
            for index in 0..<256 {
                let previous = tables[(k - 1) * 256 + index]
                tables[k * 256 + index] = (previous >> 8) ^ tables[Int(previous & 0xFF)]
            }
        }
        return tables
    }()

    static func checksum<A: Collection<UInt8>, B: Collection<UInt8>>(_ first: A, _ second: B) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        update(&crc, first)
        update(&crc, second)
        return crc ^ 0xFFFF_FFFF
    }

    private static func update<Bytes: Collection<UInt8>>(_ crc: inout UInt32, _ bytes: Bytes) {
        let done: Void? = bytes.withContiguousStorageIfAvailable { buffer in update(&crc, UnsafeRawBufferPointer(buffer)) }
        if done == nil { Array(bytes).withUnsafeBytes { update(&crc, $0) } }
    }

    private static func update(_ crc: inout UInt32, _ bytes: UnsafeRawBufferPointer) {
        tables.withUnsafeBufferPointer { t in
            var c = crc
            var index = 0
            while index + 8 <= bytes.count {
                let low = c ^ UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: index, as: UInt32.self))
                let high = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: index + 4, as: UInt32.self))
                c = t[7 * 256 + Int(low & 0xFF)] ^ t[6 * 256 + Int(low >> 8 & 0xFF)] ^ t[5 * 256 + Int(low >> 16 & 0xFF)] ^ t[4 * 256 + Int(low >> 24)]
                    ^ t[3 * 256 + Int(high & 0xFF)] ^ t[2 * 256 + Int(high >> 8 & 0xFF)] ^ t[256 + Int(high >> 16 & 0xFF)] ^ t[Int(high >> 24)]
                index += 8
            }
            while index < bytes.count {
                c = t[Int((c ^ UInt32(bytes[index])) & 0xFF)] ^ (c >> 8)
                index += 1
            }
            crc = c
        }
    }
}
