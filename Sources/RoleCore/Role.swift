/// The roles a node can run (DESIGN.md: publisher, store, keymanager,
/// gateway, trafficmanager, analytics).
public enum Role: String, CaseIterable, Sendable, Hashable {
    case publisher, store, keymanager, gateway, trafficmanager, analytics
}
