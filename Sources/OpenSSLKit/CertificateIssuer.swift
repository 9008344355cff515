internal import COpenSSL

/// A certificate and its private key, both PEM.
public struct IssuedCertificate: Sendable, Hashable {
    public let certificatePEM: String
    public let privateKeyPEM: String

    public init(certificatePEM: String, privateKeyPEM: String) {
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
    }
}

/// What a new certificate says about its holder.
public struct CertificateRequest: Sendable, Hashable {
    public enum Usage: Sendable, Hashable {
        /// A certificate authority: may sign other certificates, nothing else.
        case authority
        /// A TLS server and client (cluster nodes are both).
        case node
        /// A TLS client only (admin users).
        case client
    }

    public var commonName: String
    public var usage: Usage
    public var uniformResourceIdentifiers: [String] = []
    public var dnsNames: [String] = []
    public var ipAddresses: [String] = []
    /// Seconds from now the certificate becomes valid (negative backdates it).
    public var validFromOffset: Int = -300
    /// Seconds from now it expires (negative: already expired, for tests).
    public var validUntilOffset: Int

    public init(commonName: String, usage: Usage, uniformResourceIdentifiers: [String] = [], dnsNames: [String] = [],
                ipAddresses: [String] = [], validFromOffset: Int = -300, validUntilOffset: Int) {
        self.commonName = commonName
        self.usage = usage
        self.uniformResourceIdentifiers = uniformResourceIdentifiers
        self.dnsNames = dnsNames
        self.ipAddresses = ipAddresses
        self.validFromOffset = validFromOffset
        self.validUntilOffset = validUntilOffset
    }
}

/// Issues X.509 certificates with ECDSA P-256 keys and SHA-256 signatures.
public enum CertificateIssuer {
    /// A self-signed certificate authority.
    public static func makeAuthority(commonName: String, validDays: Int) throws -> IssuedCertificate {
        try issue(CertificateRequest(commonName: commonName, usage: .authority, validUntilOffset: validDays * 86_400), signedBy: nil)
    }

    /// A certificate for `request`, signed by `authority` (self-signed when nil),
    /// for a new key or, to renew without re-keying, the PEM key `reusingKey`.
    public static func issue(_ request: CertificateRequest, signedBy authority: IssuedCertificate?,
                             reusingKey keyPEM: String? = nil) throws -> IssuedCertificate {
        ERR_clear_error()
        let key = try keyPEM.map(readKey) ?? generateKey()
        defer { EVP_PKEY_free(key) }
        guard let certificate = X509_new() else { throw OpenSSLError.drain("X509_new") }
        defer { X509_free(certificate) }

        var issuerCertificate: OpaquePointer?
        var issuerKey: OpaquePointer?
        defer {
            if let issuerCertificate { X509_free(issuerCertificate) }
            if let issuerKey { EVP_PKEY_free(issuerKey) }
        }
        if let authority {
            issuerCertificate = try readCertificate(authority.certificatePEM)
            issuerKey = try readKey(authority.privateKeyPEM)
        }

        X509_set_version(certificate, 2)
        try setRandomSerial(certificate)
        X509_gmtime_adj(X509_getm_notBefore(certificate), request.validFromOffset)
        X509_gmtime_adj(X509_getm_notAfter(certificate), request.validUntilOffset)
        X509_set_pubkey(certificate, key)
        let name = X509_get_subject_name(certificate)
        guard X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, request.commonName, -1, -1, 0) == 1 else {
            throw OpenSSLError.drain("setting the subject name")
        }
        X509_set_issuer_name(certificate, issuerCertificate.map { X509_get_subject_name($0) } ?? name)

