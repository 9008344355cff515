import Foundation
public import RoleCore
import TOMLKit

/// A host and port to listen on or connect to.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` or `[v6]:port`.
    public init?(_ text: String) {
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, !host.contains(where: { $0.isWhitespace }), let port = Int(portText), (0...65535).contains(port) else { return nil }
        if host.hasPrefix("[") { host = host.dropFirst() }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public enum LogLevel: String, Sendable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
}

/// One node's configuration file (docs/configuration.md).
public struct NodeConfig: Sendable, Hashable {
    public var nodeID: String
    public var roles: [Role]
    public var dataDirectory: String
    public var logLevel: LogLevel = .info

    /// Node-to-node listener: client certificate from the cluster CA required.
    public var clusterListen: Endpoint
    /// Admin listener (tollctl): certificate optional, users sign in.
    public var adminListen: Endpoint?
    /// Prometheus metrics over plain HTTP.
    public var metricsListen: Endpoint?
    /// Listeners role modules declare, by name (`[listen] <name> = "host:port"`).
    public var moduleListen: [String: Endpoint] = [:]

    public var caPath: String
    public var certificatePath: String
    public var privateKeyPath: String

    /// Other nodes this one connects to, by their role.
    public var peers: [Role: [Endpoint]] = [:]

    public var maxConnections = 4096
    public var maxConcurrentStreams = 100
    public var maxFrameSize = 4 * 1024 * 1024
    public var idleTimeoutSeconds = 300
    public var drainTimeoutSeconds = 30
    /// RPC listeners: connections that have authenticated nothing, per source IP address.
    public var maxUnauthenticatedConnectionsPerAddress = 64
    /// RPC listeners: how long a connection may stay without authenticating anything.
    public var unauthenticatedTimeoutSeconds = 30

    /// Role modules' sections (`[users]`, …), checked against their declared keys.
    public var sections: [String: ConfigSection] = [:]

    /// Where the file was read from; relative paths in it are relative to its folder.
    public var path: String = ""
}

/// One thing wrong with a configuration file.
public struct ConfigProblem: Error, Sendable, Hashable, CustomStringConvertible {
    public let key: String
    public let line: Int?
    public let message: String

    public var description: String {
        "\(key.isEmpty ? "" : "\(key): ")\(message)\(line.map { " (line \($0))" } ?? "")"
    }
}

/// Every problem found, each with its key; the node starts only with none.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let problems: [ConfigProblem]

    public init(path: String, problems: [ConfigProblem]) {
        self.path = path
        self.problems = problems
    }

    public var description: String {
        problems.map { "\(path): \($0)" }.joined(separator: "\n")
    }
}

extension NodeConfig {
    /// Reads and validates a configuration file, reporting every problem.
    /// - Parameter table: the role modules whose sections and listener names the file may set.
    public static func load(path relative: String, table: RoleModules = .standard) throws(ConfigError) -> NodeConfig {
        // Absolute, so a reload finds the same file whatever the directory.
        let path = URL(fileURLWithPath: relative).standardizedFileURL.path
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(path: path, problems: [ConfigProblem(key: "", line: nil, message: "cannot read the file: \(Self.reason(error))")])
        }
        return try parse(text, path: path, table: table)
    }

    static func reason(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("No such file") || text.contains("fileNoSuchFile") || text.contains("couldn’t be opened because there is no such file") { return "no such file" }
        if text.contains("ermission") { return "permission denied" }
        return text
    }

    /// Parses and validates TOML text.
    public static func parse(_ text: String, path: String, table modules: RoleModules = .standard) throws(ConfigError) -> NodeConfig {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(path: path, problems: [ConfigProblem(key: "", line: error.source.begin.line, message: "not valid TOML: \(error.description)")])
        } catch {
            throw ConfigError(path: path, problems: [ConfigProblem(key: "", line: nil, message: "not valid TOML: \(error)")])
        }
        var reader = ConfigReader(text: text, table: modules)
        let config = reader.read(table, base: directory(of: path))
        guard reader.problems.isEmpty, var config else { throw ConfigError(path: path, problems: reader.problems) }
        config.path = path
        return config
    }

    /// Checks what can be checked before binding: the files it names can be
    /// read and the data directory written.
    public func checkFiles(table: RoleModules = .standard) -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        for (key, file) in [("tls.ca", caPath), ("tls.certificate", certificatePath), ("tls.private_key", privateKeyPath)] {
            if !FileManager.default.isReadableFile(atPath: file) {
                problems.append(ConfigProblem(key: key, line: nil, message: FileManager.default.fileExists(atPath: file)
                    ? "\(file) is not readable by this user" : "\(file) does not exist"))
            }
        }
        for spec in table.all.compactMap({ $0.configSection }) {
            for key in spec.keys {
                guard case .path = key.kind, key.readAtEveryStart, let file = sections[spec.name]?.string(key.name) else { continue }
                if !FileManager.default.isReadableFile(atPath: file) {
                    problems.append(ConfigProblem(key: "\(spec.name).\(key.name)", line: nil, message: "\(file) cannot be read"))
                }
            }
        }
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: dataDirectory, isDirectory: &isDirectory) || !isDirectory.boolValue {
            problems.append(ConfigProblem(key: "data_directory", line: nil, message: "\(dataDirectory) is not a directory"))
        } else if !FileManager.default.isWritableFile(atPath: dataDirectory) {
            problems.append(ConfigProblem(key: "data_directory", line: nil, message: "\(dataDirectory) is not writable by this user"))
        }
        return problems
    }
}

