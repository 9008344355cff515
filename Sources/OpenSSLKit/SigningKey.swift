internal import COpenSSL

/// An ECDSA P-256 private key for JSON Web Signatures (ES256, RFC 7518
/// §3.4): signatures come out as the 64-byte `R || S` JWS wants, not DER.
///
/// The key is never changed after it is made, and OpenSSL allows
/// concurrent signing with one `EVP_PKEY` (each signature gets its own
/// `EVP_MD_CTX`), so sharing it across threads is safe.
public final class P256SigningKey: @unchecked Sendable {
    let key: OpaquePointer
    /// The public point's affine coordinates, 32 bytes each (JWK `x`, `y`).
    public let x: [UInt8]
    public let y: [UInt8]

    private init(taking key: OpaquePointer) throws {
        self.key = key
        (x, y) = try P256PublicKey.coordinates(of: key)
    }

    deinit { EVP_PKEY_free(key) }

    /// A new random key.
    public static func generate() throws -> P256SigningKey {
        ERR_clear_error()
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { throw OpenSSLError.drain("EC key context") }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_group_name(context, "P-256") == 1,
              EVP_PKEY_generate(context, &key) == 1, let key else {
            throw OpenSSLError.drain("generating a P-256 key")
        }
        return try P256SigningKey(taking: key)
    }

    /// Reads a PEM private key (PKCS#8 or SEC1); anything but a P-256 key is refused.
    public convenience init(pem: [UInt8]) throws {
        ERR_clear_error()
        let key: OpaquePointer? = pem.withUnsafeBytes { bytes in
            guard let bio = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let key else { throw OpenSSLError.drain("reading a PEM private key") }
        guard P256PublicKey.isP256(key) else {
            EVP_PKEY_free(key)
            throw OpenSSLError(operation: "reading a P-256 private key", stack: ["the key is not an EC P-256 key"])
        }
        try self.init(taking: key)
    }

    /// The private key as unencrypted PKCS#8 PEM, for a file only its owner reads.
    public func pem() throws -> [UInt8] {
        guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLError.drain("BIO_new") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_PrivateKey(bio, key, nil, nil, 0, nil, nil) == 1 else { throw OpenSSLError.drain("writing PEM") }
        var data: UnsafeMutablePointer<CChar>?
        let length = COpenSSLShims_BIO_get_mem_data(bio, &data)
        guard length > 0, let data else { throw OpenSSLError.drain("reading PEM") }
        return Array(UnsafeRawBufferPointer(start: data, count: length))
    }

    /// The public half, for verifying.
    public var publicKey: P256PublicKey {
        get throws { try P256PublicKey(x: x, y: y) }
    }

    /// ES256: ECDSA over SHA-256 of `message`, as `R || S` (64 bytes).
    public func sign(_ message: [UInt8]) throws -> [UInt8] {
        guard let context = EVP_MD_CTX_new() else { throw OpenSSLError.drain("EVP_MD_CTX_new") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key) == 1 else { throw OpenSSLError.drain("ES256 sign init") }
        var length = 0
        guard message.withUnsafeBytes({ EVP_DigestSign(context, nil, &length, $0.baseAddress, $0.count) }) == 1 else {
            throw OpenSSLError.drain("ES256 signature length")
        }
        var der = [UInt8](repeating: 0, count: length)
        guard message.withUnsafeBytes({ m in der.withUnsafeMutableBytes { EVP_DigestSign(context, $0.baseAddress, &length, m.baseAddress, m.count) } }) == 1 else {
            throw OpenSSLError.drain("ES256 sign")
        }
        return try Self.rawSignature(fromDER: Array(der.prefix(length)))
    }

    static func rawSignature(fromDER der: [UInt8]) throws -> [UInt8] {
        let signature: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_ECDSA_SIG(nil, &cursor, buffer.count)
        }
        guard let signature else { throw OpenSSLError.drain("decoding an ECDSA signature") }
        defer { ECDSA_SIG_free(signature) }
        var r: OpaquePointer?, s: OpaquePointer?
        ECDSA_SIG_get0(signature, &r, &s)
        var raw = [UInt8](repeating: 0, count: 64)
        let ok = raw.withUnsafeMutableBufferPointer { out in
            BN_bn2binpad(r, out.baseAddress, 32) == 32 && BN_bn2binpad(s, out.baseAddress! + 32, 32) == 32
        }
        guard ok else { throw OpenSSLError.drain("encoding an ECDSA signature") }
        return raw
    }
}

/// An ECDSA P-256 public key, from a JWK's `x` and `y`, that checks ES256 signatures.
public final class P256PublicKey: @unchecked Sendable {
    // Immutable after init; OpenSSL verifies concurrently with one EVP_PKEY.
    let key: OpaquePointer
    public let x: [UInt8]
    public let y: [UInt8]

    public init(x: [UInt8], y: [UInt8]) throws {
        guard x.count == 32, y.count == 32 else {
            throw OpenSSLError(operation: "reading a P-256 public key", stack: ["x and y must be 32 bytes each"])
        }
        ERR_clear_error()
        // The DER SubjectPublicKeyInfo of a P-256 key is a fixed header
        // (id-ecPublicKey, prime256v1, a 66-byte bit string) and the point.
        let der: [UInt8] = [0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
                            0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04] + x + y
        let made: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_PUBKEY(nil, &cursor, buffer.count)
        }
        guard let made else { throw OpenSSLError.drain("reading a P-256 public key (is the point on the curve?)") }
        key = made
        self.x = x
        self.y = y
    }

    deinit { EVP_PKEY_free(key) }

    /// Whether `signature` (`R || S`, 64 bytes) is this key's ES256 signature of `message`.
    public func verify(_ signature: [UInt8], of message: [UInt8]) -> Bool {
        guard signature.count == 64, let sig = ECDSA_SIG_new() else { return false }
        defer { ECDSA_SIG_free(sig) }
        let r = signature.withUnsafeBufferPointer { BN_bin2bn($0.baseAddress, 32, nil) }
        let s = signature.withUnsafeBufferPointer { BN_bin2bn($0.baseAddress! + 32, 32, nil) }
        guard let r, let s else { BN_free(r); BN_free(s); return false }
        ECDSA_SIG_set0(sig, r, s)  // takes ownership of r and s
        var derPointer: UnsafeMutablePointer<UInt8>?
        let derLength = i2d_ECDSA_SIG(sig, &derPointer)
        guard derLength > 0, let derPointer else { return false }
        defer { CRYPTO_free(derPointer, #fileID, #line) }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, key) == 1 else { ERR_clear_error(); return false }
        let result = message.withUnsafeBytes { EVP_DigestVerify(context, derPointer, Int(derLength), $0.baseAddress, $0.count) }
        ERR_clear_error()
        return result == 1
    }

    static func isP256(_ key: OpaquePointer) -> Bool {
        guard EVP_PKEY_is_a(key, "EC") == 1 else { return false }
        var name = [CChar](repeating: 0, count: 32)
        var length = 0
        guard EVP_PKEY_get_utf8_string_param(key, "group", &name, name.count, &length) == 1 else { return false }
        let group = String(decoding: name.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return group == "prime256v1" || group == "P-256"
    }

    static func coordinates(of key: OpaquePointer) throws -> ([UInt8], [UInt8]) {
        var point = [UInt8](repeating: 0, count: 65)
        var length = 0
        guard EVP_PKEY_get_octet_string_param(key, "encoded-pub-key", &point, point.count, &length) == 1, length == 65, point[0] == 0x04 else {
            throw OpenSSLError.drain("reading the public point")
        }
        return (Array(point[1..<33]), Array(point[33..<65]))
    }
}
