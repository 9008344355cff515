import Foundation
import OpenSSLKit

/// Time from exec to READY=1 and idle resident memory of `tollgated`, per
/// role and all-in-one. Uses the tollgated built beside this binary.
func benchNodes() throws {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("tollgated").path
    guard FileManager.default.isExecutableFile(atPath: binary) else {
        print("node startup: \(binary) not built (make bench builds it)")
        return
    }
    let directory = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let ca = try CertificateIssuer.makeAuthority(commonName: "bench CA", validDays: 1)
    try ca.certificatePEM.write(toFile: directory + "/ca.pem", atomically: true, encoding: .utf8)
    try "bench-Admin-1\n".write(toFile: directory + "/admin.password", atomically: true, encoding: .utf8)
    let roles = ["publisher", "store", "keymanager", "gateway", "trafficmanager", "analytics"]
    let cases = roles.map { ($0, [$0]) } + [("all-in-one", roles)]
    for (name, nodeRoles) in cases {
        let uri = "tollgate://node/\(name)?" + nodeRoles.map { "role=\($0)" }.joined(separator: "&")
        let issued = try CertificateIssuer.issue(CertificateRequest(commonName: name, usage: .node, uniformResourceIdentifiers: [uri],
                                                                    dnsNames: ["localhost"], validUntilOffset: 3600), signedBy: ca)
        try issued.certificatePEM.write(toFile: "\(directory)/\(name).pem", atomically: true, encoding: .utf8)
        try issued.privateKeyPEM.write(toFile: "\(directory)/\(name).key", atomically: true, encoding: .utf8)
        var readyTimes: [Double] = []
        var rss = 0
        for round in 0..<5 {
            // Round 0 is the first start (databases created, first admin's
            // password hashed); later rounds restart on the same data.
            let data = "\(directory)/data-\(name)"
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            let config = """
                node_id = "\(name)"
                roles = [\(nodeRoles.map { "\"\($0)\"" }.joined(separator: ", "))]
                data_directory = "\(data)"
                [listen]
                cluster = "127.0.0.1:0"
                admin = "127.0.0.1:0"
                [tls]
                ca = "ca.pem"
                certificate = "\(name).pem"
                private_key = "\(name).key"
                [users]
                bootstrap_admin = "admin"
                bootstrap_password_file = "admin.password"
                """
            let configPath = "\(directory)/\(name).toml"
            try config.write(toFile: configPath, atomically: true, encoding: .utf8)
            let socketPath = "\(directory)/notify-\(name)-\(round).sock"
            defer { unlink(socketPath) }
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: socketPath.utf8.prefix($0.count - 1)) }
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            var timeout = timeval(tv_sec: 30, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["--config", configPath]
            var environment = ProcessInfo.processInfo.environment
            environment["NOTIFY_SOCKET"] = socketPath
            process.environment = environment
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            let start = ContinuousClock.now
            try process.run()
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = recv(fd, &buffer, buffer.count, 0)
                guard count > 0 else { break }
                if String(decoding: buffer.prefix(count), as: UTF8.self).contains("READY=1") { break }
            }
            let elapsed = ContinuousClock.now - start
            readyTimes.append(Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
            if round == 0 {
                Thread.sleep(forTimeInterval: 1.0)  // idle
                let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
                let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
                rss = Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
            }
            process.terminate()
            process.waitUntilExit()
        }
        // The first start creates the databases and hashes the first admin's password.
        let first = readyTimes[0]
        let later = readyTimes.dropFirst().sorted()
        let median = later[later.count / 2]
        print("node \(name) exec → READY=1".padding(toLength: 62, withPad: " ", startingAt: 0)
              + String(format: "%8.1f ms first start, %6.1f ms median restart   idle RSS %6.1f MB   targets 200 ms, 40 MB: %@",
                       first, median, Double(rss) / 1024, max(first, median) <= 200 && Double(rss) / 1024 <= 40 ? "met" : "MISSED"))
    }
}
