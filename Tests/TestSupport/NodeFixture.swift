public import Foundation
public import OpenSSLKit

/// Files for real `tollgated` processes: a cluster CA, node certificates,
/// an admin password, configuration files, and the built binaries.
public final class NodeFixture: @unchecked Sendable {
    // @unchecked: the fields are set in init and never change; the CA key is only read.
    public let directory: URL
    public let ca: IssuedCertificate
    public let adminPassword = "fixture-Admin-1"

    public init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-nodes-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        ca = try CertificateIssuer.makeAuthority(commonName: "Tollgate fixture CA", validDays: 1)
        try ca.certificatePEM.write(to: directory.appendingPathComponent("ca.pem"), atomically: true, encoding: .utf8)
        try (adminPassword + "\n").write(to: directory.appendingPathComponent("admin.password"), atomically: true, encoding: .utf8)
        let admin = try CertificateIssuer.issue(CertificateRequest(commonName: "admin", usage: .client, uniformResourceIdentifiers: ["tollgate://user/admin"],
                                                                   validUntilOffset: 3600), signedBy: ca)
        try admin.certificatePEM.write(to: directory.appendingPathComponent("admin.pem"), atomically: true, encoding: .utf8)
        try admin.privateKeyPEM.write(to: directory.appendingPathComponent("admin.key"), atomically: true, encoding: .utf8)
    }

    public func remove() { try? FileManager.default.removeItem(at: directory) }

    public var caPath: String { directory.appendingPathComponent("ca.pem").path }
    public func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Issues `<id>.pem` and `<id>.key` for a node running `roles` on localhost.
    public func issueNode(_ id: String, roles: [String]) throws {
        let uri = "tollgate://node/\(id)?" + roles.map { "role=\($0)" }.joined(separator: "&")
        let issued = try CertificateIssuer.issue(CertificateRequest(commonName: id, usage: .node, uniformResourceIdentifiers: [uri], dnsNames: ["localhost"],
                                                                    ipAddresses: ["127.0.0.1"], validUntilOffset: 3600), signedBy: ca)
        try issued.certificatePEM.write(to: directory.appendingPathComponent("\(id).pem"), atomically: true, encoding: .utf8)
        try issued.privateKeyPEM.write(to: directory.appendingPathComponent("\(id).key"), atomically: true, encoding: .utf8)
    }

    /// A port nothing listens on right now.
    public static func freePort() throws -> Int {
        // Below the kernel's ephemeral range (32768–60999 here): a port the
        // kernel handed out for a moment could be taken by an outgoing
        // connection before the node under test binds it ("address already
        // in use" in CI). Ports here are only ever chosen on purpose; the
        // bind checks nobody listens on this one now.
        for _ in 0..<200 {
            let port = Int.random(in: 10_000..<32_768)
            if canBind(port) { return port }
        }
        throw POSIXError(.EADDRINUSE)
    }

    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 }
        }
    }

    /// Writes `<id>.toml` for a node with its data directory under the fixture.
    @discardableResult
    public func writeConfig(_ id: String, roles: [String], clusterPort: Int, adminPort: Int?, peers: [String: [String]] = [:],
                            extra: String = "") throws -> String {
        let data = directory.appendingPathComponent("data-\(id)")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        var text = """
            node_id = "\(id)"
            roles = [\(roles.map { "\"\($0)\"" }.joined(separator: ", "))]
            data_directory = "data-\(id)"

            [listen]
            cluster = "127.0.0.1:\(clusterPort)"

            """
        if let adminPort { text += "admin = \"127.0.0.1:\(adminPort)\"\n" }
        text += """

            [tls]
            ca = "ca.pem"
            certificate = "\(id).pem"
            private_key = "\(id).key"

            [users]
            bootstrap_admin = "admin"
            bootstrap_password_file = "admin.password"

            """
        if !peers.isEmpty {
            text += "\n[peers]\n"
            for (role, addresses) in peers.sorted(by: { $0.key < $1.key }) {
                text += "\(role) = [\(addresses.map { "\"\($0)\"" }.joined(separator: ", "))]\n"
            }
        }
        text += extra
        let path = directory.appendingPathComponent("\(id).toml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The directory holding the built executables (beside the test bundle).
    public static var binDirectory: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    }
}

