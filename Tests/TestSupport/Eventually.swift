/// Waits until `condition` holds, checking every `poll`; fails naming `what`
/// if it still does not hold after `timeout`. The deadline is generous
/// because tests run on loaded 2-core machines; the poll interval only bounds
/// how late the test notices, it is not what the test waits for.
public func eventually(_ what: String, timeout: Duration = .seconds(20), poll: Duration = .milliseconds(10),
                       _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return }
        guard ContinuousClock.now < deadline else { throw NotReached(what: what, timeout: timeout) }
        try await Task.sleep(for: poll)
    }
}

public struct NotReached: Error, CustomStringConvertible {
    public let what: String
    public let timeout: Duration
    public var description: String { "\(what) did not happen within \(timeout)" }
}