        let issuerForExtensions = issuerCertificate ?? certificate
        var extensions: [(Int32, String)] = [(NID_subject_key_identifier, "hash")]
        extensions.append((NID_authority_key_identifier, "keyid:always"))
        switch request.usage {
        case .authority:
            extensions += [(NID_basic_constraints, "critical,CA:TRUE,pathlen:0"), (NID_key_usage, "critical,keyCertSign,cRLSign")]
        case .node:
            extensions += [(NID_basic_constraints, "critical,CA:FALSE"), (NID_key_usage, "critical,digitalSignature"),
                           (NID_ext_key_usage, "serverAuth,clientAuth")]
        case .client:
            extensions += [(NID_basic_constraints, "critical,CA:FALSE"), (NID_key_usage, "critical,digitalSignature"),
                           (NID_ext_key_usage, "clientAuth")]
        }
        let alternativeNames = request.uniformResourceIdentifiers.map { "URI:" + $0 }
            + request.dnsNames.map { "DNS:" + $0 } + request.ipAddresses.map { "IP:" + $0 }
        if !alternativeNames.isEmpty {
            extensions.append((NID_subject_alt_name, alternativeNames.joined(separator: ",")))
        }
        for (nid, value) in extensions {
            guard let ext = COpenSSLShims_make_extension(issuerForExtensions, certificate, nid, value) else {
                throw OpenSSLError.drain("adding extension \(value)")
            }
            defer { X509_EXTENSION_free(ext) }
            X509_add_ext(certificate, ext, -1)
        }
        guard X509_sign(certificate, issuerKey ?? key, EVP_sha256()) > 0 else {
            throw OpenSSLError.drain("signing the certificate")
        }
        return IssuedCertificate(certificatePEM: try pem { PEM_write_bio_X509($0, certificate) },
                                 privateKeyPEM: try pem { PEM_write_bio_PrivateKey($0, key, nil, nil, 0, nil, nil) })
    }

    private static func generateKey() throws -> OpaquePointer {
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { throw OpenSSLError.drain("EC key context") }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_group_name(context, "P-256") == 1,
              EVP_PKEY_generate(context, &key) == 1, let key else {
            throw OpenSSLError.drain("generating a P-256 key")
        }
        return key
    }

    private static func setRandomSerial(_ certificate: OpaquePointer) throws {
        guard let number = BN_new() else { throw OpenSSLError.drain("BN_new") }
        defer { BN_free(number) }
        // 159 random bits: positive and within the 20 octets RFC 5280 allows.
        guard BN_rand(number, 159, -1, 0) == 1, let serial = BN_to_ASN1_INTEGER(number, nil) else {
            throw OpenSSLError.drain("making a serial number")
        }
        defer { ASN1_INTEGER_free(serial) }
        X509_set_serialNumber(certificate, serial)
    }

    private static func pem(_ write: (OpaquePointer) -> Int32) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLError.drain("BIO_new") }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { throw OpenSSLError.drain("writing PEM") }
        var data: UnsafeMutablePointer<CChar>?
        let length = COpenSSLShims_BIO_get_mem_data(bio, &data)
        guard length > 0, let data else { throw OpenSSLError.drain("reading PEM") }
        return String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
    }

    private static func withMemoryBIO<T>(_ text: String, _ body: (OpaquePointer) -> T?) throws -> T {
        var text = text
        return try text.withUTF8 { bytes in
            guard let bio = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count)) else { throw OpenSSLError.drain("BIO_new_mem_buf") }
            defer { BIO_free(bio) }
            guard let value = body(bio) else { throw OpenSSLError.drain("reading PEM") }
            return value
        }
    }

    static func readCertificate(_ pem: String) throws -> OpaquePointer {
        try withMemoryBIO(pem) { PEM_read_bio_X509($0, nil, nil, nil) }
    }

    static func readKey(_ pem: String) throws -> OpaquePointer {
        try withMemoryBIO(pem) { PEM_read_bio_PrivateKey($0, nil, nil, nil) }
    }
}

extension Certificate {
    /// Parses one PEM certificate.
    public init(pem: String) throws {
        let x509 = try CertificateIssuer.readCertificate(pem)
        defer { X509_free(x509) }
        guard let certificate = Certificate(x509: x509) else { throw OpenSSLError.drain("reading certificate") }
        self = certificate
    }
}
