import ArgumentParser
import Foundation
import RPCCore
import TollctlCharts
import TollgateProto
import TollgateServices

struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats", abstract: "API usage from the analytics summaries (statdb): tables, terminal charts, JSON or CSV (docs/analytics.md).",
        discussion: """
            Providers see their own APIs, consumers their own applications, a tenant's administrators the whole tenant, and the \
            holder of an admin certificate every tenant. Ask an analytics, publisher or store node (the latter two read the \
            statdb of their host).
            """,
        subcommands: [StatsUsage.self, StatsLatency.self, StatsFaults.self, StatsThrottled.self, StatsTop.self])
}

enum StatsOutput: String, ExpressibleByArgument, CaseIterable {
    case table, json, csv
}

enum StatsDimension: String, ExpressibleByArgument, CaseIterable {
    case api, version, application, user, resource, keyType = "key-type", status, tenant

    var proto: UsageDimension {
        switch self {
        case .api: .api
        case .version: .apiVersion
        case .application: .application
        case .user: .user
        case .resource: .resource
        case .keyType: .keyType
        case .status: .statusClass
        case .tenant: .tenant
        }
    }
}

enum StatsGranularity: String, ExpressibleByArgument, CaseIterable {
    case minute, hour, day, week, auto

    var proto: BucketGranularity {
        switch self {
        case .minute: .minute
        case .hour: .hour
        case .day: .day
        case .week: .week
        case .auto: .unspecified
        }
    }
}

/// The time range, filters and output every stats command takes.
struct StatsOptions: ParsableArguments {
    @Option(help: "How far back from now: 30m, 6h, 7d (ignored with --from).") var since: String = "24h"
    @Option(help: "Start: ISO 8601 (2026-11-28T10:00:00Z) or Unix milliseconds.") var from: String?
    @Option(help: "End (exclusive), same forms; default now.") var to: String?
    @Option(help: "Bucket length: minute, hour, day, week (from Monday, UTC) or auto.") var granularity: StatsGranularity = .auto
    @Option(name: .customLong("by"), parsing: .upToNextOption,
            help: "Group by: api, version, application, user, resource, key-type, status, tenant (several allowed).")
    var groupBy: [StatsDimension] = []
    @Option(name: .customLong("api"), help: "Only this API (name).") var apiName: String?
    @Option(name: .customLong("api-version"), help: "Only this API version.") var apiVersion: String?
    @Option(help: "Only this API context, e.g. /menu.") var context: String?
    @Option(help: "Only APIs of this provider.") var creator: String?
    @Option(name: .customLong("app"), help: "Only this application id.") var application: String?
    @Option(help: "Only calls of this end user.") var user: String?
    @Option(help: "Only this resource (URI template), e.g. /items/{id}.") var resource: String?
    @Option(name: .customLong("status"), help: "Only these status classes, e.g. 4,5.") var statuses: String?
    @Option(name: .customLong("key-type"), help: "production or sandbox.") var keyType: String?
    @Option(name: .customLong("for-tenant"), help: "Admin certificate holders: only this tenant.") var forTenant: String?
    @Flag(help: "Draw the time series in the terminal.") var chart = false
    @Option(help: "Chart height in text rows.") var chartHeight: Int = 8
    @Option(help: "table, json or csv") var output: StatsOutput = .table

    func request() throws -> QueryUsageRequest {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        var request = QueryUsageRequest()
        request.endUnixMs = try to.map(Self.time) ?? now
        request.startUnixMs = try from.map(Self.time) ?? request.endUnixMs - Self.duration(since)
        request.granularity = granularity.proto
        request.groupBy = groupBy.map(\.proto)
        request.apiName = apiName ?? ""
        request.apiVersion = apiVersion ?? ""
        request.apiContext = context ?? ""
        request.apiCreator = creator ?? ""
        request.applicationId = application ?? ""
        request.username = user ?? ""
        request.resource = resource ?? ""
        request.tenantDomain = forTenant ?? ""
        if let statuses {
            request.statusClasses = try statuses.split(separator: ",").map { text in
                let digit = text.trimmingCharacters(in: .whitespaces).prefix(1)
                guard let value = UInt32(digit), (1...5).contains(value) else { throw ValidationError("--status takes classes 1 to 5, e.g. 4,5 (or 4xx,5xx)") }
                return value
            }
        }
        switch keyType?.lowercased() {
        case nil: break
        case "production": request.keyType = .production
        case "sandbox": request.keyType = .sandbox
        default: throw ValidationError("--key-type is production or sandbox")
        }
        return request
    }

