public import Foundation
public import OpenSSLKit

/// A throwaway PKI written to a temporary directory: a cluster CA, a node
/// certificate, an admin client certificate, an expired one, and a client
/// certificate from an unrelated CA.
public struct TestPKI: Sendable {
    public let directory: URL
    public let ca: IssuedCertificate

    public init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-pki-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        ca = try CertificateIssuer.makeAuthority(commonName: "Tollgate test cluster CA", validDays: 1)
        try write("ca", ca)
        try write("node", CertificateIssuer.issue(CertificateRequest(
            commonName: "node-1", usage: .node, uniformResourceIdentifiers: ["tollgate://node/node-1?role=publisher"],
            dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"], validUntilOffset: 3600), signedBy: ca))
        try write("admin", CertificateIssuer.issue(CertificateRequest(
            commonName: "admin", usage: .client, uniformResourceIdentifiers: ["tollgate://user/admin"], validUntilOffset: 3600), signedBy: ca))
        try write("guest", CertificateIssuer.issue(CertificateRequest(
            commonName: "guest", usage: .client, uniformResourceIdentifiers: ["tollgate://user/guest"], validUntilOffset: 3600), signedBy: ca))
        try write("expired", CertificateIssuer.issue(CertificateRequest(
            commonName: "old", usage: .client, validFromOffset: -7200, validUntilOffset: -3600), signedBy: ca))
        let stranger = try CertificateIssuer.makeAuthority(commonName: "Somebody else's CA", validDays: 1)
        try write("stranger", CertificateIssuer.issue(CertificateRequest(commonName: "intruder", usage: .client, validUntilOffset: 3600), signedBy: stranger))
    }

    private func write(_ name: String, _ issued: IssuedCertificate) throws {
        try issued.certificatePEM.write(to: directory.appendingPathComponent("\(name).pem"), atomically: true, encoding: .utf8)
        try issued.privateKeyPEM.write(to: directory.appendingPathComponent("\(name).key"), atomically: true, encoding: .utf8)
    }

    public func certificate(_ name: String) -> String { directory.appendingPathComponent("\(name).pem").path }
    public func key(_ name: String) -> String { directory.appendingPathComponent("\(name).key").path }

    public func remove() { try? FileManager.default.removeItem(at: directory) }

    /// - Parameter verification: `.peer` for a listener where a client
    ///   certificate is optional (the admin listener's rule).
    public func server(alpn: [String] = [], verification: TLSConfiguration.PeerVerification = .peerRequired) throws -> TLSContext {
        try TLSContext(configuration: .server(certificateChainFile: certificate("node"), privateKeyFile: key("node"),
                                               trustRootsFile: certificate("ca"), verification: verification, applicationProtocols: alpn))
    }

    public func client(as name: String?, alpn: [String] = []) throws -> TLSContext {
        try TLSContext(configuration: .client(trustRootsFile: certificate("ca"), certificateChainFile: name.map(certificate),
                                               privateKeyFile: name.map(key), applicationProtocols: alpn))
    }
}

