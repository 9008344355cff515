import Foundation
import Testing
import TollgateNode
import TestSupport
import TollgateStorage
import RoleCore

@Suite struct NodeTests {
    @Test func eachRoleOpensOnlyItsDatabases() {
        #expect(RoleModules.databases(for: .gateway).isEmpty)
        #expect(RoleModules.databases(for: .trafficmanager) == [.mbstoredb])
        #expect(RoleModules.databases(for: .analytics) == [.statdb])
        #expect(RoleModules.databases(for: .keymanager) == [.userdb, .apimgtdb, .regdb])
        #expect(Role.allCases.reduce(into: Set()) { $0.formUnion(RoleModules.databases(for: $1)) } == Set(LogicalDatabaseName.allCases))
    }

    @Test func anAllInOneNodeOpensTheFiveDatabases() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-node-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let node = try Node.open(roles: Role.allCases, dataDirectory: dir)
        #expect(node.databases.opened == LogicalDatabaseName.allCases)
        #expect(node.statusLine.contains("ready"))
        let gatewayOnly = try Node.open(roles: [.gateway], dataDirectory: dir)
        #expect(gatewayOnly.databases.opened.isEmpty)
    }

    /// The daemon as a process: it reports ready on stdout and to a
    /// NOTIFY_SOCKET once its listeners are bound, and stops on SIGTERM with
    /// exit 0 after STOPPING=1.
    @Test func tollgatedStartsReportsReadyAndStops() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: Role.allCases.map(\.rawValue))
        let config = try fixture.writeConfig("n1", roles: Role.allCases.map(\.rawValue), clusterPort: try NodeFixture.freePort(), adminPort: try NodeFixture.freePort())

        // A datagram socket standing in for systemd's notify socket.
        let socketPath = fixture.path("notify.sock")
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: socketPath.utf8.prefix(raw.count - 1))
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0)
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        try await withNodes { nodes in
            let node = try nodes.start(config: config, environment: ["NOTIFY_SOCKET": socketPath])
            var buffer = [UInt8](repeating: 0, count: 4096)
            let received = recv(fd, &buffer, buffer.count, 0)
            try #require(received > 0, "no sd_notify message within 30 s: \(node.output)")
            let message = String(decoding: buffer.prefix(received), as: UTF8.self)
            #expect(message.contains("READY=1"))
            #expect(message.contains("STATUS=ready: node n1"))

            #expect(await node.stop() == 0)
            let stopping = recv(fd, &buffer, buffer.count, 0)
            #expect(stopping > 0 && String(decoding: buffer.prefix(stopping), as: UTF8.self).contains("STOPPING=1"))
            #expect(node.output.contains("ready: node n1"))
            for name in LogicalDatabaseName.allCases {
                #expect(FileManager.default.fileExists(atPath: fixture.path("data-n1/\(name.rawValue)/data.mdb")))
            }
        }
    }

    /// Runs tollgated on `config` expecting it to refuse to start.
    func refusal(_ config: String, asNobody: Bool = false) throws -> (Int32, [String]) {
        let process = Process()
        let binary = NodeFixture.binDirectory.appendingPathComponent("tollgated").path
        if asNobody {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", binary, "--config", config]
        } else {
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["--config", config]
        }
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = errors
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text.split(separator: "\n").map(String.init))
    }

    @Test func badConfigurationsAreRefusedWithOneLineEach() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["publisher"])
        let port = try NodeFixture.freePort()

        // Unknown key and wrong type: one line each, with key and line.
        let typo = try fixture.writeConfig("n1", roles: ["publisher"], clusterPort: port, adminPort: nil, extra: "\n[limits]\nmax_conections = 5\nidle_timeout_seconds = \"soon\"\n")
        let (status, lines) = try refusal(typo)
        #expect(status == 78)
        #expect(lines.count == 2, "\(lines)")
        #expect(lines.contains { $0.contains("limits.idle_timeout_seconds: must be an integer, not string (line ") }, "\(lines)")
        #expect(lines.contains { $0.contains("limits.max_conections: unknown key") && $0.contains("(line ") }, "\(lines)")

        // Syntax errors carry TOMLKit's line.
        let broken = fixture.path("broken.toml")
        try "node_id = \"n1\"\nroles = [\n".write(toFile: broken, atomically: true, encoding: .utf8)
        let (brokenStatus, brokenLines) = try refusal(broken)
        #expect(brokenStatus == 78 && brokenLines.count == 1 && brokenLines[0].contains("not valid TOML") && brokenLines[0].contains("(line "), "\(brokenLines)")

        // A certificate file that is not there.
        let missingCertificate = try fixture.writeConfig("n2", roles: ["publisher"], clusterPort: port, adminPort: nil)
        let (certStatus, certLines) = try refusal(missingCertificate)
        #expect(certStatus == 78 && certLines.count == 2, "\(certLines)")
        #expect(certLines.contains { $0.contains("tls.certificate: \(fixture.path("n2.pem")) does not exist") }, "\(certLines)")
        #expect(certLines.contains { $0.contains("tls.private_key: \(fixture.path("n2.key")) does not exist") }, "\(certLines)")

        // A certificate for another node.
        try fixture.issueNode("n3", roles: ["gateway"])
        let wrongRole = try fixture.writeConfig("n3", roles: ["publisher"], clusterPort: port, adminPort: nil)
        let (roleStatus, roleLines) = try refusal(wrongRole)
        #expect(roleStatus == 78 && roleLines == ["tollgated: tls.certificate: the certificate does not carry role(s) publisher that this node runs"], "\(roleLines)")

        // A data directory that does not exist.
        let config = try fixture.writeConfig("n1", roles: ["publisher"], clusterPort: port, adminPort: nil)
        try FileManager.default.removeItem(atPath: fixture.path("data-n1"))
        let (dataStatus, dataLines) = try refusal(config)
        #expect(dataStatus == 78 && dataLines.count == 1 && dataLines[0].contains("data_directory: \(fixture.path("data-n1")) is not a directory"), "\(dataLines)")

        // `--check-config` says the same without starting, and accepts a good file.
        try FileManager.default.createDirectory(atPath: fixture.path("data-n1"), withIntermediateDirectories: true)
        let check = Process()
        check.executableURL = NodeFixture.binDirectory.appendingPathComponent("tollgated")
        check.arguments = ["--config", config, "--check-config"]
        let out = Pipe()
        check.standardOutput = out
        try check.run()
        let checked = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        check.waitUntilExit()
        #expect(check.terminationStatus == 0 && checked.contains("configuration is valid"), "\(checked)")
    }

    @Test func aPortInUseIsRefused() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["gateway"])
        try fixture.issueNode("n2", roles: ["gateway"])
        let port = try NodeFixture.freePort()
        try await withNodes { nodes in
            let first = try nodes.start(config: try fixture.writeConfig("n1", roles: ["gateway"], clusterPort: port, adminPort: nil))
            #expect(await first.waitFor("ready: node n1"), "\(first.output)")
            let (status, lines) = try refusal(try fixture.writeConfig("n2", roles: ["gateway"], clusterPort: port, adminPort: nil))
            #expect(status == 1 && lines == ["tollgated: listen.cluster: cannot listen on 127.0.0.1:\(port): address already in use"], "\(lines)")
            #expect(await first.stop() == 0)
        }
    }

    /// A node without privileges (as under systemd: no CAP_NET_ADMIN) serves
    /// connections. Socket options that need privileges would make every
    /// accepted connection close at once.
    @Test(.enabled(if: getuid() == 0, "needs root to run tollgated as another user"))
    func anUnprivilegedNodeServesConnections() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["gateway"])
        let port = try NodeFixture.freePort()
        let config = try fixture.writeConfig("n1", roles: ["gateway"], clusterPort: port, adminPort: nil)
        chmod(fixture.directory.path, 0o755)
        for file in try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path) { chmod(fixture.path(file), 0o755) }
        chown(fixture.path("data-n1"), 65534, 65534)
        try await withNodes { nodes in
            let node = try nodes.start(config: config, launcher: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                                                  "--inh-caps=-all", "--bounding-set=-all"])
            #expect(await node.waitFor("ready: node n1"), "\(node.output)")
            let result = try runTollctl(["ping", "--count", "1", "--node", "127.0.0.1:\(port)", "--server-name", "localhost", "--ca", fixture.caPath,
                                         "--cert", fixture.path("admin.pem"), "--key", fixture.path("admin.key")])
            #expect(result.status == 0 && result.output.contains("reply from n1"), "\(result.output)")
            #expect(await node.stop() == 0, "\(node.output)")
        }
    }

    /// An existing directory the node's user cannot write: refused with one
    /// line naming the path. Run as an unprivileged user (root may write anywhere).
    @Test(.enabled(if: getuid() == 0, "needs root to run tollgated as another user"))
    func anUnwritableDataDirectoryIsRefused() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["publisher"])
        let config = try fixture.writeConfig("n1", roles: ["publisher"], clusterPort: try NodeFixture.freePort(), adminPort: nil)
        // Everything readable by the unprivileged user, the data directory not writable.
        chmod(fixture.directory.path, 0o755)
        for file in try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path) { chmod(fixture.path(file), 0o755) }
        let (status, lines) = try refusal(config, asNobody: true)
        #expect(status == 78 && lines.count == 1 && lines[0].contains("data_directory: \(fixture.path("data-n1")) is not writable by this user"), "\(lines)")
        #expect(!FileManager.default.fileExists(atPath: fixture.path("data-n1/userdb")))
    }
}