    static func duration(_ text: String) throws -> Int64 {
        guard let unit = text.last, let value = Int64(text.dropLast()), value > 0 else {
            throw ValidationError("--since takes a number and a unit: 30m, 6h, 7d")
        }
        switch unit {
        case "m": return value * 60_000
        case "h": return value * 3_600_000
        case "d": return value * 86_400_000
        default: throw ValidationError("--since takes a number and a unit: 30m, 6h, 7d")
        }
    }

    static func time(_ text: String) throws -> Int64 {
        if let milliseconds = Int64(text) { return milliseconds }
        let formatter = ISO8601DateFormatter()
        if let date = formatter.date(from: text) { return Int64(date.timeIntervalSince1970 * 1000) }
        formatter.formatOptions = [.withFullDate]
        if let date = formatter.date(from: text) { return Int64(date.timeIntervalSince1970 * 1000) }
        throw ValidationError("\(text) is neither ISO 8601 (2026-11-28T10:00:00Z) nor Unix milliseconds")
    }
}

/// What one command shows of each row.
enum StatsView {
    case usage, latency, faults, throttled

    var headers: [String] {
        switch self {
        case .usage: ["REQUESTS", "OK", "4XX", "5XX", "FAULTS", "THROTTLED", "BLOCKED", "REQ BYTES", "RESP BYTES", "P95 MS"]
        case .latency: ["REQUESTS", "P50 MS", "P95 MS", "P99 MS", "MAX MS", "BACKEND P50", "BACKEND P95", "BACKEND P99"]
        case .faults: ["REQUESTS", "FAULTS", "4XX", "5XX", "ERROR %"]
        case .throttled: ["REQUESTS", "THROTTLED", "BLOCKED", "REASONS"]
        }
    }

    func cells(_ row: UsageSummary) -> [String] {
        switch self {
        case .usage:
            ["\(row.requestCount)", "\(row.successCount)", "\(row.clientErrorCount)", "\(row.serverErrorCount)", "\(row.faultCount)",
             "\(row.throttledCount)", "\(row.blockedCount)", "\(row.requestBytesSum)", "\(row.responseBytesSum)", ms(row.responseP95Us)]
        case .latency:
            ["\(row.requestCount)", ms(row.responseP50Us), ms(row.responseP95Us), ms(row.responseP99Us), "\(row.maxResponseTimeMs)",
             ms(row.backendP50Us), ms(row.backendP95Us), ms(row.backendP99Us)]
        case .faults:
            ["\(row.requestCount)", "\(row.faultCount)", "\(row.clientErrorCount)", "\(row.serverErrorCount)",
             row.requestCount == 0 ? "0" : String(format: "%.1f", Double(row.faultCount + row.serverErrorCount) * 100 / Double(row.requestCount))]
        case .throttled:
            ["\(row.requestCount)", "\(row.throttledCount)", "\(row.blockedCount)",
             row.throttledReasons.map { "\($0.reason)=\($0.count)" }.joined(separator: " ")]
        }
    }

    /// The series a chart draws, and how buckets combine.
    func chartValue(_ row: UsageSummary) -> Double {
        switch self {
        case .usage: Double(row.requestCount)
        case .latency: Double(row.responseP95Us) / 1000
        case .faults: Double(row.faultCount + row.serverErrorCount)
        case .throttled: Double(row.throttledCount)
        }
    }

    var chartTitle: String {
        switch self {
        case .usage: "requests"
        case .latency: "p95 latency (ms)"
        case .faults: "faults and 5xx"
        case .throttled: "throttled out"
        }
    }

    var combine: BarChart.Combine { self == .latency ? .max : .sum }
}

func ms(_ microseconds: Int64) -> String {
    microseconds == 0 ? "0" : String(format: microseconds < 10_000 ? "%.2f" : "%.0f", Double(microseconds) / 1000)
}

