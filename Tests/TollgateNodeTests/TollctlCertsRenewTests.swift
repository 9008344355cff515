import Foundation
import OpenSSLKit
import TestSupport
import Testing

/// `tollctl certs renew`: same holder and names, new key, in place.
@Suite struct TollctlCertsRenewTests {
    @Test func renewsANodeCertificateInPlace() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tollctl-renew-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try runTollctl(["certs", "create-ca", "--out", dir]).status == 0)
        let issued = try runTollctl(["certs", "issue-node", "--ca", dir, "--node-id", "gw-1", "--role", "gateway", "--role", "analytics",
                                     "--dns", "gw1.internal", "--ip", "10.0.0.7", "--ip", "::1", "--days", "30", "--out", dir])
        #expect(issued.status == 0, "\(issued.output)")
        let pem = dir + "/gw-1.pem", key = dir + "/gw-1.key"
        chmod(pem, 0o640)
        let old = try #require(Certificate.load(pemFile: pem).first)
        let oldKey = try String(contentsOfFile: key, encoding: .utf8)

        // Not yet due: left alone.
        let early = try runTollctl(["certs", "renew", "--ca", dir, "--within", "10", pem])
        #expect(early.status == 0 && early.output.contains("not renewed"), "\(early.output)")
        #expect(try String(contentsOfFile: key, encoding: .utf8) == oldKey)

        let renewed = try runTollctl(["certs", "renew", "--ca", dir, "--within", "40", "--days", "90", pem])
        #expect(renewed.status == 0 && renewed.output.contains("renewed \(pem) (node gw-1 (gateway, analytics))"), "\(renewed.output)")
        let new = try #require(Certificate.load(pemFile: pem).first)
        #expect(new.uniformResourceIdentifiers == old.uniformResourceIdentifiers)
        #expect(new.dnsNames == ["gw1.internal"] && new.ipAddresses == ["10.0.0.7", "::1"], "\(new.ipAddresses)")
        #expect(new.notValidAfter - new.notValidBefore > 89 * 86_400)
        // Same key: a running node's key (handed over at start) still matches.
        #expect(try String(contentsOfFile: key, encoding: .utf8) == oldKey)
        #expect(new.der != old.der)
        #expect(try runTollctl(["certs", "verify", "--ca", dir + "/ca.pem", pem]).status == 0)
        // The pair still matches, and each file kept its mode.
        #expect((try? TLSContext(configuration: .client(trustRootsFile: dir + "/ca.pem", certificateChainFile: pem, privateKeyFile: key))) != nil)
        #expect(try FileManager.default.attributesOfItem(atPath: pem)[.posixPermissions] as? Int == 0o640)
        #expect(try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["ca.key", "ca.pem", "gw-1.key", "gw-1.pem"])

        // --new-key re-keys; the pair still matches and the key keeps its mode.
        let rekeyed = try runTollctl(["certs", "renew", "--ca", dir, "--new-key", pem])
        #expect(rekeyed.status == 0 && rekeyed.output.contains("with a new key in \(key)"), "\(rekeyed.output)")
        #expect(try String(contentsOfFile: key, encoding: .utf8) != oldKey)
        #expect((try? TLSContext(configuration: .client(trustRootsFile: dir + "/ca.pem", certificateChainFile: pem, privateKeyFile: key))) != nil)
        #expect(try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int == 0o600)

        // The CA is not something renew reissues.
        let ca = try runTollctl(["certs", "renew", "--ca", dir, dir + "/ca.pem"])
        #expect(ca.status != 0 && ca.output.contains("is not a Tollgate node or admin certificate"), "\(ca.output)")
    }
}
