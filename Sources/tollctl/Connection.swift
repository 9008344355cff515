import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
import RPCNIO
import TOMLKit
import TollgateProto

#if canImport(Glibc)
import Glibc
#endif

/// How to reach a node and as whom. Each setting comes from a flag, else
/// an environment variable, else the config file
/// (`$XDG_CONFIG_HOME/tollgate/tollctl.toml`, by default
/// `~/.config/tollgate/tollctl.toml`).
struct ConnectionOptions: ParsableArguments {
    @Option(help: "The node's admin listener, host:port (env TOLLCTL_NODE; config `node`).")
    var node: String?

    @Option(help: "The cluster CA certificate (env TOLLCTL_CA; config `ca`).")
    var ca: String?

    @Option(help: "Your admin client certificate, if you have one (env TOLLCTL_CERT; config `certificate`).")
    var cert: String?

    @Option(help: "Its private key (env TOLLCTL_KEY; config `private_key`).")
    var key: String?

    @Option(name: .customLong("server-name"), help: "The name to verify the node's certificate against; default: the host of --node.")
    var serverName: String?

    @Option(help: "The tenant domain to act in (env TOLLCTL_TENANT; config `tenant`); default: your own.")
    var tenant: String?

    @Option(name: .customLong("tollctl-config"), help: "Another config file instead of the default one.")
    var configFile: String?

    @Option(help: "Use the session signed in with `tollctl login --as NAME` instead of the default one (env TOLLCTL_SESSION).")
    var session: String?

    @Option(help: "Seconds to wait for each call.")
    var timeout: Int = 30
}

/// Settings resolved from flags, environment and the config file.
struct ClientSettings {
    var node: String
    var ca: String
    var certificate: String?
    var privateKey: String?
    var serverName: String?
    var tenant: String?
    var user: String?
    var timeout: Int
    /// A named session (`login --as NAME`), or nil for the node's default one.
    var sessionName: String?

    static var configDirectory: String {
        let environment = ProcessInfo.processInfo.environment
        if let xdg = environment["XDG_CONFIG_HOME"], !xdg.isEmpty { return "\(xdg)/tollgate" }
        return "\(NSHomeDirectory())/.config/tollgate"
    }

    static var stateDirectory: String {
        let environment = ProcessInfo.processInfo.environment
        if let xdg = environment["XDG_STATE_HOME"], !xdg.isEmpty { return "\(xdg)/tollgate" }
        return "\(NSHomeDirectory())/.local/state/tollgate"
    }

    static func resolve(_ options: ConnectionOptions) throws -> ClientSettings {
        let environment = ProcessInfo.processInfo.environment
        let file = options.configFile ?? "\(configDirectory)/tollctl.toml"
        var fileValues: [String: String] = [:]
        if FileManager.default.fileExists(atPath: file) {
            let text: String
            do {
                text = try String(contentsOfFile: file, encoding: .utf8)
            } catch {
                throw CommandFailure("cannot read \(file): \(error)")
            }
            let table: TOMLTable
            do {
                table = try TOMLTable(string: text)
            } catch let error as TOMLParseError {
                throw CommandFailure("\(file): not valid TOML at line \(error.source.begin.line): \(error.description)")
            }
            let known: Set<String> = ["node", "ca", "certificate", "private_key", "server_name", "tenant", "user", "session"]
            for key in table.keys {
                guard known.contains(key) else { throw CommandFailure("\(file): unknown key \(key) (known: \(known.sorted().joined(separator: ", ")))") }
                guard let value = table[key]?.string else { throw CommandFailure("\(file): \(key) must be a string") }
                fileValues[key] = value
            }
        } else if options.configFile != nil {
            throw CommandFailure("\(file) does not exist")
        }
        func pick(_ flag: String?, _ variable: String, _ key: String) -> String? {
            flag ?? environment[variable].flatMap { $0.isEmpty ? nil : $0 } ?? fileValues[key]
        }
        guard let node = pick(options.node, "TOLLCTL_NODE", "node") else {
            throw CommandFailure("no node to talk to: pass --node host:port, set TOLLCTL_NODE, or put node = \"host:port\" in \(file)")
        }
        guard let ca = pick(options.ca, "TOLLCTL_CA", "ca") else {
            throw CommandFailure("no cluster CA certificate: pass --ca FILE, set TOLLCTL_CA, or put ca = \"FILE\" in \(file)")
        }
        let sessionName = pick(options.session, "TOLLCTL_SESSION", "session")
        if let sessionName { try checkSessionName(sessionName) }
        let certificate = pick(options.cert, "TOLLCTL_CERT", "certificate")
        let key = pick(options.key, "TOLLCTL_KEY", "private_key")
        guard (certificate == nil) == (key == nil) else { throw CommandFailure("a client certificate needs its private key, and the other way round (--cert and --key)") }
        return ClientSettings(node: node, ca: ca, certificate: certificate, privateKey: key,
                              serverName: options.serverName ?? fileValues["server_name"], tenant: pick(options.tenant, "TOLLCTL_TENANT", "tenant"),
                              user: environment["TOLLCTL_USER"] ?? fileValues["user"], timeout: options.timeout, sessionName: sessionName)
    }