/// Runs a stats query and prints it.
struct StatsRunner {
    let connection: ConnectionOptions
    let options: StatsOptions
    let view: StatsView

    func run(_ request: QueryUsageRequest, ranked: Bool = false) async throws {
        var request = request
        let grouped = !request.groupBy.isEmpty || ranked
        // Without --by: a time series (rows per bucket); with it: one row per group over the range.
        request.mergeBuckets = grouped
        let (response, series) = try await NodeSession.with(connection) { node in
            try await node.run {
                let client = AnalyticsServiceClient(node.connection, defaultOptions: node.callOptions)
                let response = try await client.queryUsage(request)
                var series: QueryUsageResponse?
                if options.chart {
                    var seriesRequest = request
                    seriesRequest.groupBy = []
                    seriesRequest.mergeBuckets = false
                    seriesRequest.orderBy = .unspecified
                    seriesRequest.limit = 0
                    series = grouped ? try await client.queryUsage(seriesRequest) : response
                }
                return (response, series)
            }
        }
        switch options.output {
        case .json:
            try printJSON(["scope": response.scope, "granularity": Self.granularityName(response.granularity),
                           "start": Self.iso(request.startUnixMs), "end": Self.iso(request.endUnixMs),
                           "rows": response.rows.map { Self.json($0, merged: grouped) },
                           "last_access": response.lastAccess.map(Self.json)] as [String: Any])
        case .csv:
            let header = Self.dimensionHeaders(request.groupBy, merged: grouped) + Self.csvColumns
            print(header.joined(separator: ","))
            for row in response.rows {
                let values = Self.dimensionCells(row, request.groupBy, merged: grouped) + Self.csvValues(row)
                print(values.map(Self.csvField).joined(separator: ","))
            }
        case .table:
            if let series {
                let stdoutIsTerminal = isatty(STDOUT_FILENO) == 1
                var size = winsize()
                let columns = stdoutIsTerminal && ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 ? Int(size.ws_col) : nil
                let width = chartWidth(environment: ProcessInfo.processInfo.environment, terminalColumns: columns)
                let points = Self.filled(series, request: request).map { BarChart.Point(label: $0.label, value: $0.row.map(view.chartValue) ?? 0) }
                let title = "\(view.chartTitle) per \(Self.granularityName(series.granularity)), \(response.scope) (UTC)"
                let colour = stdoutIsTerminal && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
                let chart = BarChart(title: title, points: points, width: width, height: max(2, options.chartHeight), combine: view.combine,
                                     colour: colour)
                for line in chart.render() { print(line) }
                print("")
            }
            print("\(response.scope); \(Self.iso(request.startUnixMs)) – \(Self.iso(request.endUnixMs))"
                  + (grouped ? "" : ", per \(Self.granularityName(response.granularity))"))
            guard !response.rows.isEmpty else {
                print("no calls in this range")
                return
            }
            printTable(Self.dimensionHeaders(request.groupBy, merged: grouped).map { $0.uppercased() } + view.headers,
                       response.rows.map { Self.dimensionCells($0, request.groupBy, merged: grouped) + view.cells($0) })
        }
    }

    /// Every bucket of the range, empty ones included, so a chart's time axis is even.
    static func filled(_ series: QueryUsageResponse, request: QueryUsageRequest) -> [(label: String, row: UsageSummary?)] {
        let granularity = series.granularity
        let length: Int64 = switch granularity {
        case .minute: 60_000
        case .hour: 3_600_000
        default: 86_400_000
        }
        let byBucket = Dictionary(series.rows.map { ($0.bucketStartUnixMs, $0) }, uniquingKeysWith: { first, _ in first })
        var start = request.startUnixMs - ((request.startUnixMs % length) + length) % length
        if start < request.startUnixMs { start += length }
        guard (request.endUnixMs - start) / length <= 20_000 else { return series.rows.map { (label($0.bucketStartUnixMs, granularity), $0) } }
        var out: [(String, UsageSummary?)] = []
        var bucket = start
        while bucket < request.endUnixMs {
            out.append((label(bucket, granularity), byBucket[bucket]))
            bucket += length
        }
        return out
    }

