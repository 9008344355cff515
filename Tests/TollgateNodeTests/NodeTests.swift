import Foundation
import Testing
import TollgateNode
import TollgateStorage

@Suite struct NodeTests {
    @Test func eachRoleOpensOnlyItsDatabases() {
        #expect(Role.gateway.databases.isEmpty)
        #expect(Role.trafficmanager.databases == [.mbstoredb])
        #expect(Role.analytics.databases == [.statdb])
        #expect(Role.keymanager.databases == [.userdb, .apimgtdb, .regdb])
        #expect(Role.allCases.reduce(into: Set()) { $0.formUnion($1.databases) } == Set(LogicalDatabaseName.allCases))
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
    /// NOTIFY_SOCKET, stops on SIGTERM with exit 0, and refuses a missing
    /// data directory with one line and a non-zero exit.
    @Test func tollgatedStartsReportsReadyAndStops() throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("tollgated")
        try #require(FileManager.default.isExecutableFile(atPath: binary.path), "build tollgated first")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollgated-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        // A datagram socket standing in for systemd's notify socket.
        let socketPath = dir + "/notify.sock"
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
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        let process = Process()
        process.executableURL = binary
        process.arguments = ["--all-in-one", "--data-dir", dir]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = socketPath
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        try process.run()

        var buffer = [UInt8](repeating: 0, count: 4096)
        let received = recv(fd, &buffer, buffer.count, 0)
        try #require(received > 0, "no sd_notify message within 20 s")
        let message = String(decoding: buffer.prefix(received), as: UTF8.self)
        #expect(message.contains("READY=1"))
        #expect(message.contains("STATUS=ready: roles publisher"))

        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        let stopping = recv(fd, &buffer, buffer.count, 0)
        #expect(stopping > 0 && String(decoding: buffer.prefix(stopping), as: UTF8.self).contains("STOPPING=1"))
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(printed.contains("ready: roles"))
        for name in LogicalDatabaseName.allCases {
            #expect(FileManager.default.fileExists(atPath: "\(dir)/\(name.rawValue)/data.mdb"))
        }

        let failing = Process()
        failing.executableURL = binary
        failing.arguments = ["--all-in-one", "--data-dir", dir + "/missing"]
        let errors = Pipe()
        failing.standardError = errors
        try failing.run()
        failing.waitUntilExit()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(failing.terminationStatus != 0)
        #expect(text.hasPrefix("tollgated: data directory \(dir)/missing does not exist"))
        #expect(text.split(separator: "\n").count == 1)
    }

    /// An existing directory the node's user cannot write: refused with one
    /// line naming the path. Run as an unprivileged user (root may write anywhere).
    @Test func anUnwritableDataDirectoryIsRefused() throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("tollgated")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollgated-ro-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let process = Process()
        if getuid() == 0 {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", binary.path, "--all-in-one", "--data-dir", dir]
        } else {
            try FileManager.default.setAttributes([.posixPermissions: 0o555], ofItemAtPath: dir)
            process.executableURL = binary
            process.arguments = ["--all-in-one", "--data-dir", dir]
        }
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        process.waitUntilExit()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 1)
        #expect(text.hasPrefix("tollgated: data directory \(dir) is not writable"), "\(text)")
        #expect(text.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: dir + "/userdb"))
    }
}