/// The folder part of a path ("." for a bare file name).
func directory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// Walks the TOML tables, collecting a problem for every unknown key, wrong
/// type or bad value, with the line the key is on.
struct ConfigReader {
    let lines: [Substring]
    var problems: [ConfigProblem] = []

    /// The role modules whose sections and listener names may appear.
    let modules: [any RoleModule.Type]
    /// Which roles bring which modules: a listener must belong to a module of the node's roles.
    let table: RoleModules

    init(text: String, table: RoleModules) {
        lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        self.table = table
        self.modules = table.all
    }

    /// The line where `key` is set inside `[table]` (or at the top), found by
    /// scanning the text: TOMLKit reports positions only for syntax errors.
    func line(of key: String, in table: String) -> Int? {
        var current = ""
        for (index, raw) in lines.enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[") && !line.hasPrefix("[[") {
                current = line.dropFirst().prefix { $0 != "]" }.trimmingCharacters(in: .whitespaces)
                if key.isEmpty && current == table { return index + 1 }
                continue
            }
            guard current == table, let equals = line.firstIndex(of: "=") else { continue }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
            if name == key { return index + 1 }
        }
        return nil
    }

    mutating func problem(_ table: String, _ key: String, _ message: String) {
        problems.append(ConfigProblem(key: table.isEmpty ? key : "\(table).\(key)", line: line(of: key, in: table), message: message))
    }

    mutating func unknownKeys(_ table: TOMLTable, name: String, known: Set<String>) {
        for key in table.keys.sorted() where !known.contains(key) {
            problem(name, key, "unknown key (known here: \(known.sorted().joined(separator: ", ")))")
        }
    }

    mutating func string(_ table: TOMLTable, _ name: String, _ key: String, required: Bool) -> String? {
        guard let value = table[key] else {
            if required { problems.append(ConfigProblem(key: name.isEmpty ? key : "\(name).\(key)", line: nil, message: "is required")) }
            return nil
        }
        guard let text = value.string else { problem(name, key, "must be a string, not \(value.type)"); return nil }
        guard !text.isEmpty else { problem(name, key, "must not be empty"); return nil }
        return text
    }

    mutating func int(_ table: TOMLTable, _ name: String, _ key: String, range: ClosedRange<Int>) -> Int? {
        guard let value = table[key] else { return nil }
        guard let number = value.int else { problem(name, key, "must be an integer, not \(value.type)"); return nil }
        guard range.contains(number) else { problem(name, key, "must be between \(range.lowerBound) and \(range.upperBound), not \(number)"); return nil }
        return number
    }

    mutating func endpoint(_ table: TOMLTable, _ name: String, _ key: String, required: Bool) -> Endpoint? {
        guard let text = string(table, name, key, required: required) else { return nil }
        guard let endpoint = Endpoint(text) else { problem(name, key, "\"\(text)\" is not host:port"); return nil }
        return endpoint
    }

    mutating func subtable(_ table: TOMLTable, _ key: String) -> TOMLTable? {
        guard let value = table[key] else { return nil }
        guard let sub = value.table else { problem("", key, "must be a table ([\(key)]), not \(value.type)"); return nil }
        return sub
    }

    /// `credential:NAME` is the file systemd's `LoadCredential=NAME:…` put in
    /// `$CREDENTIALS_DIRECTORY`, readable by this service alone: how the unit
    /// hands each node its own private key (docs/operations.md).
    mutating func credential(_ value: String?, _ table: String, _ key: String) -> String? {
        guard let value, value.hasPrefix("credential:") else { return value }
        let name = value.dropFirst("credential:".count)
        guard !name.isEmpty, !name.contains("/") else {
            problem(table, key, "\"\(value)\" must name one credential, as credential:NAME")
            return value
        }
        guard let directory = ProcessInfo.processInfo.environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty else {
            problem(table, key, "\(value) is a systemd credential, but CREDENTIALS_DIRECTORY is not set: run the node through its unit "
                    + "(LoadCredential=\(name):…), or name the file itself")
            return value
        }
        return "\(directory)/\(name)"
    }

    static func absolute(_ path: String, base: String) -> String {
        path.hasPrefix("/") ? path : (base == "." ? path : "\(base)/\(path)")
    }

    mutating func read(_ root: TOMLTable, base: String) -> NodeConfig? {
        let specs = modules.compactMap { $0.configSection }
        unknownKeys(root, name: "", known: Set(["node_id", "roles", "data_directory", "log_level", "listen", "tls", "peers", "limits"] + specs.map(\.name)))
        let nodeID = string(root, "", "node_id", required: true)
        if let nodeID, !nodeID.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) || nodeID.count > 63 {
            problem("", "node_id", "\"\(nodeID)\" must be up to 63 letters, digits, - _ or . (it goes into the node's certificate)")
        }
        var roles: [Role] = []
        if let value = root["roles"] {
            if let array = value.array {
                for element in array {
                    guard let name = element.string, let role = Role(rawValue: name) else {
                        problem("", "roles", "\(element.string.map { "\"\($0)\"" } ?? "a \(element.type)") is not a role (roles: \(Role.allCases.map(\.rawValue).joined(separator: ", ")))")
                        continue
                    }
                    if !roles.contains(role) { roles.append(role) }
                }
                if array.isEmpty { problem("", "roles", "must name at least one role") }
            } else {
                problem("", "roles", "must be an array of role names, not \(value.type)")
            }
        } else {
            problems.append(ConfigProblem(key: "roles", line: nil, message: "is required"))
        }
        let dataDirectory = string(root, "", "data_directory", required: true)
        var logLevel = LogLevel.info
        if let text = string(root, "", "log_level", required: false) {
            if let level = LogLevel(rawValue: text) { logLevel = level } else {
                problem("", "log_level", "\"\(text)\" is not one of \(LogLevel.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }

        var cluster: Endpoint?, admin: Endpoint?, metrics: Endpoint?
        var moduleListen: [String: Endpoint] = [:]
        if let listen = subtable(root, "listen") {
            let declared = modules.flatMap { $0.listenerNames }
            unknownKeys(listen, name: "listen", known: Set(["cluster", "admin", "metrics"] + declared))
            cluster = endpoint(listen, "listen", "cluster", required: true)
            admin = endpoint(listen, "listen", "admin", required: false)
            metrics = endpoint(listen, "listen", "metrics", required: false)
            for name in declared { moduleListen[name] = endpoint(listen, "listen", name, required: false) }
        } else {
            problems.append(ConfigProblem(key: "listen.cluster", line: nil, message: "is required"))
        }

        var ca: String?, certificate: String?, key: String?
        if let tls = subtable(root, "tls") {
            unknownKeys(tls, name: "tls", known: ["ca", "certificate", "private_key"])
            ca = credential(string(tls, "tls", "ca", required: true), "tls", "ca")
            certificate = credential(string(tls, "tls", "certificate", required: true), "tls", "certificate")
            key = credential(string(tls, "tls", "private_key", required: true), "tls", "private_key")
        } else {
            problems.append(ConfigProblem(key: "tls", line: nil, message: "is required: [tls] with ca, certificate and private_key"))
        }

        var peers: [Role: [Endpoint]] = [:]
        if let table = subtable(root, "peers") {
            unknownKeys(table, name: "peers", known: Set(Role.allCases.map(\.rawValue)))
            for role in Role.allCases {
                guard let value = table[role.rawValue] else { continue }
                guard let array = value.array else { problem("peers", role.rawValue, "must be an array of \"host:port\" strings"); continue }
                for element in array {
                    guard let text = element.string, let endpoint = Endpoint(text) else {
                        problem("peers", role.rawValue, "\(element.string.map { "\"\($0)\"" } ?? "a \(element.type)") is not host:port")
                        continue
                    }
                    peers[role, default: []].append(endpoint)
                }
            }
        }

        var config = NodeConfig(nodeID: nodeID ?? "", roles: roles, dataDirectory: Self.absolute(dataDirectory ?? "", base: base),
                                logLevel: logLevel, clusterListen: cluster ?? Endpoint(host: "", port: 0), adminListen: admin,
                                metricsListen: metrics, caPath: Self.absolute(ca ?? "", base: base),
                                certificatePath: Self.absolute(certificate ?? "", base: base), privateKeyPath: Self.absolute(key ?? "", base: base),
                                peers: peers)
        if let limits = subtable(root, "limits") {
            unknownKeys(limits, name: "limits", known: ["max_connections", "max_concurrent_streams", "max_frame_size", "idle_timeout_seconds", "drain_timeout_seconds",
                                                        "max_unauthenticated_connections_per_address", "unauthenticated_timeout_seconds"])
            config.maxConnections = int(limits, "limits", "max_connections", range: 1...1_000_000) ?? config.maxConnections
            config.maxConcurrentStreams = int(limits, "limits", "max_concurrent_streams", range: 1...100_000) ?? config.maxConcurrentStreams
            config.maxFrameSize = int(limits, "limits", "max_frame_size", range: 16384...16_777_216) ?? config.maxFrameSize
            config.idleTimeoutSeconds = int(limits, "limits", "idle_timeout_seconds", range: 1...86400) ?? config.idleTimeoutSeconds
            config.drainTimeoutSeconds = int(limits, "limits", "drain_timeout_seconds", range: 0...3600) ?? config.drainTimeoutSeconds
            config.maxUnauthenticatedConnectionsPerAddress = int(limits, "limits", "max_unauthenticated_connections_per_address", range: 1...1_000_000)
                ?? config.maxUnauthenticatedConnectionsPerAddress
            config.unauthenticatedTimeoutSeconds = int(limits, "limits", "unauthenticated_timeout_seconds", range: 1...3600) ?? config.unauthenticatedTimeoutSeconds
        }
        config.moduleListen = moduleListen
        for spec in specs {
            guard let table = subtable(root, spec.name) else { continue }
            unknownKeys(table, name: spec.name, known: Set(spec.keys.map(\.name)))
            var section = ConfigSection()
            for key in spec.keys {
                switch key.kind {
                case .integer(let range):
                    if let value = int(table, spec.name, key.name, range: range) { section.values[key.name] = .integer(value) }
                case .string:
                    if let value = string(table, spec.name, key.name, required: false) { section.values[key.name] = .string(value) }
                case .path:
                    if let value = string(table, spec.name, key.name, required: false) { section.values[key.name] = .string(Self.absolute(value, base: base)) }
                case .boolean:
                    if let value = table[key.name] {
                        if let flag = value.bool { section.values[key.name] = .boolean(flag) } else { problem(spec.name, key.name, "must be true or false, not \(value.type)") }
                    }
                }
            }
            for (key, message) in spec.check(section) { problem(spec.name, key, message) }
            config.sections[spec.name] = section
        }
        if let admin, admin == config.clusterListen, admin.port != 0 { problem("listen", "admin", "must differ from listen.cluster") }
        // A listener no module of the node's roles declares would never be bound.
        if !roles.isEmpty {
            let used = Set(table.modules(for: roles).flatMap { $0.listenerNames })
            for name in moduleListen.keys.sorted() where !used.contains(name) {
                let owners = Role.allCases.filter { role in table.modules(for: role).contains { $0.listenerNames.contains(name) } }.map(\.rawValue)
                problem("listen", name, "no role of this node uses it: it is the \(owners.joined(separator: " and ")) role's listener, "
                        + "and this node runs \(roles.map(\.rawValue).joined(separator: ", ")); remove it or add the role")
            }
        }
        return problems.isEmpty ? config : nil
    }
}
