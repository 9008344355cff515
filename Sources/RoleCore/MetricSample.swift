/// One value a role module reports on the node's Prometheus endpoint, read
/// at scrape time (``RoleModule/metricSamples``). The node registers each
/// name once with its help text; a counter's value is its running total.
public struct MetricSample: Sendable, Hashable {
    public enum Kind: Sendable, Hashable { case counter, gauge }

    /// The full name, e.g. `tollgate_trafficmanager_leases_granted_total`.
    public let name: String
    public let help: String
    public let kind: Kind
    public let labels: [String: String]
    public let value: Double

    public init(name: String, help: String, kind: Kind, labels: [String: String] = [:], value: Double) {
        self.name = name
        self.help = help
        self.kind = kind
        self.labels = labels
        self.value = value
    }
}
