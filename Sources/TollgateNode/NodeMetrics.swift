import RoleCore
import Foundation
import OpenSSLKit
public import Prometheus
public import RPCCore
import RPCNIO
import Synchronization
import TollgateProto
import TollgateStorage

/// The node's Prometheus metrics. Every metric carries HELP text, which
/// `promtool check metrics` requires; that is why they are made through
/// swift-prometheus's registry (swift-metrics' Prometheus backend) directly:
/// the swift-metrics API has no help text, and the registry refuses a
/// second registration of a name with different help.
public final class NodeMetrics: RPCServerObserver {
    public let registry = PrometheusCollectorRegistry()
    let startedAt = Date()
    let dataDirectory: String
    let databases: [LogicalDatabaseName]
    private let knownPaths: Set<String>
    private let openConnections: Gauge
    private let connectionErrors: Counter
    private let startTime: Gauge
    private let uptime: Gauge
    private let residentMemory: Gauge
    private let bufferedRequests: Gauge
    private let virtualMemory: Gauge
    /// The node certificate and CA files in use (a reload may name others).
    private let certificateFiles: Mutex<(node: String, ca: String)>

    static let durationBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
    ]

    init(version: String, nodeID: String, roles: [Role], dataDirectory: String, databases: [LogicalDatabaseName],
         certificateFile: String, caFile: String) {
        self.dataDirectory = dataDirectory
        certificateFiles = Mutex((certificateFile, caFile))
        self.databases = databases
        knownPaths = Set(ProtoRegistry.methods.map(\.path))
        openConnections = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "tollgate", subsystem: "rpc", metricName: "open_connections", unitName: "", helpText: "RPC connections open now, both listeners."))
        connectionErrors = registry.makeCounter(descriptor: MetricNameDescriptor(
            namespace: "tollgate", subsystem: "rpc", metricName: "connection_errors", unitName: "total",
            helpText: "Connections closed for protocol or TLS errors, or refused over the connection limit."))
        startTime = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "process", metricName: "start_time", unitName: "seconds", helpText: "Start time of the process since the Unix epoch."))
        uptime = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "tollgate", metricName: "uptime", unitName: "seconds", helpText: "Seconds since the node started."))
        bufferedRequests = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "tollgate", subsystem: "rpc", metricName: "buffered_request", unitName: "bytes",
            helpText: "Bytes of requests the RPC listeners hold before a handler has them (docs/rpc-protocol.md section 9)."))
        residentMemory = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "process", metricName: "resident_memory", unitName: "bytes", helpText: "Resident memory size."))
        virtualMemory = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "process", metricName: "virtual_memory", unitName: "bytes", helpText: "Virtual memory size."))
        let build = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "tollgate", metricName: "build_info", unitName: "", helpText: "Always 1; the labels say what runs here."),
            labels: [("version", version), ("node_id", nodeID), ("roles", roles.map(\.rawValue).joined(separator: ","))])
        build.set(to: 1)
        startTime.set(to: startedAt.timeIntervalSince1970)
    }

    // MARK: HTTP and stream listeners

    /// Per listener, made once: the registry's lookup costs more than a connection should.
    private let listenerMetrics = Mutex<[String: (open: Gauge, errors: Counter)]>([:])

    private func listenerMetrics(_ listener: String) -> (open: Gauge, errors: Counter) {
        listenerMetrics.withLock { cache in
            if let found = cache[listener] { return found }
            let made = (
                open: registry.makeGauge(descriptor: MetricNameDescriptor(
                    namespace: "tollgate", subsystem: "listener", metricName: "open_connections", unitName: "",
                    helpText: "Connections open now on an HTTP or stream listener."), labels: [("listener", listener)]),
                errors: registry.makeCounter(descriptor: MetricNameDescriptor(
                    namespace: "tollgate", subsystem: "listener", metricName: "connection_errors", unitName: "total",
                    helpText: "Connections of an HTTP or stream listener refused over the connection limit."), labels: [("listener", listener)]))
            cache[listener] = made
            return made
        }
    }

    func listenerConnectionOpened(_ listener: String) { listenerMetrics(listener).open.increment() }
    func listenerConnectionClosed(_ listener: String) { listenerMetrics(listener).open.decrement() }
    func listenerConnectionFailed(_ listener: String) { listenerMetrics(listener).errors.increment() }

    // MARK: RPCServerObserver

    public func connectionOpened() { openConnections.increment() }
    public func connectionClosed() { openConnections.decrement() }
    public func connectionFailed(peer: String, reason: String) { connectionErrors.increment() }

    public func callFinished(path: String, code: RPCCode, duration: Duration, requestID: String, caller: Caller, message: String, cause: (any Error)? = nil) {
        // Unknown paths are counted together, so clients cannot grow the label set.
        let key = knownPaths.contains(path) ? path : "unknown"
        let (calls, durations) = callMetrics.withLock { cache in
            if let found = cache[key]?.calls[code], let durations = cache[key]?.durations { return (found, durations) }
            let (service, method) = key == "unknown" ? ("unknown", "unknown") : Self.split(path)
            let durations = cache[key]?.durations ?? registry.makeDurationHistogram(
                descriptor: Self.durationDescriptor, labels: [("service", service), ("method", method)], buckets: Self.durationBuckets)
            let calls = registry.makeCounter(descriptor: Self.callsDescriptor, labels: [("service", service), ("method", method), ("code", "\(code)")])
            cache[key, default: (durations, [:])].calls[code] = calls
            return (calls, durations)
        }
        calls.increment()
        durations.record(duration)
    }

    /// The collectors of each method, made once: the registry's own lookup
    /// builds names and hashes labels, which a call should not pay for.
    private let callMetrics = Mutex<[String: (durations: DurationHistogram, calls: [RPCCode: Counter])]>([:])

    static var callsDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "tollgate", subsystem: "rpc", metricName: "calls", unitName: "total",
                                                      helpText: "RPC calls served, by service, method and status code.") }
    static var durationDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "tollgate", subsystem: "rpc", metricName: "call_duration", unitName: "seconds",
                                                         helpText: "Time from a call's HEADERS to its end, by service and method.") }
    static var databaseDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "tollgate", metricName: "database_size", unitName: "bytes",
                                                         helpText: "Size of each logical database's data file.") }
    static var certificateExpiryDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "tollgate", metricName: "certificate_expiry", unitName: "seconds",
                             helpText: "When a certificate the node uses expires, in seconds since the Unix epoch (ca: the earliest in the CA file).")
    }
    static var peerDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "tollgate", metricName: "peer_up", unitName: "",
                                                     helpText: "1 while the connection to a configured peer is up.") }

    static func split(_ path: String) -> (String, String) {
        let parts = path.split(separator: "/")
        return parts.count == 2 ? (String(parts[0]), String(parts[1])) : ("unknown", "unknown")
    }

    /// The certificate files a reload switched to.
    func useCertificates(node: String, ca: String) {
        certificateFiles.withLock { $0 = (node, ca) }
    }

    /// Counters of role modules by name and labels, with the total last
    /// reported: the registry's counters only count up, by the difference.
    private let moduleCounters = Mutex<[String: (counter: Counter, reported: Double)]>([:])

    /// Sets the role modules' values (``RoleModule/metricSamples``).
    func record(_ samples: [MetricSample]) {
        for sample in samples {
            let labels = sample.labels.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
            switch sample.kind {
            case .gauge:
                registry.makeGauge(descriptor: MetricNameDescriptor(metricName: sample.name, unitName: "", helpText: sample.help), labels: labels)
                    .set(to: sample.value)
            case .counter:
                let id = sample.name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
                moduleCounters.withLock { counters in
                    let entry = counters[id] ?? (registry.makeCounter(descriptor: MetricNameDescriptor(metricName: sample.name, unitName: "", helpText: sample.help), labels: labels), 0)
                    if sample.value > entry.reported { entry.counter.increment(by: sample.value - entry.reported) }
                    counters[id] = (entry.counter, max(entry.reported, sample.value))
                }
            }
        }
    }

    /// Refreshes the values read at scrape time, then renders the text format.
    /// - Parameter bufferedRequestBytes: the RPC listeners' ``RequestBufferGauge`` now.
    func render(peers: [PeerLink], bufferedRequestBytes: Int, moduleSamples: [MetricSample] = []) -> [UInt8] {
        record(moduleSamples)
        uptime.set(to: Date().timeIntervalSince(startedAt))
        bufferedRequests.set(to: Double(bufferedRequestBytes))
        if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) {
            let pages = statm.split(separator: " ").compactMap { Double($0) }
            let pageSize = Double(sysconf(Int32(_SC_PAGESIZE)))
            if pages.count >= 2 {
                virtualMemory.set(to: pages[0] * pageSize)
                residentMemory.set(to: pages[1] * pageSize)
            }
        }
        for database in databases {
            let path = "\(dataDirectory)/\(database.rawValue)/data.mdb"
            let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int
            registry.makeGauge(descriptor: Self.databaseDescriptor, labels: [("database", database.rawValue)]).set(to: Double(size ?? 0))
        }
        let (node, ca) = certificateFiles.withLock { $0 }
        // Read at scrape time: a renewed certificate shows once it is in place,
        // and an unreadable file reports 0 (already expired), which alerts.
        let nodeExpiry = (try? Certificate.load(pemFile: node))?.first?.notValidAfter
        let caExpiry = (try? Certificate.load(pemFile: ca))?.map(\.notValidAfter).min()
        for (name, expiry) in [("node", nodeExpiry), ("ca", caExpiry)] {
            registry.makeGauge(descriptor: Self.certificateExpiryDescriptor, labels: [("certificate", name)]).set(to: Double(expiry ?? 0))
        }
        for peer in peers {
            registry.makeGauge(descriptor: Self.peerDescriptor, labels: [("role", peer.role.rawValue), ("address", peer.endpoint.description)])
                .set(to: peer.channel.status.state == .ready ? 1 : 0)
        }
        return registry.emitToBuffer()
    }
}
