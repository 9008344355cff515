import Foundation

/// Whether the node took each reload, in `$RUNTIME_DIRECTORY/reload` (the
/// unit's RuntimeDirectory=). `tollgated --reload` (ExecReload=) sends SIGHUP
/// and waits here for the node's answer, so `systemctl reload` fails when the
/// node refused the file. Only the node writes it; the file goes when the
/// unit stops.
public enum ReloadVerdict {
    public struct Entry: Sendable, Equatable {
        /// Counts the node's reload attempts since it started.
        public var attempt: Int
        /// Why the node kept its running configuration, or nil if it took the new one.
        public var refusal: String?
    }

    /// Nil outside systemd (no RuntimeDirectory=): reloads then go unanswered.
    public static var path: String? {
        guard let directory = ProcessInfo.processInfo.environment["RUNTIME_DIRECTORY"]?.split(separator: ":").first, !directory.isEmpty else {
            return nil
        }
        return "\(directory)/reload"
    }

    public static func read() -> Entry? {
        guard let path, let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let lines = text.split(separator: "\n").map(String.init)
        guard lines.count == 2, lines[0].hasPrefix("attempt "), let attempt = Int(lines[0].dropFirst("attempt ".count)) else { return nil }
        if lines[1] == "accepted" { return Entry(attempt: attempt, refusal: nil) }
        guard lines[1].hasPrefix("refused: ") else { return nil }
        return Entry(attempt: attempt, refusal: String(lines[1].dropFirst("refused: ".count)))
    }

    /// The node's side: the next attempt's outcome, written whole (rename).
    static func record(refusal: String?) {
        guard let path else { return }
        let attempt = (read()?.attempt ?? 0) + 1
        let text = "attempt \(attempt)\n" + (refusal.map { "refused: " + $0.replacingOccurrences(of: "\n", with: "; ") } ?? "accepted") + "\n"
        let temporary = path + ".new"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8)) else { return }
        _ = rename(temporary, path)
    }

    /// The first outcome after `attempt`, or nil when none came within `timeout`.
    public static func wait(after attempt: Int, timeout: Duration) async -> Entry? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let entry = read(), entry.attempt > attempt { return entry }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return nil
    }
}
