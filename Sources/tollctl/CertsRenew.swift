import ArgumentParser
import Foundation
import OpenSSLKit
import RPCCore

#if canImport(Glibc)
import Glibc
#endif

/// `tollctl certs renew`: a new certificate for the same holder and key, in
/// place of the old one, so the node only needs a reload.
struct Renew: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "renew",
        abstract: "Reissue node or admin certificates in place, before they expire.",
        discussion: """
            Each FILE.pem is replaced by a certificate for the same identity, roles, DNS names, \
            IP addresses and key (FILE.key), signed by the CA, keeping its owner and mode; then \
            `systemctl reload tollgate@NAME` puts it in use. With --new-key, FILE.key is replaced \
            too: the unit hands a node its key when it starts, so restart it instead. With \
            --within, certificates valid for longer are left alone (for a timer).
            """
    )

    @Option(help: "Directory holding ca.pem and ca.key.") var ca: String
    @Option(help: "Validity of the new certificates in days (default: as long as the old one was valid).") var days: Int?
    @Option(help: "Renew only certificates that expire within this many days.") var within: Int?
    @Flag(name: .customLong("new-key"), help: "Make a new key as well (the node then needs a restart, not a reload).") var newKey = false
    @Argument(help: "Certificate files (<name>.pem beside <name>.key).") var files: [String]

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("name at least one certificate file") }
        for file in files where !file.hasSuffix(".pem") {
            throw ValidationError("\(file): expected a <name>.pem file beside its <name>.key")
        }
        if let days, days < 1 { throw ValidationError("--days must be at least 1") }
        if let within, within < 0 { throw ValidationError("--within must not be negative") }
    }

    func run() throws {
        let authority = try loadAuthority(ca)
        let now = Int64(Date().timeIntervalSince1970)
        let format = Date.ISO8601FormatStyle()
        for file in files {
            guard let old = try Certificate.load(pemFile: file).first else { throw CommandFailure("\(file) holds no certificate") }
            if let within, old.notValidAfter - now > Int64(within) * 86_400 {
                print("\(file): valid until \(format.format(Date(timeIntervalSince1970: TimeInterval(old.notValidAfter)))), not renewed")
                continue
            }
            let request = try Self.request(renewing: old, file: file, days: days)
            let keyFile = String(file.dropLast(".pem".count)) + ".key"
            var keyPEM: String?
            if !newKey {
                guard let existing = try? String(contentsOfFile: keyFile, encoding: .utf8) else {
                    throw CommandFailure("cannot read \(keyFile), the key to renew \(file) for (or pass --new-key)")
                }
                keyPEM = existing
            }
            let issued = try CertificateIssuer.issue(request, signedBy: authority, reusingKey: keyPEM)
            if newKey {
                // The key first: a reader between the two renames sees the old
                // certificate with the new key, which TLS refuses, never a half file.
                try Self.replace(keyFile, with: issued.privateKeyPEM)
            }
            try Self.replace(file, with: issued.certificatePEM)
            let renewed = try Certificate.load(pemFile: file)[0]
            let identity = PeerIdentity(certificateURIs: renewed.uniformResourceIdentifiers).map { "\($0)" } ?? "?"
            print("renewed \(file) (\(identity))\(newKey ? " with a new key in \(keyFile)" : ""), valid until "
                  + format.format(Date(timeIntervalSince1970: TimeInterval(renewed.notValidAfter))))
        }
    }

    /// The same holder and names as `old`; the CA itself is not renewed here.
    static func request(renewing old: Certificate, file: String, days: Int?) throws -> CertificateRequest {
        guard let identity = PeerIdentity(certificateURIs: old.uniformResourceIdentifiers) else {
            throw CommandFailure("\(file) is not a Tollgate node or admin certificate (the CA is replaced with create-ca, see certs/README.md)")
        }
        // -300: issued certificates are backdated five minutes against clock skew.
        let lifetime = days.map { $0 * 86_400 } ?? Int(old.notValidAfter - old.notValidBefore - 300)
        let usage: CertificateRequest.Usage
        switch identity {
        case .node: usage = .node
        case .user: usage = .client
        }
        let name: String
        switch identity {
        case .node(let id, _): name = id
        case .user(let user): name = user
        }
        return CertificateRequest(commonName: old.subjectCommonName ?? name, usage: usage, uniformResourceIdentifiers: [identity.uri],
                                  dnsNames: old.dnsNames, ipAddresses: old.ipAddresses, validUntilOffset: max(lifetime, 86_400))
    }

    /// Writes `contents` beside `path` and renames it over `path`, with the
    /// old file's owner and mode (0600 if there was none).
    static func replace(_ path: String, with contents: String) throws {
        var old = stat()
        let existed = stat(path, &old) == 0
        let temporary = path + ".renew-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw CommandFailure("cannot write \(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(contents.utf8)
        var ok = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
        if ok && existed {
            ok = fchown(fd, old.st_uid, old.st_gid) == 0 && fchmod(fd, old.st_mode & 0o7777) == 0
        }
        ok = ok && fsync(fd) == 0
        let reason = String(cString: strerror(errno))
        close(fd)
        guard ok, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw CommandFailure("cannot replace \(path): \(reason)")
        }
    }
}