    static func label(_ unixMs: Int64, _ granularity: BucketGranularity) -> String {
        let formatter = DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = granularity == .day || granularity == .week ? "yyyy-MM-dd" : "MM-dd HH:mm"
        return formatter.string(from: Date(timeIntervalSince1970: Double(unixMs) / 1000))
    }

    static func iso(_ unixMs: Int64) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(unixMs) / 1000))
    }

    static func granularityName(_ granularity: BucketGranularity) -> String {
        switch granularity {
        case .minute: "minute"
        case .hour: "hour"
        case .day: "day"
        case .week: "week"
        default: "range"
        }
    }

    static func dimensionHeaders(_ dimensions: [UsageDimension], merged: Bool) -> [String] {
        var headers = merged ? [] : ["bucket"]
        for dimension in dimensions {
            switch dimension {
            case .tenant: headers.append("tenant")
            case .api: headers += ["api", "context"]
            case .apiVersion: headers += ["api", "version"]
            case .application: headers += ["application", "owner"]
            case .user: headers.append("user")
            case .resource: headers += ["resource"]
            case .keyType: headers.append("key_type")
            case .statusClass: headers.append("status")
            default: break
            }
        }
        return headers
    }

    static func dimensionCells(_ row: UsageSummary, _ dimensions: [UsageDimension], merged: Bool) -> [String] {
        var cells = merged ? [] : [label(row.bucketStartUnixMs, row.granularity)]
        for dimension in dimensions {
            switch dimension {
            case .tenant: cells.append(row.tenantDomain)
            case .api: cells += [row.apiName.isEmpty ? "(none)" : row.apiName, row.apiContext]
            case .apiVersion: cells += [row.apiName, row.apiVersion]
            case .application: cells += [row.applicationName.isEmpty ? row.applicationId : row.applicationName, row.applicationOwner]
            case .user: cells.append(row.username.isEmpty ? "(anonymous)" : row.username)
            case .resource: cells.append((row.verb == .unspecified ? "" : (row.verb.httpMethodName ?? "") + " ") + row.apiContext + row.resource)
            case .keyType: cells.append(row.keyType == .production ? "production" : row.keyType == .sandbox ? "sandbox" : "-")
            case .statusClass: cells.append(row.statusClass == 0 ? "none" : "\(row.statusClass)xx")
            default: break
            }
        }
        return cells
    }

    static let csvColumns = ["requests", "successes", "client_errors", "server_errors", "faults", "throttled", "blocked", "request_bytes",
                             "response_bytes", "p50_ms", "p95_ms", "p99_ms", "max_ms", "backend_p50_ms", "backend_p95_ms", "backend_p99_ms",
                             "throttled_reasons"]

    static func csvValues(_ row: UsageSummary) -> [String] {
        ["\(row.requestCount)", "\(row.successCount)", "\(row.clientErrorCount)", "\(row.serverErrorCount)", "\(row.faultCount)",
         "\(row.throttledCount)", "\(row.blockedCount)", "\(row.requestBytesSum)", "\(row.responseBytesSum)",
         ms(row.responseP50Us), ms(row.responseP95Us), ms(row.responseP99Us), "\(row.maxResponseTimeMs)",
         ms(row.backendP50Us), ms(row.backendP95Us), ms(row.backendP99Us),
         row.throttledReasons.map { "\($0.reason)=\($0.count)" }.joined(separator: ";")]
    }

    static func csvField(_ text: String) -> String {
        text.contains(",") || text.contains("\"") || text.contains("\n") ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
    }

    static func json(_ row: UsageSummary, merged: Bool) -> [String: Any] {
        var out: [String: Any] = [
            "requests": row.requestCount, "successes": row.successCount, "client_errors": row.clientErrorCount,
            "server_errors": row.serverErrorCount, "faults": row.faultCount, "throttled": row.throttledCount, "blocked": row.blockedCount,
            "request_bytes": row.requestBytesSum, "response_bytes": row.responseBytesSum, "cache_hits": row.cacheHitCount,
            "latency_us": ["p50": row.responseP50Us, "p95": row.responseP95Us, "p99": row.responseP99Us, "max": row.maxResponseTimeMs * 1000],
            "backend_latency_us": ["p50": row.backendP50Us, "p95": row.backendP95Us, "p99": row.backendP99Us],
            "throttled_reasons": Dictionary(row.throttledReasons.map { ($0.reason, $0.count) }, uniquingKeysWith: +),
            "last_access": row.lastAccessUnixMs > 0 ? iso(row.lastAccessUnixMs) : NSNull(),
        ]
        if !merged { out["bucket_start"] = iso(row.bucketStartUnixMs) }
        let dimensions: [(String, String)] = [("tenant", row.tenantDomain), ("api", row.apiName), ("api_context", row.apiContext),
                                              ("api_version", row.apiVersion), ("api_creator", row.apiCreator), ("application_id", row.applicationId),
                                              ("application", row.applicationName), ("application_owner", row.applicationOwner), ("user", row.username),
                                              ("resource", row.resource)]
        for (key, value) in dimensions where !value.isEmpty { out[key] = value }
        if row.verb != .unspecified { out["verb"] = row.verb.httpMethodName ?? "" }
        if row.statusClass > 0 { out["status_class"] = "\(row.statusClass)xx" }
        if row.keyType != .unspecified { out["key_type"] = row.keyType == .production ? "production" : "sandbox" }
        return out
    }

    static func json(_ access: UsageLastAccess) -> [String: Any] {
        var out: [String: Any] = ["tenant": access.tenantDomain, "last_access": iso(access.lastAccessUnixMs)]
        if !access.apiContext.isEmpty {
            out["api"] = access.apiName
            out["api_context"] = access.apiContext
            out["api_version"] = access.apiVersion
        } else {
            out["application_id"] = access.applicationId
            out["application"] = access.applicationName
            out["application_owner"] = access.applicationOwner
        }
        return out
    }
}

