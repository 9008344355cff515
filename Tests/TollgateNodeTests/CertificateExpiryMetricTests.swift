import Foundation
import OpenSSLKit
import RoleCore
import TestSupport
import Testing
@testable import TollgateNode

/// `tollgate_certificate_expiry_seconds`: when the node's certificate and
/// its CA expire, read at scrape time so a renewed file shows at once.
@Suite struct CertificateExpiryMetricTests {
    func value(_ text: String, certificate: String) -> Double? {
        let prefix = "tollgate_certificate_expiry_seconds{certificate=\"\(certificate)\"} "
        return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) }
    }

    @Test func reportsTheExpiryOfTheFilesInUse() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["gateway"])
        let metrics = NodeMetrics(version: "test", nodeID: "n1", roles: [.gateway], dataDirectory: fixture.path("data"), databases: [],
                                  certificateFile: fixture.path("n1.pem"), caFile: fixture.caPath)
        let text = String(decoding: metrics.render(peers: [], bufferedRequestBytes: 0), as: UTF8.self)
        let node = try #require(Certificate.load(pemFile: fixture.path("n1.pem")).first)
        let ca = try #require(Certificate.load(pemFile: fixture.caPath).first)
        #expect(value(text, certificate: "node") == Double(node.notValidAfter), "\(text)")
        #expect(value(text, certificate: "ca") == Double(ca.notValidAfter), "\(text)")
        #expect(text.contains("# HELP tollgate_certificate_expiry_seconds"))

        // A file that cannot be read reports 0: expired, so an alert fires.
        metrics.useCertificates(node: fixture.path("missing.pem"), ca: fixture.caPath)
        #expect(value(String(decoding: metrics.render(peers: [], bufferedRequestBytes: 0), as: UTF8.self), certificate: "node") == 0)
    }
}
