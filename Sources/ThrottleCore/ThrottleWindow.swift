public import TollgateProto

/// A fixed throttling window, `[start, end)` in Unix milliseconds.
public struct ThrottleWindow: Hashable, Sendable, CustomStringConvertible {
    public let start: Int64
    public let end: Int64

    public init(start: Int64, end: Int64) {
        self.start = start
        self.end = end
    }

    public var length: Int64 { end - start }

    public func contains(_ instant: Int64) -> Bool { instant >= start && instant < end }

    /// Whole seconds from `now` to the end, rounded up (Retry-After, RateLimit-Reset).
    public func secondsToEnd(from now: Int64) -> Int {
        max(0, Int((end - now + 999) / 1000))
    }

    public var description: String { "[\(start), \(end))" }
}

/// How long a quota's windows are: `count` × `unit`, aligned as WSO2's
/// Siddhi plans align `timeBatch(length, 0)`: to the Unix epoch, so every
/// node computes the same window from its own clock (docs/throttling.md §1).
public struct WindowSpec: Hashable, Sendable {
    public let unit: TimeUnit
    public let count: Int64

    /// A unit the proto does not know, or a zero count, is read as one
    /// minute: a limit is never dropped for a malformed window.
    public init(unit: TimeUnit, count: UInt32) {
        switch unit {
        case .second, .minute, .hour, .day, .month, .year: self.unit = unit
        default: self.unit = .minute
        }
        self.count = Int64(max(1, count))
    }

    public init(_ limit: ThrottleLimit) {
        self.init(unit: limit.timeUnit, count: limit.unitTime)
    }

    static let millisecondsPerDay: Int64 = 86_400_000

    /// The window holding `instant`.
    public func window(containing instant: Int64) -> ThrottleWindow {
        let fixed: Int64? = switch unit {
        case .second: 1000
        case .minute: 60_000
        case .hour: 3_600_000
        case .day: Self.millisecondsPerDay
        default: nil
        }
        if let fixed {
            let length = fixed * count
            let start = Self.floorDivide(instant, length) * length
            return ThrottleWindow(start: start, end: start + length)
        }
        // Calendar months and years (UTC), in blocks of `count` from January 1970.
        let days = Self.floorDivide(instant, Self.millisecondsPerDay)
        let (year, month, _) = CivilDate.from(daysSinceEpoch: days)
        let monthsPerBlock = unit == .year ? 12 * count : count
        let monthIndex = (year - 1970) * 12 + (month - 1)
        let blockStart = Self.floorDivide(monthIndex, monthsPerBlock) * monthsPerBlock
        let blockEnd = blockStart + monthsPerBlock
        func instantOf(monthIndex: Int64) -> Int64 {
            let year = 1970 + Self.floorDivide(monthIndex, 12)
            let month = monthIndex - Self.floorDivide(monthIndex, 12) * 12 + 1
            return CivilDate.daysSinceEpoch(year: year, month: month, day: 1) * Self.millisecondsPerDay
        }
        return ThrottleWindow(start: instantOf(monthIndex: blockStart), end: instantOf(monthIndex: blockEnd))
    }

    /// The window after `window`.
    public func window(after window: ThrottleWindow) -> ThrottleWindow {
        self.window(containing: window.end)
    }

    static func floorDivide(_ a: Int64, _ b: Int64) -> Int64 {
        let quotient = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? quotient - 1 : quotient
    }
}

/// Proleptic Gregorian dates from and to days since 1970-01-01 (the
/// days-from-civil algorithm), so month windows need no calendar library.
enum CivilDate {
    static func daysSinceEpoch(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = WindowSpec.floorDivide(y, 400)
        let yearOfEra = y - era * 400
        let monthFromMarch = month > 2 ? month - 3 : month + 9
        let dayOfYear = (153 * monthFromMarch + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    static func from(daysSinceEpoch days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = WindowSpec.floorDivide(z, 146_097)
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthFromMarch = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthFromMarch + 2) / 5 + 1
        let month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

/// A quota as the throttler counts it: units per window.
public struct Quota: Hashable, Sendable {
    public enum Unit: Sendable, Hashable { case requests, bytes }
    public let amount: UInt64
    public let unit: Unit
    public let windows: WindowSpec

    public init(amount: UInt64, unit: Unit, windows: WindowSpec) {
        self.amount = amount
        self.unit = unit
        self.windows = windows
    }

    /// The quota of a proto limit; nil when it has none (unlimited).
    public init?(_ limit: ThrottleLimit?) {
        guard let limit else { return nil }
        switch limit.quota {
        case .requestCount(let count)?: self.init(amount: count, unit: .requests, windows: WindowSpec(limit))
        case .bandwidthBytes(let bytes)?: self.init(amount: bytes, unit: .bytes, windows: WindowSpec(limit))
        case nil: return nil
        }
    }

    /// WSO2's "Unlimited" tiers are 2^31 − 1 a minute: not worth a lease.
    public var isUnlimited: Bool { amount >= 2_147_483_647 }
}
