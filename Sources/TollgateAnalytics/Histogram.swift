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

/// A histogram being added to: dense per-bucket counts by index.
public struct HistogramAccumulator: Sendable, Hashable {
    public var counts: [UInt32: UInt64] = [:]
    public var count: UInt64 = 0
    public var sum: UInt64 = 0
    public var max: UInt64 = 0

    public init() {}

    public mutating func record(_ microseconds: UInt64) {
        counts[LatencyBuckets.index(of: microseconds), default: 0] += 1
        count += 1
        sum &+= microseconds
        if microseconds > max { max = microseconds }
    }

    public mutating func add(_ other: HistogramAccumulator) {
        for (index, value) in other.counts { counts[index, default: 0] += value }
        count += other.count
        sum &+= other.sum
        if other.max > max { max = other.max }
    }

    public mutating func add(_ stored: LatencyHistogram) {
        for (index, value) in zip(stored.bucketIndexes, stored.bucketCounts) { counts[index, default: 0] += value }
        count += stored.count
        sum &+= stored.sumUs
        if stored.maxUs > max { max = stored.maxUs }
    }

    /// `stored` with this histogram added, sparse and sorted.
    public func merged(into stored: LatencyHistogram) -> LatencyHistogram {
        guard count > 0 else { return stored }
        var out = LatencyHistogram(count: stored.count + count, sumUs: stored.sumUs &+ sum, maxUs: Swift.max(stored.maxUs, max))
        let mine = counts.sorted { $0.key < $1.key }
        out.bucketIndexes.reserveCapacity(stored.bucketIndexes.count + mine.count)
        out.bucketCounts.reserveCapacity(stored.bucketIndexes.count + mine.count)
        var i = 0, j = 0
        while i < stored.bucketIndexes.count || j < mine.count {
            if j == mine.count || (i < stored.bucketIndexes.count && stored.bucketIndexes[i] < mine[j].key) {
                out.bucketIndexes.append(stored.bucketIndexes[i])
                out.bucketCounts.append(i < stored.bucketCounts.count ? stored.bucketCounts[i] : 0)
                i += 1
            } else if i == stored.bucketIndexes.count || mine[j].key < stored.bucketIndexes[i] {
                out.bucketIndexes.append(mine[j].key)
                out.bucketCounts.append(mine[j].value)
                j += 1
            } else {
                out.bucketIndexes.append(mine[j].key)
                out.bucketCounts.append((i < stored.bucketCounts.count ? stored.bucketCounts[i] : 0) + mine[j].value)
                i += 1
                j += 1
            }
        }
        return out
    }

    public var histogram: LatencyHistogram { merged(into: LatencyHistogram()) }

    /// The value at quantile `q` (0…1): the midpoint of the bucket holding
    /// the ⌈q·count⌉-th smallest value, never above the largest seen.
    public func quantile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = Swift.max(1, UInt64((q * Double(count)).rounded(.up)))
        var seen: UInt64 = 0
        for (index, value) in counts.sorted(by: { $0.key < $1.key }) {
            seen += value
            if seen >= rank { return Swift.min(LatencyBuckets.representative(of: index), max) }
        }
        return max
    }

    /// Several quantiles at once (one sort).
    public func quantiles(_ qs: [Double]) -> [UInt64] {
        guard count > 0 else { return qs.map { _ in 0 } }
        let sorted = counts.sorted { $0.key < $1.key }
        return qs.map { q in
            let rank = Swift.max(1, UInt64((q * Double(count)).rounded(.up)))
            var seen: UInt64 = 0
            for (index, value) in sorted {
                seen += value
                if seen >= rank { return Swift.min(LatencyBuckets.representative(of: index), max) }
            }
            return max
        }
    }
}
