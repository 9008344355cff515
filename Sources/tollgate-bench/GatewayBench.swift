import Foundation
import Logging
import NIOCore
import NIOPosix
import OpenSSLKit
import RoleCore
import RPCCore
import RPCNIO
import ServiceLifecycle
import Synchronization
import ThrottleCore
import TollgateAnalytics
import TollgateGateway
import TollgateKeyManager
import TollgateListeners
import TollgateNode
import TollgatePolicies
import TollgateProto
import TollgateProxy
import TollgatePublisher
import TollgateServices
import TollgateStorage
import TollgateStore
import TollgateTLS
import TollgateUsers

/// The gateway against nginx on this machine, in one run, `wrk` with
/// keep-alive against each, the same nginx backend serving 1 KiB:
/// - nginx `proxy_pass` with upstream keep-alive, 2 workers (the baseline);
/// - the gateway, an API whose resource needs no token;
/// - the gateway, an opaque token validated once and cached, a subscription
///   limit far away, usage records on;
/// - the same over HTTPS;
/// then throttling's cost: the same guarded resource with the subscription
/// quota leased from a traffic manager over RPC (throttling on) and with
/// an Unlimited subscription (nothing to count: throttling off), alternated;
/// then p99 at half of nginx's peak rate for nginx and the full-policy
/// gateway, and the time for a publish to be live with 5,000 APIs loaded;
/// last, the full-policy rate with usage records shipped to an analytics
/// node (in this process) against records discarded, alternated.
func benchGateway() async throws {
    if ProcessInfo.processInfo.environment["TOLLGATE_BENCH_GATEWAY"] == "deployment" {
        benchDeploymentChange(apis: Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_APIS"] ?? "5000") ?? 5000)
        return
    }
    guard let nginx = which("nginx"), let wrk = which("wrk") else {
        print("gateway: skipped: nginx and wrk are needed (make bench installs them from Debian)")
        return
    }
    let work = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: work) }
    let backendPort = try freeBenchPort(), proxyPort = try freeBenchPort()
    try String(repeating: "x", count: 1024).write(toFile: work + "/1k", atomically: true, encoding: .utf8)
    // The backend: one worker, so the proxies under test get the rest of the machine alike.
    let backend = try NginxProcess(nginx: nginx, directory: work + "/backend", config: """
        worker_processes 1;
        events { worker_connections 4096; }
        http {
          access_log off;
          server {
            listen 127.0.0.1:\(backendPort) backlog=4096;
            keepalive_requests 1000000;
            location / { root \(work); try_files /1k =404; }
            location = /nginx-status { stub_status; }
          }
        }
        """)
    defer { backend.stop() }
    let proxy = try NginxProcess(nginx: nginx, directory: work + "/proxy", config: """
        worker_processes 2;
        events { worker_connections 4096; }
        http {
          access_log off;
          upstream backend { server 127.0.0.1:\(backendPort); keepalive 64; }
          server {
            listen 127.0.0.1:\(proxyPort) backlog=4096;
            keepalive_requests 1000000;
            location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
          }
        }
        """)
    defer { proxy.stop() }

    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let (tlsDirectory, _, _) = try makeBenchTLS(alpn: ["http/1.1"], uris: ["tollgate://node/bench?role=gateway"])
    defer { try? FileManager.default.removeItem(atPath: tlsDirectory) }
    let cluster = try await BenchGatewayCluster.make(group: group, backendPort: backendPort, tlsDirectory: tlsDirectory)
    defer { try? FileManager.default.removeItem(atPath: cluster.data) }

    let plain = "http://127.0.0.1:\(cluster.httpPort)"
    let secure = "https://127.0.0.1:\(cluster.httpsPort)"
    let bearer = "Authorization: Bearer \(cluster.token)"
    // Warm: the token's validation is cached before timing starts.
    _ = try await runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: 4, seconds: 1)

    let connections = 64, seconds = 10
    let pairs = 5, pairSeconds = 6
    // TOLLGATE_BENCH_GATEWAY=analytics runs only the analytics comparison;
    // TOLLGATE_BENCH_GATEWAY=rates only the four rates against nginx.
    let only = ProcessInfo.processInfo.environment["TOLLGATE_BENCH_GATEWAY"]
    if only != "analytics" {
        // CPU time per request of the proxy alone (nginx's worker processes; this
        // process for Tollgate, whose other roles sit idle meanwhile): steadier
        // than rates on a shared machine, and what a proxy with cores of its own would be limited by.
        let baselineCPU = ProcessCPU(childrenOf: proxy.process.processIdentifier)
        let baseline = try await runWrk(wrk, url: "http://127.0.0.1:\(proxyPort)/", connections: connections, seconds: seconds)
        let baselineMicros = baselineCPU.microsecondsPerRequest(baseline.requests)
        var gatewayCPU = ProcessCPU(childrenOf: nil)
        let open = try await runWrk(wrk, url: plain + "/bench/1/open", connections: connections, seconds: seconds)
        let openMicros = gatewayCPU.microsecondsPerRequest(open.requests)
        gatewayCPU = ProcessCPU(childrenOf: nil)
        let full = try await runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: connections, seconds: seconds)
        let fullMicros = gatewayCPU.microsecondsPerRequest(full.requests)
        gatewayCPU = ProcessCPU(childrenOf: nil)
        let tls = try await runWrk(wrk, url: secure + "/bench/1/guarded", header: bearer, connections: connections, seconds: seconds)
        let tlsMicros = gatewayCPU.microsecondsPerRequest(tls.requests)
        func line(_ label: String, _ result: WrkResult, cpu: Double, target: String = "") {
            print(label.padding(toLength: 62, withPad: " ", startingAt: 0)
                + String(format: "%9.0f req/s  p50 %5.2f ms  p99 %5.2f ms  %5.2f× nginx  CPU %5.1f µs/req%@", result.rate, result.p50, result.p99,
                         result.rate / baseline.rate, cpu, target))
        }
        line("gateway: nginx proxy_pass, upstream keep-alive, 2 workers", baseline, cpu: baselineMicros)
        line("gateway: Tollgate, auth type None", open, cpu: openMicros)
        let fullRatio = full.rate / baseline.rate
        line("gateway: Tollgate, token cached, subscription limit, usage", full, cpu: fullMicros,
             target: "   target ≥ 0.85×: " + (fullRatio >= 0.85 ? "met" : "MISSED"))
        line("gateway: Tollgate, the same over HTTPS", tls, cpu: tlsMicros)
        print("gateway: proxy CPU per request, Tollgate / nginx".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  auth None %4.2f×, full policy %4.2f×", openMicros / baselineMicros, fullMicros / baselineMicros))
        // Backend connections opened over the whole run: keep-alive pools keep this near the client connection count.
        if let status = try? await runProcess("/usr/bin/curl", ["-s", "http://127.0.0.1:\(backendPort)/nginx-status"]) {
            print("gateway: backend nginx: " + status.split(separator: "\n").prefix(3).joined(separator: " | "))
        }
        if full.errors + open.errors + tls.errors > 0 { print("gateway: wrk reported \(full.errors + open.errors + tls.errors) socket errors or non-2xx answers") }
        if only == "rates" {
            await cluster.stop()
            try await group.shutdownGracefully()
            return
        }

        // Throttling on and off, alternated so drift in the machine's load falls on both alike.
        let unlimitedBearer = "Authorization: Bearer \(cluster.unlimitedToken)"
        _ = try await runWrk(wrk, url: plain + "/bench/1/guarded", header: unlimitedBearer, connections: 4, seconds: 1)
        var on: [WrkResult] = [], off: [WrkResult] = []
        var exchanges: UInt64 = 0, leasedRequests: UInt64 = 0
        for _ in 0..<pairs {
            off.append(try await runWrk(wrk, url: plain + "/bench/1/guarded", header: unlimitedBearer, connections: connections, seconds: pairSeconds))
            let before = cluster.throttleStatistics
            on.append(try await runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: connections, seconds: pairSeconds))
            let after = cluster.throttleStatistics
            exchanges += after.statistics.exchanges - before.statistics.exchanges
            leasedRequests += (after.statistics.policies["sub:BenchTier"]?.admitted ?? 0) - (before.statistics.policies["sub:BenchTier"]?.admitted ?? 0)
        }
        let onRate = on.reduce(0) { $0 + $1.rate } / Double(on.count), offRate = off.reduce(0) { $0 + $1.rate } / Double(off.count)
        for (label, runs) in [("off (Unlimited subscription)", off), ("on (subscription quota leased from a traffic manager)", on)] {
            print("gateway: throttling \(label)".padding(toLength: 62, withPad: " ", startingAt: 0)
                + runs.map { String(format: "%9.0f", $0.rate) }.joined(separator: " ") + String(format: " req/s  p99 %5.2f ms", runs.map(\.p99).max() ?? 0))
        }
        let throttleRatio = onRate / offRate
        let pairRatios = zip(on, off).map { $0.rate / $1.rate }.sorted()
        print("gateway: throttling on / off, mean of \(pairs) alternated runs".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  %9.0f / %9.0f req/s = %5.3f× (median of pairs %5.3f×)   target ≥ 0.97×: %@", onRate, offRate, throttleRatio,
                     pairRatios[pairRatios.count / 2], throttleRatio >= 0.97 ? "met" : "MISSED"))
        print("gateway: traffic-manager round trips per 1,000 admitted requests".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  %8.3f  (%llu ExchangeLeases calls for %llu requests)", Double(exchanges) * 1000 / Double(max(1, leasedRequests)), exchanges, leasedRequests))
        if on.contains(where: { $0.errors > 0 }) || off.contains(where: { $0.errors > 0 }) { print("gateway: wrk reported errors or non-2xx answers while comparing throttling") }

        // p99 at half of nginx's peak rate: each connection paced by wrk's delay() hook.
        let halfRate = baseline.rate / 2
        let pacedConnections = 32
        let script = work + "/paced.lua"
        try "function delay() return \(Int(Double(pacedConnections) * 1000 / halfRate)) end\n".write(toFile: script, atomically: true, encoding: .utf8)
        let nginxPaced = try await runWrk(wrk, url: "http://127.0.0.1:\(proxyPort)/", connections: pacedConnections, seconds: seconds, script: script)
        let gatewayPaced = try await runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: pacedConnections, seconds: seconds,
                                            script: script)
        let added = gatewayPaced.p99 - nginxPaced.p99
        print("gateway: p99 at half of nginx's peak (\(Int(halfRate)) req/s offered)".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  nginx %5.2f ms, Tollgate %5.2f ms: added %5.2f ms   target ≤ 1 ms: %@", nginxPaced.p99, gatewayPaced.p99, added,
                     added <= 1 ? "met" : "MISSED"))

        // Publishing with 5,000 APIs loaded.
        let loaded = Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_APIS"] ?? "5000") ?? 5000
        benchDeploymentChange(apis: loaded)
        let began = ContinuousClock.now
        try await cluster.publishAPIs(count: loaded)
        try await cluster.waitForAPIs(atLeast: loaded + 1)
        print("gateway: \(loaded) APIs published and loaded on the gateway in \(Int(benchMilliseconds(ContinuousClock.now - began))) ms")
        let quiet = try await runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: pacedConnections, seconds: seconds, script: script)
        async let publishing = runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: pacedConnections, seconds: seconds, script: script)
        try await Task.sleep(for: .seconds(2))
        var lives: [Double] = []
        for round in 0..<10 {
            let started = ContinuousClock.now
            let context = try await cluster.publishOne(index: loaded + round)
            try await cluster.waitForRoute(context)
            lives.append(benchMilliseconds(ContinuousClock.now - started))
            try await Task.sleep(for: .milliseconds(400))
        }
        let during = try await publishing
        lives.sort()
        print("gateway: publish → live on the gateway, \(loaded) APIs loaded".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  p50 %6.1f ms  max %6.1f ms", lives[lives.count / 2], lives.last!))
        let ratio = during.p99 / max(quiet.p99, 0.001)
        print("gateway: p99 while publishing / without".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  %5.2f ms / %5.2f ms = %4.2f×   target ≤ 1.1×: %@", during.p99, quiet.p99, ratio, ratio <= 1.1 ? "met" : "MISSED"))
    }

    // Usage analytics on and off, alternated (last: statdb's writes and the
    // gateway's spool leave dirty pages that would disturb later runs): on, every call's record is
    // spooled and streamed to an analytics node (in this process, so its
    // ingestion shares the two cores with everything else); off, the
    // gateway has no analytics peer and discards the records it makes.
    var analyticsOn: [WrkResult] = [], analyticsOff: [WrkResult] = []
    var shippedRequests = 0
    let ingestedBefore = cluster.eventsIngested
    // CPU of this process per call: the gateway, and with records shipped also the analytics node's ingestion.
    var cpuOn: [Double] = [], cpuOff: [Double] = []
    for _ in 0..<pairs {
        cluster.analyticsOn.value.store(false, ordering: .relaxed)
        var cpu = ProcessCPU(childrenOf: nil)
        let off = try await runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: connections, seconds: pairSeconds)
        cpuOff.append(cpu.microsecondsPerRequest(off.requests))
        analyticsOff.append(off)
        cluster.analyticsOn.value.store(true, ordering: .relaxed)
        cpu = ProcessCPU(childrenOf: nil)
        let run = try await runWrk(wrk, url: plain + "/bench/1/guarded", header: bearer, connections: connections, seconds: pairSeconds)
        // Let the last records of the run go out (and be counted) before the gateway stops shipping.
        try await Task.sleep(for: .seconds(1))
        cpuOn.append(cpu.microsecondsPerRequest(run.requests))
        analyticsOn.append(run)
        shippedRequests += run.requests
    }
    // Every call made while shipping reaches statdb (the last run's within a few seconds).
    let shipDeadline = ContinuousClock.now + .seconds(30)
    while Int(cluster.eventsIngested - ingestedBefore) < shippedRequests, ContinuousClock.now < shipDeadline { try await Task.sleep(for: .milliseconds(100)) }
    cluster.analyticsOn.value.store(false, ordering: .relaxed)
    let ingested = cluster.eventsIngested - ingestedBefore
    for (label, runs) in [("off (records discarded)", analyticsOff), ("on (records shipped to an analytics node)", analyticsOn)] {
        print("gateway: analytics \(label)".padding(toLength: 62, withPad: " ", startingAt: 0)
            + runs.map { String(format: "%9.0f", $0.rate) }.joined(separator: " ") + String(format: " req/s  p99 %5.2f ms", runs.map(\.p99).max() ?? 0))
    }
    let analyticsOnRate = analyticsOn.reduce(0) { $0 + $1.rate } / Double(pairs), analyticsOffRate = analyticsOff.reduce(0) { $0 + $1.rate } / Double(pairs)
    let analyticsPairs = zip(analyticsOn, analyticsOff).map { $0.rate / $1.rate }.sorted()
    print("gateway: analytics on / off, mean of \(pairs) alternated runs".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "  %9.0f / %9.0f req/s = %5.3f× (median of pairs %5.3f×)   target ≥ 0.97×: %@", analyticsOnRate, analyticsOffRate,
                 analyticsOnRate / analyticsOffRate, analyticsPairs[analyticsPairs.count / 2], analyticsOnRate / analyticsOffRate >= 0.97 ? "met" : "MISSED"))
    cpuOn.sort()
    cpuOff.sort()
    print("gateway: CPU per call, analytics on / off, medians".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "  %6.1f / %6.1f µs: %5.1f µs per usage record (shipping and ingestion, both in this process)",
                 cpuOn[pairs / 2], cpuOff[pairs / 2], cpuOn[pairs / 2] - cpuOff[pairs / 2]))
    print("gateway: calls made while shipping / events analytics counted".padding(toLength: 62, withPad: " ", startingAt: 0)
        + "  \(shippedRequests) / \(ingested)" + (Int(ingested) >= shippedRequests ? "" : "   (some not yet counted)"))

    await cluster.stop()
    try await group.shutdownGracefully()
}

