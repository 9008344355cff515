import Foundation
import Testing

/// `tollctl certs` as an operator runs it.
@Suite struct TollctlCertsTests {
    let tollctl = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        .deletingLastPathComponent().appendingPathComponent("tollctl").path

    func run(_ arguments: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tollctl)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    @Test func createsACAAndIssuesVerifiableCertificates() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollctl-certs-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run(["certs", "create-ca", "--out", dir + "/ca"]).0 == 0)
        let node = try run(["certs", "issue-node", "--ca", dir + "/ca", "--node-id", "gw-1", "--role", "gateway", "--dns", "gw1.internal", "--out", dir + "/nodes"])
        #expect(node.0 == 0, "\(node.1)")
        #expect(try run(["certs", "issue-admin", "--ca", dir + "/ca", "--user", "ops@wso2.com", "--out", dir + "/admins"]).0 == 0)

        let shown = try run(["certs", "show", dir + "/nodes/gw-1.pem"])
        #expect(shown.1.contains("identity:    node gw-1 (gateway)") && shown.1.contains("dns:         gw1.internal"), "\(shown.1)")
        #expect(try run(["certs", "show", dir + "/admins/ops@wso2.com.pem"]).1.contains("identity:    user ops@wso2.com"))
        #expect(try run(["certs", "verify", "--ca", dir + "/ca/ca.pem", dir + "/nodes/gw-1.pem"]) == (0, dir + "/nodes/gw-1.pem: OK\n"))

        // Keys are private to their owner; nothing is overwritten.
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/nodes/gw-1.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let again = try run(["certs", "create-ca", "--out", dir + "/ca"])
        #expect(again.0 != 0 && again.1.contains("already exists"))

        // A certificate from another CA does not verify.
        #expect(try run(["certs", "create-ca", "--out", dir + "/other"]).0 == 0)
        let foreign = try run(["certs", "verify", "--ca", dir + "/other/ca.pem", dir + "/nodes/gw-1.pem"])
        #expect(foreign.0 != 0 && foreign.1.contains("does not verify"))

        let badRole = try run(["certs", "issue-node", "--ca", dir + "/ca", "--node-id", "x", "--role", "router", "--out", dir + "/n"])
        #expect(badRole.0 != 0 && badRole.1.contains("unknown role 'router'"))
        let noCA = try run(["certs", "issue-admin", "--ca", dir + "/missing", "--user", "x", "--out", dir + "/n"])
        #expect(noCA.0 != 0 && noCA.1.contains("no CA in"))
    }
}
