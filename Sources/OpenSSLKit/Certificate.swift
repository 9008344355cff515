internal import COpenSSL

#if canImport(Glibc)
import Glibc
#endif

/// An X.509 certificate as plain values: what the cluster needs to know
/// about a peer (its names and validity), plus the DER bytes.
public struct Certificate: Sendable, Hashable {
    public let der: [UInt8]
    public let subjectCommonName: String?
    /// `URI:` subject alternative names; Tollgate node certificates carry the
    /// node's id and role in one (see certs/README.md).
    public let uniformResourceIdentifiers: [String]
    public let dnsNames: [String]
    /// `IP:` subject alternative names, as text (`127.0.0.1`, `::1`).
    public let ipAddresses: [String]
    public let notValidBefore: Int64
    public let notValidAfter: Int64

    init?(x509: OpaquePointer) {
        var derPointer: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509(x509, &derPointer)
        guard length > 0, let derPointer else { return nil }
        der = Array(UnsafeBufferPointer(start: derPointer, count: Int(length)))
        CRYPTO_free(derPointer, #fileID, #line)

        var commonName: String?
        if let name = X509_get_subject_name(x509) {
            let index = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
            if index >= 0, let entry = X509_NAME_get_entry(name, index), let data = X509_NAME_ENTRY_get_data(entry) {
                var utf8: UnsafeMutablePointer<UInt8>?
                let count = ASN1_STRING_to_UTF8(&utf8, data)
                if count >= 0, let utf8 {
                    commonName = String(decoding: UnsafeBufferPointer(start: utf8, count: Int(count)), as: UTF8.self)
                    CRYPTO_free(utf8, #fileID, #line)
                }
            }
        }
        subjectCommonName = commonName

        var uris: [String] = []
        var dns: [String] = []
        var ips: [String] = []
        if let raw = X509_get_ext_d2i(x509, NID_subject_alt_name, nil, nil) {
            let names = OpaquePointer(raw)
            for index in 0..<COpenSSLShims_sk_GENERAL_NAME_num(names) {
                guard let name = COpenSSLShims_sk_GENERAL_NAME_value(names, index) else { continue }
                var kind: Int32 = 0
                guard let value = GENERAL_NAME_get0_value(name, &kind) else { continue }
                let string = value.assumingMemoryBound(to: ASN1_STRING.self)
                guard let bytes = ASN1_STRING_get0_data(string) else { continue }
                let raw = UnsafeBufferPointer(start: bytes, count: Int(ASN1_STRING_length(string)))
                if kind == GEN_IPADD {
                    if let address = Certificate.ipText(raw) { ips.append(address) }
                    continue
                }
                let text = String(decoding: raw, as: UTF8.self)
                if kind == GEN_URI { uris.append(text) } else if kind == GEN_DNS { dns.append(text) }
            }
            COpenSSLShims_GENERAL_NAMES_free(names)
        }
        uniformResourceIdentifiers = uris
        dnsNames = dns
        ipAddresses = ips
        notValidBefore = Certificate.unixTime(X509_get0_notBefore(x509))
        notValidAfter = Certificate.unixTime(X509_get0_notAfter(x509))
    }

    /// An `IP:` name's 4 or 16 address bytes as text.
    private static func ipText(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        let family: Int32
        switch bytes.count {
        case 4: family = AF_INET
        case 16: family = AF_INET6
        default: return nil
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(family, bytes.baseAddress, &text, socklen_t(text.count)) != nil else { return nil }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func unixTime(_ time: UnsafePointer<ASN1_TIME>?) -> Int64 {
        guard let time else { return 0 }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return 0 }
        return Int64(timegm(&parts))
    }

    /// Every certificate in a PEM file, in order.
    public static func load(pemFile path: String) throws -> [Certificate] {
        ERR_clear_error()
        guard let file = BIO_new_file(path, "r") else {
            throw TLSError.fromQueue(.configuration, "opening certificate file \(path)")
        }
        defer { BIO_free(file) }
        var certificates: [Certificate] = []
        while let x509 = PEM_read_bio_X509(file, nil, nil, nil) {
            defer { X509_free(x509) }
            if let certificate = Certificate(x509: x509) { certificates.append(certificate) }
        }
        ERR_clear_error()  // the loop ends on "no start line"
        guard !certificates.isEmpty else {
            throw TLSError(kind: .configuration, context: "reading certificate file \(path): no PEM certificate in it")
        }
        return certificates
    }
}

extension Certificate {
    /// Checks that the first certificate in `pemFile` chains to a CA in
    /// `trustRootsFile` and is valid now. Returns nil when it verifies, or
    /// OpenSSL's reason when it does not.
    public static func verificationFailure(pemFile: String, trustRootsFile: String) throws -> String? {
        ERR_clear_error()
        guard let file = BIO_new_file(pemFile, "r") else { throw TLSError.fromQueue(.configuration, "opening \(pemFile)") }
        defer { BIO_free(file) }
        guard let certificate = PEM_read_bio_X509(file, nil, nil, nil) else {
            throw TLSError.fromQueue(.configuration, "reading a certificate from \(pemFile)")
        }
        defer { X509_free(certificate) }
        guard let store = X509_STORE_new() else { throw TLSError.fromQueue(.configuration, "X509_STORE_new") }
        defer { X509_STORE_free(store) }
        guard X509_STORE_load_file(store, trustRootsFile) == 1 else {
            throw TLSError.fromQueue(.configuration, "loading trust roots \(trustRootsFile)")
        }
        guard let context = X509_STORE_CTX_new() else { throw TLSError.fromQueue(.configuration, "X509_STORE_CTX_new") }
        defer { X509_STORE_CTX_free(context) }
        guard X509_STORE_CTX_init(context, store, certificate, nil) == 1 else {
            throw TLSError.fromQueue(.configuration, "X509_STORE_CTX_init")
        }
        if X509_verify_cert(context) == 1 { return nil }
        ERR_clear_error()
        return String(cString: X509_verify_cert_error_string(Int(X509_STORE_CTX_get_error(context))))
    }
}