    var endpoint: (host: String, port: Int) {
        get throws {
            let host: Substring, port: Substring
            if node.hasPrefix("["), let close = node.firstIndex(of: "]") {
                host = node[node.index(after: node.startIndex)..<close]
                port = node[node.index(after: close)...].dropFirst()
            } else if let colon = node.lastIndex(of: ":") {
                host = node[..<colon]
                port = node[node.index(after: colon)...]
            } else {
                throw CommandFailure("node \"\(node)\" is not host:port")
            }
            guard let number = Int(port), (1...65535).contains(number), !host.isEmpty else { throw CommandFailure("node \"\(node)\" is not host:port") }
            return (String(host), number)
        }
    }

    /// Where the session for this node is kept (mode 0600): one default
    /// session per node, and any number of named ones beside it.
    var sessionFile: String {
        sessionFile(named: sessionName)
    }

    func sessionFile(named name: String?) -> String {
        "\(Self.stateDirectory)/\(sessionFilePrefix)\(name.map { "--" + $0 } ?? "")"
    }

    /// `session-<node>`: the default session's file name, and the start of the named ones'.
    var sessionFilePrefix: String {
        "session-" + String(node.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" ? $0 : "_" })
    }

    /// The label for messages: the node, and the session when it is a named one.
    var sessionLabel: String {
        sessionName.map { "\(node) (session \($0))" } ?? node
    }
}

/// Session names become part of a file name: letters, digits, -, _ and . only.
func checkSessionName(_ name: String) throws {
    let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")
    guard (1...64).contains(name.count), name.allSatisfy(allowed.contains), name.first != "." else {
        throw CommandFailure("session name \"\(name)\" is not usable: 1 to 64 letters, digits, -, _, . or @, such as publisher-bob")
    }
}

extension ClientSettings {
}

/// A saved session: the bearer token and who it is for.
struct SavedSession {
    var token: String
    var user: String
    var expiresAtUnixMs: Int64

    static func load(_ path: String) -> SavedSession? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let lines = text.split(separator: "\n").map(String.init)
        guard lines.count >= 3, let expiry = Int64(lines[2]) else { return nil }
        return SavedSession(token: lines[0], user: lines[1], expiresAtUnixMs: expiry)
    }

    func save(_ path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // Created 0600 before the token is written, so it is never readable by others.
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw CommandFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        fchmod(fd, 0o600)
        var text = "\(token)\n\(user)\n\(expiresAtUnixMs)\n"
        let written = text.withUTF8 { write(fd, $0.baseAddress, $0.count) }
        guard written > 0 else { throw CommandFailure("cannot write \(path)") }
    }
}

/// An open connection to one node, with the saved session if there is one.
struct NodeSession {
    let settings: ClientSettings
    let group: MultiThreadedEventLoopGroup
    let connection: RPCConnection
    let session: SavedSession?

    /// Connects, runs `body`, and closes the connection whatever happens.
    static func with<Result>(_ options: ConnectionOptions, _ body: (NodeSession) async throws -> Result) async throws -> Result {
        let node = try await open(options)
        do {
            let result = try await body(node)
            await node.close()
            return result
        } catch {
            await node.close()
            throw error
        }
    }