/// The gateway's share of a publish: one API change applied to a state of
/// `apis` APIs (the routing table changed by delta), against building the
/// routing table whole, as every change did before deltas.
func benchDeploymentChange(apis count: Int) {
    var chunk = DeploymentSnapshotChunk()
    chunk.revision = 1
    chunk.last = true
    func definition(_ index: Int) -> DeployedApi {
        var api = Api()
        api.id = "api-\(index)"
        api.name = "Loaded\(index)"
        api.version = "1"
        api.context = "/loaded\(index)"
        api.lifecycleState = .published
        api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "http://127.0.0.1:9")))
        var deployed = DeployedApi()
        deployed.api = api
        deployed.gatewayContext = "/loaded\(index)/1"
        deployed.defaultVersionContext = index % 2 == 0 ? "/loaded\(index)" : ""
        var resource = ResolvedResource()
        resource.uriTemplate = "/x"
        resource.verb = .get
        deployed.resources = [resource]
        return deployed
    }
    chunk.apis = (0..<count).map(definition)
    var state = DeploymentState(snapshot: [chunk], appliedAtUnixMs: 0)
    var deltas: [Double] = [], wholes: [Double] = []
    for round in 0..<200 {
        var change = DeploymentChange()
        change.revision = UInt64(2 + round)
        change.change = .apiUpserted(definition(count + round))
        let started = ContinuousClock.now
        state = state.applying([change], appliedAtUnixMs: 0)
        deltas.append(benchMilliseconds(ContinuousClock.now - started) * 1000)
        let rebuilt = ContinuousClock.now
        let table = RoutingTable(apis: state.apis.values)
        wholes.append(benchMilliseconds(ContinuousClock.now - rebuilt) * 1000)
        precondition(table.count == state.routes.count, "a delta-built table differs from a whole one")
    }
    deltas.sort()
    wholes.sort()
    // The gateway saves its state (at most every two seconds while changes come): what one save costs.
    if let directory = try? temporaryDirectory() {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = DeploymentStore(directory: directory)
        var saves: [Double] = []
        for round in 0..<6 {
            var change = DeploymentChange()
            change.revision = UInt64(1000 + round)
            change.change = .apiUpserted(definition(count + 1000 + round))
            state = state.applying([change], appliedAtUnixMs: 0)
            let started = ContinuousClock.now
            try? store.save(state)
            saves.append(benchMilliseconds(ContinuousClock.now - started))
        }
        saves.sort()
        print("gateway: deployment state saved, \(state.apis.count) APIs, one changed".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  p50 %6.1f ms  max %6.1f ms", saves[saves.count / 2], saves.last!))
    }
    print("gateway: one API change applied, \(count) APIs loaded".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "  p50 %7.1f µs  p99 %7.1f µs   routing table built whole: p50 %7.1f µs", deltas[deltas.count / 2],
                 deltas[deltas.count * 99 / 100], wholes[wholes.count / 2]))
}

