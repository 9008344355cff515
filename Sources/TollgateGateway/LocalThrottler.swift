import Synchronization
import TollgateProto

/// The gateway's own counters for the limits a request is subject to, in
/// fixed windows aligned to the epoch (a per-minute limit resets on the
/// minute). It enforces each limit per gateway; the traffic manager's quota
/// leases make them cluster-wide.
final class LocalThrottler: Sendable {
    private struct Window {
        var start: Int64
        var used: UInt64
    }

    /// What a counter counts, without building a string per request.
    struct Key: Hashable {
        enum Kind: UInt8 { case api, resource, subscription, spikeArrest, application, hardLimit }
        let kind: Kind
        let first: String
        let second: String
        let third: String

        init(_ kind: Kind, _ first: String, _ second: String = "", _ third: String = "") {
            self.kind = kind
            self.first = first
            self.second = second
            self.third = third
        }
    }

    private let windows = Mutex<[Key: Window]>([:])
    private let maxKeys: Int

    init(maxKeys: Int = 1_000_000) {
        self.maxKeys = maxKeys
    }

    struct Verdict {
        let admitted: Bool
        let limit: UInt64
        let remaining: UInt64
        let resetAtUnixMs: Int64
    }

    /// Window length of a limit in milliseconds; nil for an unlimited or malformed one.
    static func windowMs(_ limit: ThrottleLimit) -> Int64? {
        let unit: Int64 = switch limit.timeUnit {
        case .second: 1000
        case .minute: 60_000
        case .hour: 3_600_000
        case .day: 86_400_000
        case .month: 30 * 86_400_000
        case .year: 365 * 86_400_000
        default: 0
        }
        let length = unit * Int64(max(1, limit.unitTime))
        return length > 0 ? length : nil
    }

    /// Counts one request (or, for a bandwidth quota, checks the bytes used
    /// so far) against `limit` under `key`.
    func admit(_ key: Key, limit: ThrottleLimit, now: Int64) -> Verdict? {
        guard let quota = limit.quota, let length = Self.windowMs(limit) else { return nil }
        let start = now - now % length
        let (cap, isBandwidth): (UInt64, Bool) = switch quota {
        case .requestCount(let count): (count, false)
        case .bandwidthBytes(let bytes): (bytes, true)
        }
        return windows.withLock { windows in
            if windows.count >= maxKeys { windows = windows.filter { $0.value.start == start } }
            var window = windows[key] ?? Window(start: start, used: 0)
            if window.start != start { window = Window(start: start, used: 0) }
            let admitted = window.used < cap
            if admitted && !isBandwidth { window.used += 1 }
            windows[key] = window
            return Verdict(admitted: admitted, limit: cap, remaining: cap - min(cap, window.used), resetAtUnixMs: start + length)
        }
    }

    /// Adds payload bytes to a bandwidth quota's window.
    func consume(_ key: Key, bytes: UInt64, limit: ThrottleLimit, now: Int64) {
        guard case .bandwidthBytes? = limit.quota, let length = Self.windowMs(limit) else { return }
        let start = now - now % length
        windows.withLock { windows in
            var window = windows[key] ?? Window(start: start, used: 0)
            if window.start != start { window = Window(start: start, used: 0) }
            window.used += bytes
            windows[key] = window
        }
    }

    var keyCount: Int { windows.withLock { $0.count } }

    func flush() -> Int {
        windows.withLock { windows in
            let count = windows.count
            windows.removeAll()
            return count
        }
    }
}
