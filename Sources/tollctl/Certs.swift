import ArgumentParser
import Foundation
import OpenSSLKit
import RPCCore

/// `tollctl certs`: the cluster's certificate authority and the certificates
/// it issues to nodes and admin users (see certs/README.md).
struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Create the cluster CA and issue, show and verify certificates.",
        subcommands: [CreateCA.self, IssueNode.self, IssueAdmin.self, Renew.self, Show.self, Verify.self]
    )
}

/// A failure while running a command (as opposed to a usage mistake, which
/// `ValidationError` reports together with the usage text).
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Writes a certificate and its key as `<directory>/<name>.pem` and `.key`
/// (the key readable by its owner only), refusing to overwrite either.
func writeIssued(_ issued: IssuedCertificate, to directory: String, name: String) throws -> (String, String) {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let certificate = directory + "/" + name + ".pem", key = directory + "/" + name + ".key"
    for path in [certificate, key] where FileManager.default.fileExists(atPath: path) {
        throw CommandFailure("\(path) already exists; remove it first or choose another --out directory")
    }
    guard FileManager.default.createFile(atPath: key, contents: Data(issued.privateKeyPEM.utf8), attributes: [.posixPermissions: 0o600]) else {
        throw CommandFailure("cannot write \(key)")
    }
    try Data(issued.certificatePEM.utf8).write(to: URL(fileURLWithPath: certificate))
    return (certificate, key)
}

/// Reads the CA certificate and key from a directory made by `create-ca`.
func loadAuthority(_ directory: String) throws -> IssuedCertificate {
    let certificate = directory + "/ca.pem", key = directory + "/ca.key"
    guard let certificatePEM = try? String(contentsOfFile: certificate, encoding: .utf8),
          let keyPEM = try? String(contentsOfFile: key, encoding: .utf8) else {
        throw CommandFailure("no CA in \(directory): expected ca.pem and ca.key (create them with `tollctl certs create-ca --out \(directory)`)")
    }
    return IssuedCertificate(certificatePEM: certificatePEM, privateKeyPEM: keyPEM)
}

struct CreateCA: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create-ca", abstract: "Create a new cluster certificate authority.")

    @Option(help: "Directory for ca.pem and ca.key.") var out: String
    @Option(help: "The CA's common name.") var name = "Tollgate cluster CA"
    @Option(help: "Validity in days.") var days = 3650

    func run() throws {
        let (certificate, key) = try writeIssued(CertificateIssuer.makeAuthority(commonName: name, validDays: days), to: out, name: "ca")
        print("created \(certificate) and \(key); keep \(key) offline and distribute only \(certificate)")
    }
}

struct IssueNode: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "issue-node", abstract: "Issue a node certificate carrying its id and roles.")

    @Option(help: "Directory holding ca.pem and ca.key.") var ca: String
    @Option(name: .customLong("node-id"), help: "The node's id (letters, digits, '-', '_', '.').") var nodeID: String
    @Option(help: "A role the node runs (repeat for several).") var role: [String]
    @Option(help: "A DNS name the node is reached by (repeat).") var dns: [String] = []
    @Option(help: "An IP address the node is reached by (repeat).") var ip: [String] = []
    @Option(help: "Directory for <node-id>.pem and <node-id>.key.") var out: String
    @Option(help: "Validity in days.") var days = 825

    func validate() throws {
        let known = ["publisher", "store", "keymanager", "gateway", "trafficmanager", "analytics"]
        for role in role where !known.contains(role) {
            throw ValidationError("unknown role '\(role)'; roles are \(known.joined(separator: ", "))")
        }
        guard !role.isEmpty else { throw ValidationError("give at least one --role") }
        guard PeerIdentity(uri: PeerIdentity.node(id: nodeID, roles: role).uri) != nil else {
            throw ValidationError("node id '\(nodeID)' may hold only letters, digits, '-', '_' and '.'")
        }
    }

    func run() throws {
        let identity = PeerIdentity.node(id: nodeID, roles: role)
        let request = CertificateRequest(commonName: nodeID, usage: .node, uniformResourceIdentifiers: [identity.uri],
                                         dnsNames: dns, ipAddresses: ip, validUntilOffset: days * 86_400)
        let (certificate, key) = try writeIssued(CertificateIssuer.issue(request, signedBy: loadAuthority(ca)), to: out, name: nodeID)
        print("issued \(certificate) (\(identity)) with key \(key)")
    }
}

struct IssueAdmin: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "issue-admin", abstract: "Issue an admin client certificate for tollctl.")

    @Option(help: "Directory holding ca.pem and ca.key.") var ca: String
    @Option(help: "The admin user's name (user or user@tenant).") var user: String
    @Option(help: "Directory for <user>.pem and <user>.key.") var out: String
    @Option(help: "Validity in days.") var days = 365

    func validate() throws {
        guard PeerIdentity(uri: PeerIdentity.user(name: user).uri) != nil else {
            throw ValidationError("user '\(user)' may hold only letters, digits, '-', '_', '.' and '@'")
        }
    }

    func run() throws {
        let identity = PeerIdentity.user(name: user)
        let request = CertificateRequest(commonName: user, usage: .client, uniformResourceIdentifiers: [identity.uri], validUntilOffset: days * 86_400)
        let (certificate, key) = try writeIssued(CertificateIssuer.issue(request, signedBy: loadAuthority(ca)), to: out, name: user)
        print("issued \(certificate) (\(identity)) with key \(key)")
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show what a certificate says.")

    @Argument(help: "A PEM certificate file.") var file: String

    func run() throws {
        for certificate in try Certificate.load(pemFile: file) {
            let format = Date.ISO8601FormatStyle()
            print("subject:     \(certificate.subjectCommonName ?? "-")")
            print("identity:    \(PeerIdentity(certificateURIs: certificate.uniformResourceIdentifiers)?.description ?? "none")")
            for uri in certificate.uniformResourceIdentifiers { print("uri:         \(uri)") }
            for dns in certificate.dnsNames { print("dns:         \(dns)") }
            print("valid from:  \(format.format(Date(timeIntervalSince1970: TimeInterval(certificate.notValidBefore))))")
            print("valid until: \(format.format(Date(timeIntervalSince1970: TimeInterval(certificate.notValidAfter))))")
        }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verify", abstract: "Check a certificate against the cluster CA.")

    @Option(help: "The CA certificate (ca.pem).") var ca: String
    @Argument(help: "A PEM certificate file.") var file: String

    func run() throws {
        if let failure = try Certificate.verificationFailure(pemFile: file, trustRootsFile: ca) {
            throw CommandFailure("\(file) does not verify against \(ca): \(failure)")
        }
        print("\(file): OK")
    }
}