struct WrkResult {
    var rate: Double
    var p50: Double
    var p99: Double
    var errors: Int
    /// Requests completed in the run.
    var requests = 0
}

func runWrk(_ wrk: String, url: String, header: String? = nil, connections: Int, seconds: Int, script: String? = nil) async throws -> WrkResult {
    var arguments = ["-t2", "-c\(connections)", "-d\(seconds)s", "--latency"]
    if let header { arguments += ["-H", header] }
    if let script { arguments += ["-s", script] }
    arguments.append(url)
    let output = try await runProcess(wrk, arguments)
    var result = WrkResult(rate: 0, p50: 0, p99: 0, errors: 0)
    func milliseconds(_ text: Substring) -> Double {
        if text.hasSuffix("us") { return (Double(text.dropLast(2)) ?? 0) / 1000 }
        if text.hasSuffix("ms") { return Double(text.dropLast(2)) ?? 0 }
        if text.hasSuffix("s") { return (Double(text.dropLast(1)) ?? 0) * 1000 }
        return Double(text) ?? 0
    }
    for line in output.split(separator: "\n") {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        if line.hasPrefix("Requests/sec:"), let value = fields.last.flatMap({ Double($0) }) { result.rate = value }
        if fields.count > 1, fields[1] == "requests", let value = Int(fields[0]) { result.requests = value }
        if fields.first == "50%", fields.count > 1 { result.p50 = milliseconds(fields[1]) }
        if fields.first == "99%", fields.count > 1 { result.p99 = milliseconds(fields[1]) }
        if line.contains("Non-2xx or 3xx responses:"), let value = fields.last.flatMap({ Int($0) }) { result.errors += value }
        if line.contains("Socket errors:") {
            result.errors += fields.compactMap { Int($0.trimmingCharacters(in: CharacterSet(charactersIn: ","))) }.reduce(0, +)
        }
    }
    guard result.rate > 0 else { throw BenchFailure("wrk \(url) measured nothing: \(output)") }
    return result
}

