public import TollgateProto

/// Log-linear latency buckets in microseconds: values under 32 µs each have
/// a bucket; above, every power of two is split in 16 equal buckets. A
/// bucket's midpoint is within 1/32 (3.125 %) of any value in it, so a
/// quantile read from a histogram is within 3.125 % of the exact value of
/// that rank (docs/analytics.md, "Latency"). Histograms merge by adding
/// counts bucket by bucket, so minute, hour and day histograms answer
/// quantiles alike.
public enum LatencyBuckets {
    /// Exact buckets below this value.
    static let linearLimit: UInt64 = 32
    static let subBuckets: UInt64 = 16
    /// The documented bound on a quantile's relative error.
    public static let relativeError = 1.0 / 32

    public static func index(of microseconds: UInt64) -> UInt32 {
        if microseconds < linearLimit { return UInt32(microseconds) }
        let exponent = UInt64(63 - microseconds.leadingZeroBitCount)  // ≥ 5
        let sub = (microseconds >> (exponent - 4)) & (subBuckets - 1)
        return UInt32(linearLimit + (exponent - 5) * subBuckets + sub)
    }

    /// The lowest value of a bucket and its width.
    public static func bounds(of index: UInt32) -> (lower: UInt64, width: UInt64) {
        let index = UInt64(index)
        if index < linearLimit { return (index, 1) }
        let exponent = (index - linearLimit) / subBuckets + 5
        let sub = (index - linearLimit) % subBuckets
        return ((subBuckets + sub) << (exponent - 4), 1 << (exponent - 4))
    }

    /// The value a bucket stands for: its midpoint (exact below 32 µs).
    public static func representative(of index: UInt32) -> UInt64 {
        let (lower, width) = bounds(of: index)
        return lower + width / 2
    }
}

/// A histogram being added to: counts of the buckets from `first` on, in
/// one dense array (adding two is adding arrays; no hashing).
public struct HistogramAccumulator: Sendable, Hashable {
    public private(set) var first: UInt32 = 0
    public private(set) var counts: [UInt64] = []
    public var count: UInt64 = 0
    public var sum: UInt64 = 0
    public var max: UInt64 = 0

    public init() {}

    /// Buckets added beyond what a growing histogram needs: latencies
    /// arrive spread, and without room to spare each new lowest or highest
    /// bucket would reallocate (and, below, move) the whole array.
    static let growthSlack: UInt32 = 8
    static let highestIndex = LatencyBuckets.index(of: .max)

    /// Makes room for buckets `low...high`.
    private mutating func cover(_ low: UInt32, _ high: UInt32) {
        if counts.isEmpty {
            first = low
            counts = [UInt64](repeating: 0, count: Int(high - low) + 1)
            return
        }
        if low < first {
            let start = low > Self.growthSlack ? low - Self.growthSlack : 0
            counts.insert(contentsOf: repeatElement(0, count: Int(first - start)), at: 0)
            first = start
        }
        let last = first + UInt32(counts.count) - 1
        if high > last {
            let end = Swift.min(Self.highestIndex, Swift.max(high, last + Self.growthSlack))
            counts.append(contentsOf: repeatElement(0, count: Int(end - last)))
        }
    }

    public mutating func record(_ microseconds: UInt64) {
        let index = LatencyBuckets.index(of: microseconds)
        cover(index, index)
        counts[Int(index - first)] += 1
        count += 1
        sum &+= microseconds
        if microseconds > max { max = microseconds }
    }

    public mutating func add(_ other: HistogramAccumulator) {
        guard other.count > 0 || !other.counts.isEmpty else { return }
        if !other.counts.isEmpty {
            cover(other.first, other.first + UInt32(other.counts.count) - 1)
            let offset = Int(other.first - first)
            for (i, value) in other.counts.enumerated() where value > 0 { counts[offset + i] += value }
        }
        count += other.count
        sum &+= other.sum
        if other.max > max { max = other.max }
    }

    public mutating func add(_ stored: LatencyHistogram) {
        if let low = stored.bucketIndexes.first, let high = stored.bucketIndexes.last {
            cover(min(low, high), Swift.max(low, high))
            for (index, value) in zip(stored.bucketIndexes, stored.bucketCounts) { counts[Int(index - first)] += value }
        }
        if !stored.denseCounts.isEmpty {
            cover(stored.firstBucket, stored.firstBucket + UInt32(stored.denseCounts.count) - 1)
            let offset = Int(stored.firstBucket - first)
            for (i, value) in stored.denseCounts.enumerated() where value > 0 { counts[offset + i] += value }
        }
        count += stored.count
        sum &+= stored.sumUs
        if stored.maxUs > max { max = stored.maxUs }
    }

    /// `stored` with this histogram added, in the smaller of the two forms.
    public func merged(into stored: LatencyHistogram) -> LatencyHistogram {
        guard count > 0 else { return stored }
        var all = self
        all.add(stored)
        return all.histogram
    }

    /// This histogram as stored: sparse when few buckets are used, dense otherwise.
    public var histogram: LatencyHistogram {
        var out = LatencyHistogram(count: count, sumUs: sum, maxUs: max)
        guard let low = counts.firstIndex(where: { $0 > 0 }), let high = counts.lastIndex(where: { $0 > 0 }) else { return out }
        let used = counts[low...high].reduce(0) { $0 + ($1 > 0 ? 1 : 0) }
        // A sparse entry costs about three bytes (index and count), a dense one one or two.
        if used * 3 < (high - low + 1) * 2 {
            for i in low...high where counts[i] > 0 {
                out.bucketIndexes.append(first + UInt32(i))
                out.bucketCounts.append(counts[i])
            }
        } else {
            out.firstBucket = first + UInt32(low)
            out.denseCounts = Array(counts[low...high])
        }
        return out
    }

    /// The value at quantile `q` (0…1): the midpoint of the bucket holding
    /// the ⌈q·count⌉-th smallest value, never above the largest seen.
    public func quantile(_ q: Double) -> UInt64 {
        quantiles([q])[0]
    }

    /// Several quantiles in one pass.
    public func quantiles(_ qs: [Double]) -> [UInt64] {
        let total = counts.reduce(0, +)
        guard total > 0 else { return qs.map { _ in 0 } }
        return qs.map { q in
            let rank = Swift.max(1, UInt64((q * Double(total)).rounded(.up)))
            var seen: UInt64 = 0
            for (i, value) in counts.enumerated() where value > 0 {
                seen += value
                if seen >= rank { return Swift.min(LatencyBuckets.representative(of: first + UInt32(i)), max) }
            }
            return max
        }
    }
}
