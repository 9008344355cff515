internal import CSystemd

/// Messages to the service manager through `$NOTIFY_SOCKET` (sd_notify(3)).
///
/// Outside systemd (no `NOTIFY_SOCKET`) every call does nothing and reports
/// false, so a node behaves the same with or without a service manager.
public enum ServiceNotifier {
    /// The node is ready: listeners bound and databases open.
    @discardableResult
    public static func ready(status: String? = nil) -> Bool {
        send(["READY=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
    }

    /// A one-line, human-readable state shown by `systemctl status`.
    @discardableResult
    public static func status(_ text: String) -> Bool {
        send(["STATUS=\(text)"])
    }

    /// The node is shutting down.
    @discardableResult
    public static func stopping(status: String? = nil) -> Bool {
        send(["STOPPING=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
    }

    /// Sends the given `KEY=value` assignments in one datagram. Newlines inside
    /// a value would start a new assignment, so they are replaced by spaces.
    @discardableResult
    public static func send(_ assignments: [String]) -> Bool {
        let state = assignments.map { $0.replacing("\n", with: " ") }.joined(separator: "\n")
        return sd_notify(0, state) > 0
    }
}