/// User and system CPU time used from its creation on, by this process, or
/// by the children of a process (nginx's workers), read from `/proc`.
struct ProcessCPU {
    let parent: Int32?
    let start: Double

    init(childrenOf parent: Int32?) {
        self.parent = parent
        start = Self.seconds(childrenOf: parent)
    }

    func microsecondsPerRequest(_ requests: Int) -> Double {
        (Self.seconds(childrenOf: parent) - start) * 1_000_000 / Double(max(1, requests))
    }

    static func seconds(childrenOf parent: Int32?) -> Double {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        // Fields after the command's closing parenthesis: state is field 3, ppid 4, utime 14, stime 15.
        func fields(_ pid: String) -> [Substring]? {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = text.lastIndex(of: ")") else { return nil }
            return text[text.index(after: close)...].split(separator: " ")
        }
        func cpu(_ fields: [Substring]) -> Double { ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / ticks }
        guard let parent else { return fields("self").map(cpu) ?? 0 }
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.filter { $0.first?.isNumber == true } ?? []
        return pids.compactMap(fields).filter { $0.count > 12 && Int32($0[1]) == parent }.map(cpu).reduce(0, +)
    }
}

func runProcess(_ executable: String, _ arguments: [String]) async throws -> String {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            do {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: executable)
                process.arguments = arguments
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = pipe
                try process.run()
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                continuation.resume(returning: String(decoding: data, as: UTF8.self))
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }
}