    static func open(_ options: ConnectionOptions) async throws -> NodeSession {
        let settings = try ClientSettings.resolve(options)
        let (host, port) = try settings.endpoint
        let tls: TLSContext
        do {
            tls = try TLSContext(configuration: .client(trustRootsFile: settings.ca, certificateChainFile: settings.certificate,
                                                        privateKeyFile: settings.privateKey, applicationProtocols: [RPCServer.alpn]))
        } catch {
            throw CommandFailure("cannot use the TLS files: \(error)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connection: RPCConnection
        do {
            connection = try await RPCConnection.connect(host: host, port: port, serverHostname: settings.serverName ?? host, tls: tls, group: group)
        } catch {
            try? await group.shutdownGracefully()
            throw CommandFailure("cannot connect to \(settings.node): \(Self.explain(error, settings: settings))")
        }
        var session = SavedSession.load(settings.sessionFile)
        if let saved = session, saved.expiresAtUnixMs <= Int64(Date().timeIntervalSince1970 * 1000) { session = nil }
        return NodeSession(settings: settings, group: group, connection: connection, session: session)
    }

    static func explain(_ error: any Error, settings: ClientSettings) -> String {
        let text = ConnectionErrorText.describe(error)
        if text.lowercased().contains("connection refused") { return "connection refused (is tollgated running, and is this its admin listener?)" }
        if isTLSFailure(error, text) { return explainTLS(text, settings: settings) }
        return text
    }

    /// A refused or failed TLS handshake, as OpenSSL or the TLS handler reports it.
    static func isTLSFailure(_ error: any Error, _ text: String) -> Bool {
        if error is TLSError { return true }
        let lower = text.lowercased()
        return ["tls", "ssl", "handshake", "certificate", "alert"].contains { lower.contains($0) }
    }

    /// What to do about a failed handshake: most often the cluster listener,
    /// which wants a certificate that a signed-in user does not have.
    static func explainTLS(_ text: String, settings: ClientSettings) -> String {
        let lower = text.lowercased()
        if lower.contains("verify failed") || lower.contains("certificate verification") {
            return "the node's certificate does not verify against \(settings.ca) (\(text)): give the CA certificate of this node's cluster "
                + "(--ca, TOLLCTL_CA or `ca` in tollctl.toml), and --server-name if the certificate names the node differently"
        }
        if settings.certificate == nil {
            return "the TLS handshake failed (\(text)). This looks like a node's cluster listener (`cluster` in its [listen] section), "
                + "which admits only cluster nodes and admin certificates: point --node at the node's admin listener (`admin` in [listen], "
                + "e.g. host:7444) and sign in with `tollctl login`, or present an admin certificate with --cert and --key"
        }
        return "the TLS handshake failed (\(text)): check that --ca is the cluster's CA certificate and that --cert/--key are an admin "
            + "certificate that CA issued (`tollctl certs verify`)"
    }

    /// Options for a call: the session token, tenant and timeout.
    var callOptions: CallOptions {
        var metadata = Metadata()
        if let session { metadata.add("authorization", "Bearer \(session.token)") }
        if let tenant = settings.tenant { metadata.add("x-tenant", tenant) }
        return CallOptions(metadata: metadata, timeout: .seconds(settings.timeout))
    }

    func close() async {
        await connection.close()
        try? await group.shutdownGracefully()
    }

    /// Runs `body` and turns call failures into messages that say what to do.
    func run<Result>(signingIn: Bool = false, _ body: () async throws -> Result) async throws -> Result {
        do {
            return try await body()
        } catch let error as RPCError {
            switch error.code {
            case .unauthenticated where signingIn:
                throw CommandFailure(error.message)
            case .unauthenticated where session == nil:
                throw CommandFailure("not signed in to \(settings.sessionLabel): run `tollctl login\(loginArguments)`")
            case .unauthenticated:
                throw CommandFailure("\(error.message): run `tollctl login\(loginArguments)` again")
            case .permissionDenied where error.message.contains("roles that grant it:"):
                throw CommandFailure("permission denied: \(error.message) (an administrator gives a role with `tollctl user roles NAME --add ROLE`\(settings.sessionName == nil ? "; keep another identity's session with `tollctl login --as NAME` and use it with --session NAME" : ""))")
            case .permissionDenied:
                throw CommandFailure("permission denied: \(error.message)")
            case .unimplemented:
                // The node's answer names the roles that serve the method (docs/rpc-protocol.md §13).
                throw CommandFailure("\(settings.node) does not serve this: \(error.message). Point --node at a node with such a role (`tollctl methods` shows which roles serve what)")
            case .unavailable where Self.isTLSFailure(error, error.message):
                throw CommandFailure("cannot talk to \(settings.node): \(Self.explainTLS(error.message, settings: settings))")
            default:
                throw CommandFailure("\(error.code): \(error.message)")
            }
        }
    }

    /// ` --as NAME` when a named session is in use, so the hint signs in to the same one.
    var loginArguments: String { settings.sessionName.map { " --as \($0)" } ?? "" }
}

/// Reads a password without echoing it, from the terminal.
func readPassword(prompt: String) throws -> String {
    guard isatty(STDIN_FILENO) == 1 else {
        throw CommandFailure("no password: pass --password-stdin and pipe it in, or set TOLLCTL_PASSWORD")
    }
    FileHandle.standardError.write(Data(prompt.utf8))
    var original = termios()
    tcgetattr(STDIN_FILENO, &original)
    var silent = original
    silent.c_lflag &= ~tcflag_t(ECHO)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent)
    defer {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &original)
        FileHandle.standardError.write(Data("\n".utf8))
    }
    return readLine(strippingNewline: true) ?? ""
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

/// Prints rows as an aligned table with a header.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows {
        for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

/// Prints a JSON value (dictionaries, arrays, strings, numbers, booleans).
func printJSON(_ value: Any) throws {
    let data = try JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    print(String(decoding: data, as: UTF8.self))
}

func formatDuration(milliseconds: Int64) -> String {
    let seconds = milliseconds / 1000
    if seconds < 60 { return "\(seconds)s" }
    if seconds < 3600 { return "\(seconds / 60)m\(seconds % 60)s" }
    if seconds < 86400 { return "\(seconds / 3600)h\((seconds % 3600) / 60)m" }
    return "\(seconds / 86400)d\((seconds % 86400) / 3600)h"
}