struct StatsUsage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "usage", abstract: "Requests, successes, 4xx, 5xx, faults, throttled, blocked and bytes.")
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var options: StatsOptions
    func run() async throws { try await StatsRunner(connection: connection, options: options, view: .usage).run(try options.request()) }
}

struct StatsLatency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "latency", abstract: "Latency quantiles of the whole call and of the backend (within 3.2 % of the exact values).")
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var options: StatsOptions
    func run() async throws { try await StatsRunner(connection: connection, options: options, view: .latency).run(try options.request()) }
}

struct StatsFaults: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "faults", abstract: "Faults, client and server errors.")
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var options: StatsOptions
    func run() async throws { try await StatsRunner(connection: connection, options: options, view: .faults).run(try options.request()) }
}

struct StatsThrottled: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "throttled", abstract: "Throttled-out calls by reason, and blocked calls.")
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var options: StatsOptions
    func run() async throws { try await StatsRunner(connection: connection, options: options, view: .throttled).run(try options.request()) }
}

struct StatsTop: AsyncParsableCommand {
    enum Ranking: String, ExpressibleByArgument, CaseIterable {
        case apis, applications, users, resources, slowest, faulty
    }

    static let configuration = CommandConfiguration(
        commandName: "top", abstract: "The top N APIs, applications, users or resources by calls; the slowest resources; the faultiest endpoints.",
        discussion: "slowest ranks resources by the 95th percentile of the whole call; faulty ranks API resources by faults plus 5xx answers.")
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var options: StatsOptions
    @Argument(help: "apis, applications, users, resources, slowest or faulty") var ranking: Ranking
    @Option(name: .customLong("limit"), help: "How many.") var limit: Int = 10

    func run() async throws {
        var request = try options.request()
        request.limit = UInt32(max(1, limit))
        let view: StatsView
        switch ranking {
        case .apis: request.groupBy = [.api]; request.orderBy = .requests; view = .usage
        case .applications: request.groupBy = [.application]; request.orderBy = .requests; view = .usage
        case .users: request.groupBy = [.user]; request.orderBy = .requests; view = .usage
        case .resources: request.groupBy = [.resource]; request.orderBy = .requests; view = .usage
        case .slowest: request.groupBy = [.resource]; request.orderBy = .latencyP95; view = .latency
        case .faulty: request.groupBy = [.resource]; request.orderBy = .errors; view = .faults
        }
        try await StatsRunner(connection: connection, options: options, view: view).run(request, ranked: true)
    }
}