func which(_ program: String) -> String? {
    for directory in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin"] {
        let path = directory + "/" + program
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
}

func freeBenchPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
            guard bind(fd, pointer, length) == 0 else { return -1 }
            return getsockname(fd, pointer, &length)
        }
    }
    guard bound == 0 else { throw BenchFailure("no free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// An nginx master process with its own prefix and configuration.
final class NginxProcess {
    let process: Process

    init(nginx: String, directory: String, config: String) throws {
        try FileManager.default.createDirectory(atPath: directory + "/logs", withIntermediateDirectories: true)
        let full = "daemon off;\npid \(directory)/nginx.pid;\nerror_log \(directory)/logs/error.log warn;\n" + config
        try full.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: nginx)
        process.arguments = ["-p", directory, "-c", directory + "/nginx.conf"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Ready once it accepts.
        for _ in 0..<100 {
            if FileManager.default.fileExists(atPath: directory + "/nginx.pid") { return }
            usleep(20_000)
        }
    }

    func stop() {
        kill(process.processIdentifier, SIGQUIT)
        process.waitUntilExit()
    }
}

/// A control plane (publisher, store, keymanager) and a gateway assembled as
/// tollgated assembles them, the gateway reaching the control plane through
/// the in-process transport with a gateway node's identity.
final class BenchGatewayCluster: Sendable {
    let data: String
    let control: NodeAssembly
    let gateway: NodeAssembly
    let listeners: [Listener]
    let services: Task<Void, Never>
    let token: String
    /// A token of an application subscribed at Unlimited: no quota to count.
    let unlimitedToken: String
    let trafficManager: NodeAssembly
    let trafficManagerServer: RPCServer
    let trafficManagerConnection: RPCConnection
    /// An analytics node behind its RPC server; the gateway ships usage to it while `analyticsOn` says so.
    let analytics: NodeAssembly
    let analyticsServer: RPCServer
    let analyticsConnection: RPCConnection
    let analyticsOn: AnalyticsSwitch
    let httpPort: Int
    let httpsPort: Int
    let backendPort: Int
    let publisher: PublisherStore

    init(data: String, control: NodeAssembly, gateway: NodeAssembly, listeners: [Listener], services: Task<Void, Never>, token: String,
         unlimitedToken: String, trafficManager: NodeAssembly, trafficManagerServer: RPCServer, trafficManagerConnection: RPCConnection,
         analytics: NodeAssembly, analyticsServer: RPCServer, analyticsConnection: RPCConnection, analyticsOn: AnalyticsSwitch,
         httpPort: Int, httpsPort: Int, backendPort: Int, publisher: PublisherStore) {
        self.analytics = analytics
        self.analyticsServer = analyticsServer
        self.analyticsConnection = analyticsConnection
        self.analyticsOn = analyticsOn
        self.unlimitedToken = unlimitedToken
        self.trafficManager = trafficManager
        self.trafficManagerServer = trafficManagerServer
        self.trafficManagerConnection = trafficManagerConnection
        self.data = data
        self.control = control
        self.gateway = gateway
        self.listeners = listeners
        self.services = services
        self.token = token
        self.httpPort = httpPort
        self.httpsPort = httpsPort
        self.backendPort = backendPort
        self.publisher = publisher
    }

    /// The control plane in this process; the traffic manager and the
    /// analytics node over RPC and TLS on loopback, as a gateway node reaches
    /// them. With analytics switched off the gateway has no analytics peer
    /// (its usage records are made, then counted and discarded).
    struct Peers: PeerDirectory {
        let transport: InProcessTransport
        let trafficManager: RPCConnection
        let analytics: RPCConnection
        let analyticsOn: AnalyticsSwitch
        func transports(for role: Role) -> [any RPCClientTransport] {
            switch role {
            case .publisher, .keymanager: [transport]
            case .trafficmanager: [trafficManager]
            case .analytics: analyticsOn.value.load(ordering: .relaxed) ? [analytics] : []
            default: []
            }
        }
    }

    final class AnalyticsSwitch: Sendable {
        let value = Atomic<Bool>(false)
    }

    /// Events the analytics node has counted into statdb.
    var eventsIngested: UInt64 { analytics.module(AnalyticsModule.self)?.ingest?.statistics.events ?? 0 }

    var throttleStatistics: (statistics: LeaseThrottler.Statistics, requests: UInt64) { gateway.module(GatewayModule.self)!.throttleStatistics }

    static func make(group: any EventLoopGroup, backendPort: Int, tlsDirectory: String) async throws -> BenchGatewayCluster {
        let data = try temporaryDirectory()
        try "bench-Admin-1\n".write(toFile: data + "/admin.password", atomically: true, encoding: .utf8)
        let roles: [Role] = [.publisher, .store, .keymanager]
        let logger = Logger(label: "bench")
        let control = try await NodeAssembly.assemble(
            roles: roles, databases: try Databases.open(dataDirectory: data, only: roles.reduce(into: Set()) { $0.formUnion(RoleModules.databases(for: $1)) }),
            sections: ["users": ConfigSection(values: ["bootstrap_admin": .string("admin"), "bootstrap_password_file": .string(data + "/admin.password")])],
            logger: logger)
        let keyManager = control.module(KeyManagerModule.self)!.keyManager
        let store = control.module(StoreModule.self)!.store
        let publisher = control.module(PublisherModule.self)!.store
        // A tier far above what a run can send, so the subscription quota is counted on every call and never trips
        // (below 2^31 - 1, which WSO2 and ThrottleCore read as unlimited: such a tier would not be counted at all).
        let policies = control.module(PoliciesModule.self)!.store
        try await policies.installDefaults(tenant: superTenant)
        var tier = SubscriptionPolicy()
        tier.name = "BenchTier"
        var limit = ThrottleLimit()
        limit.timeUnit = .minute
        limit.unitTime = 1
        limit.quota = .requestCount(1_000_000_000)
        tier.defaultLimit = limit
        var wrapped = ThrottlePolicy()
        wrapped.policy = .subscriptionPolicy(tier)
        _ = try await policies.createPolicy(wrapped, tenant: superTenant)
        var api = Api()
        api.name = "Bench"
        api.version = "1"
        api.context = "/bench"
        api.resources = [ApiResource(uriTemplate: "/guarded", verb: .get, authType: .any), ApiResource(uriTemplate: "/open", verb: .get, authType: .none)]
        api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "http://127.0.0.1:\(backendPort)")))
        api.subscriptionPolicies = ["BenchTier", "Unlimited"]
        let created = try await publisher.createApi(api, actor: "admin", tenant: superTenant)
        _ = try await publisher.changeLifecycle(created.id, to: .published, options: .init(), actor: "admin", tenant: superTenant)
        _ = try await keyManager.users.createUser(User(username: "alice", roles: ["subscriber"]), password: "Alice-Secret-1", tenant: superTenant)
        let alice = StoreCaller(user: UserPrincipal(username: "alice", tenant: superTenant, roles: ["subscriber"], permissions: [Permission.subscribe],
                                                    sessionID: nil, sessionExpiresAtUnixMs: 0), tenant: superTenant)
        let application = try await store.createApplication(Application(name: "bench"), caller: alice)
        _ = try await store.subscribe(application: application.id, api: created.id, tier: "BenchTier", caller: alice)
        let keys = try await store.generateKeys(GenerateKeysRequest(applicationId: application.id, keyType: .production), caller: alice)
        let unlimited = try await store.createApplication(Application(name: "bench-unlimited"), caller: alice)
        _ = try await store.subscribe(application: unlimited.id, api: created.id, tier: "Unlimited", caller: alice)
        let unlimitedKeys = try await store.generateKeys(GenerateKeysRequest(applicationId: unlimited.id, keyType: .production), caller: alice)

        // A traffic manager and an analytics node, each behind its RPC
        // server; the gateway reaches them over mutual TLS on loopback.
        let rpcServerTLS = try TLSContext(configuration: .server(certificateChainFile: tlsDirectory + "/node.pem", privateKeyFile: tlsDirectory + "/node.key",
                                                                 trustRootsFile: tlsDirectory + "/ca.pem", verification: .peerRequired,
                                                                 applicationProtocols: [RPCServer.alpn]))
        let rpcClientTLS = try TLSContext(configuration: .client(trustRootsFile: tlsDirectory + "/ca.pem", certificateChainFile: tlsDirectory + "/node.pem",
                                                                 privateKeyFile: tlsDirectory + "/node.key", applicationProtocols: [RPCServer.alpn]))
        func rpcNode(_ role: Role, id: String) async throws -> (NodeAssembly, RPCServer, RPCConnection) {
            let directory = data + "/" + role.rawValue
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let node = try await NodeAssembly.assemble(roles: [role], nodeID: id,
                                                       databases: try Databases.open(dataDirectory: directory, only: RoleModules.databases(for: role)), logger: logger)
            let access = node.access
            let server = RPCServer(methods: node.methods, tls: rpcServerTLS) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
            let port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
            let connection = try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: rpcClientTLS, group: group)
            return (node, server, connection)
        }
        let (trafficManager, trafficManagerServer, trafficManagerConnection) = try await rpcNode(.trafficmanager, id: "bench-tm")
        let (analytics, analyticsServer, analyticsConnection) = try await rpcNode(.analytics, id: "bench-analytics")
        let analyticsOn = AnalyticsSwitch()

        let access = control.access
        // The gateway is node "bench", as its certificate (tollgate://node/bench?role=gateway) says: analytics takes batches only from the node they name.
        let transport = InProcessTransport(methods: control.methods, peer: .node(id: "bench", roles: ["gateway"])) { context throws(RPCError) in
            try access.authorize(context)
        }
        let gatewayData = data + "/gateway"
        try FileManager.default.createDirectory(atPath: gatewayData, withIntermediateDirectories: true)
        let gateway = try await NodeAssembly.assemble(roles: [.gateway], nodeID: "bench", databases: try Databases.open(dataDirectory: gatewayData, only: []),
                                                      logger: logger) { context in
            context.provide(Peers(transport: transport, trafficManager: trafficManagerConnection, analytics: analyticsConnection, analyticsOn: analyticsOn),
                            as: (any PeerDirectory).self)
            context.provide(NodeDataDirectory(path: gatewayData), as: NodeDataDirectory.self)
        }
        let module = gateway.module(GatewayModule.self)!
        let serverTLS = try TLSContext(configuration: .server(certificateChainFile: tlsDirectory + "/node.pem", privateKeyFile: tlsDirectory + "/node.key",
                                                              applicationProtocols: ["http/1.1"]))
        var listeners: [Listener] = []
        var ports: [Int] = []
        for declaration in module.listeners {
            guard case .proxy(let policy, let limits) = declaration.kind else { continue }
            let tls: (@Sendable () -> TLSContext)? = declaration.security == .plain ? nil : { @Sendable in serverTLS }
            let listener = Listener(name: declaration.name, maxConnections: 16_384, observer: nil,
                                    configure: ProxyListener.configure(policy: policy, limits: limits, tls: tls, backendTLS: nil))
            ports.append(try await listener.bind(host: "127.0.0.1", port: 0, group: group).port!)
            listeners.append(listener)
        }
        let services = Task {
            await withTaskGroup(of: Void.self) { tasks in
                for service in module.services { tasks.addTask { try? await service.run() } }
            }
        }
        let cluster = BenchGatewayCluster(data: data, control: control, gateway: gateway, listeners: listeners, services: services,
                                          token: keys.token!.accessToken, unlimitedToken: unlimitedKeys.token!.accessToken, trafficManager: trafficManager,
                                          trafficManagerServer: trafficManagerServer, trafficManagerConnection: trafficManagerConnection,
                                          analytics: analytics, analyticsServer: analyticsServer, analyticsConnection: analyticsConnection, analyticsOn: analyticsOn,
                                          httpPort: ports[0], httpsPort: ports[1], backendPort: backendPort,
                                          publisher: publisher)
        try await cluster.waitForRoute("/bench/1/open")
        return cluster
    }

    func publishOne(index: Int) async throws -> String {
        var api = Api()
        api.name = "Loaded\(index)"
        api.version = "1"
        api.context = "/loaded\(index)"
        api.resources = [ApiResource(uriTemplate: "/x", verb: .get, authType: .none)]
        api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "http://127.0.0.1:\(backendPort)")))
        api.subscriptionPolicies = ["Unlimited"]
        let created = try await publisher.createApi(api, actor: "admin", tenant: superTenant)
        _ = try await publisher.changeLifecycle(created.id, to: .published, options: .init(), actor: "admin", tenant: superTenant)
        return "/loaded\(index)/1/x"
    }

    func publishAPIs(count: Int) async throws {
        for index in 0..<count { _ = try await publishOne(index: index) }
    }

    func waitForAPIs(atLeast count: Int) async throws {
        let module = gateway.module(GatewayModule.self)!
        for _ in 0..<6000 {
            if module.servedAPICount >= count { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw BenchFailure("the gateway did not load \(count) APIs")
    }

    /// Polls until the gateway routes `path` (the answer is no longer 404).
    func waitForRoute(_ path: String) async throws {
        let module = gateway.module(GatewayModule.self)!
        for _ in 0..<60_000 {
            if module.routes(path) { return }
            try await Task.sleep(for: .milliseconds(1))
        }
        throw BenchFailure("the gateway never routed \(path)")
    }

    func stop() async {
        // The gateway's services end first (its last deployment-state save
        // among them), before the caller removes the data directory.
        services.cancel()
        await services.value
        for listener in listeners { await listener.shutdown(drainTimeout: .seconds(1)) }
        await trafficManagerConnection.close()
        await trafficManagerServer.shutdown(drainTimeout: .seconds(1))
        await analyticsConnection.close()
        await analyticsServer.shutdown(drainTimeout: .seconds(1))
    }
}