/// A running `tollgated`, its output collected as it arrives.
public final class NodeProcess: Sendable {
    public let process: Process
    private let reader: PipeReader
    /// Set by the process's termination handler.
    private let exited: Watched<Bool>

    /// Starts `tollgated --config <config>`; `launcher` (`setpriv` and its
    /// arguments, say) runs it as a child of another program.
    public init(config: String, environment extra: [String: String] = [:], arguments: [String] = [], launcher: [String] = []) throws {
        let process = Process()
        let tollgated = NodeFixture.binDirectory.appendingPathComponent("tollgated")
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = Array(launcher.dropFirst()) + [tollgated.path, "--config", config] + arguments
        } else {
            process.executableURL = tollgated
            process.arguments = ["--config", config] + arguments
        }
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "NOTIFY_SOCKET")
        for (key, value) in extra { environment[key] = value }
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let exited = Watched(false)
        process.terminationHandler = { _ in exited.update { $0 = true } }
        try process.run()
        self.process = process
        self.exited = exited
        reader = PipeReader(pipe)
    }

    public var output: String { reader.text }

    /// Waits until the output contains `text`, or the process has exited and
    /// its output ended, or `timeout` passed; whether the output contains it.
    public func waitFor(_ text: String, timeout: Duration = .seconds(30)) async -> Bool {
        await reader.contains(text, timeout: timeout)
    }

    /// Sends SIGTERM and waits for the exit status; a node still running a
    /// minute later is killed (and its status says so).
    public func stop() async -> Int32 {
        if process.isRunning { process.terminate() }
        do {
            try await exited.wait(for: "tollgated to exit after SIGTERM", timeout: .seconds(60)) { $0 }
        } catch {
            kill(process.processIdentifier, SIGKILL)
            _ = try? await exited.wait(for: "tollgated to exit after SIGKILL") { $0 }
        }
        return process.terminationStatus
    }
}

/// The `tollgated` processes a test starts through ``start(config:environment:arguments:launcher:)``.
public final class NodeProcesses: Sendable {
    private let started = Watched<[NodeProcess]>([])

    public func start(config: String, environment: [String: String] = [:], arguments: [String] = [], launcher: [String] = []) throws -> NodeProcess {
        let node = try NodeProcess(config: config, environment: environment, arguments: arguments, launcher: launcher)
        started.update { $0.append(node) }
        return node
    }

    fileprivate func stopAll() async {
        for node in started.current { _ = await node.stop() }
    }
}

/// Runs `body`, then stops every node it started, whether it returned or
/// threw: a failed expectation never leaves a `tollgated` running.
public func withNodes<T>(isolation: isolated (any Actor)? = #isolation, _ body: (NodeProcesses) async throws -> T) async throws -> T {
    let nodes = NodeProcesses()
    return try await withTeardown { try await body(nodes) } teardown: { await nodes.stopAll() }
}

/// Runs `tollctl` to completion, returning its status and output.
public func runTollctl(_ arguments: [String], environment extra: [String: String] = [:], input: String? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = NodeFixture.binDirectory.appendingPathComponent("tollctl")
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    for (key, value) in extra { environment[key] = value }
    process.environment = environment
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    let stdin = Pipe()
    process.standardInput = stdin
    try process.run()
    if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
    try stdin.fileHandleForWriting.close()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
public final class NotifyListener: @unchecked Sendable {
    // @unchecked: the descriptor is only read after init, by one test task at a time.
    public let path: String
    private let fd: Int32

    public init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8.prefix(raw.count - 1))
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    }

    deinit { close(fd) }

    /// The next datagram, or nil after `timeout`.
    public func next(timeout: Duration = .seconds(30)) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        guard poll(&poller, 1, milliseconds) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer.prefix(count), as: UTF8.self) : nil
    }

    /// Datagrams until one contains `text` (included), or nil on timeout.
    public func until(_ text: String, timeout: Duration = .seconds(30)) -> [String]? {
        let deadline = ContinuousClock.now + timeout
        var seen: [String] = []
        while ContinuousClock.now < deadline {
            guard let message = next(timeout: deadline - ContinuousClock.now) else { return nil }
            seen.append(message)
            if message.contains(text) { return seen }
        }
        return nil
    }
}
