public import RoleCore
import Foundation
public import Logging
import Synchronization
import SystemdKit

/// The node's log level, shared by every handler so SIGHUP can change it.
public final class SharedLogLevel: Sendable {
    private let raw: Atomic<UInt8>
    public init(_ level: Logger.Level) { raw = Atomic(Self.code(level)) }
    public var level: Logger.Level {
        get { Self.levels[Int(raw.load(ordering: .relaxed))] }
        set { raw.store(Self.code(newValue), ordering: .relaxed) }
    }
    private static let levels: [Logger.Level] = [.trace, .debug, .info, .notice, .warning, .error, .critical]
    private static func code(_ level: Logger.Level) -> UInt8 { UInt8(levels.firstIndex(of: level)!) }
}

extension LogLevel {
    var swiftLog: Logger.Level {
        switch self {
        case .trace: .trace
        case .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        case .critical: .critical
        }
    }
}

/// Entries straight to the journal with structured fields: PRIORITY,
/// MESSAGE, TOLLGATE_NODE_ID, TOLLGATE_ROLE, and every metadata key in upper
/// case (`request_id` becomes `TOLLGATE_REQUEST_ID`).
struct JournalLogHandler: LogHandler {
    let label: String
    let shared: SharedLogLevel
    let nodeID: String
    let roles: String
    var metadata: Logger.Metadata = [:]

    var logLevel: Logger.Level {
        get { shared.level }
        set { shared.level = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [(name: String, value: String)] = [
            ("MESSAGE", "\(event.message)"), ("PRIORITY", String(Self.priority(event.level))),
            ("SYSLOG_IDENTIFIER", "tollgated"), ("TOLLGATE_NODE_ID", nodeID), ("TOLLGATE_ROLE", roles), ("TOLLGATE_LOGGER", label),
            ("CODE_FILE", event.file), ("CODE_LINE", String(event.line)), ("CODE_FUNC", event.function),
        ]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            fields.append(("TOLLGATE_" + Self.fieldName(key), "\(value)"))
        }
        Journal.send(fields)
    }

    static func fieldName(_ key: String) -> String {
        String(key.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }
}

/// Plain lines on stderr: `2026-11-27T06:00:00Z info [node] message key=value`.
struct StderrLogHandler: LogHandler {
    let label: String
    let shared: SharedLogLevel
    var metadata: Logger.Metadata = [:]

    var logLevel: Logger.Level {
        get { shared.level }
        set { shared.level = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 })
        let pairs = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let time = Date().formatted(.iso8601)
        var line = "\(time) \(event.level) [\(label)] \(event.message)\(pairs.isEmpty ? "" : " " + pairs)\n"
        line.withUTF8 { bytes in _ = write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
    }
}

/// Sets up swift-log once per process: the journal under systemd, stderr otherwise.
public enum NodeLogging {
    public static let level = SharedLogLevel(.info)

    public static func bootstrap(level initial: LogLevel, nodeID: String, roles: [Role]) {
        level.level = initial.swiftLog
        let toJournal = Journal.stderrIsJournal
        let roleList = roles.map(\.rawValue).joined(separator: ",")
        LoggingSystem.bootstrap { label in
            toJournal ? JournalLogHandler(label: label, shared: level, nodeID: nodeID, roles: roleList) as any LogHandler
                : StderrLogHandler(label: label, shared: level)
        }
    }
}
