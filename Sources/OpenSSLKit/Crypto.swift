internal import COpenSSL

/// An OpenSSL failure, with the messages OpenSSL left on its error queue.
public struct OpenSSLError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What Tollgate was doing, e.g. "scrypt".
    public let operation: String
    /// OpenSSL's error stack, oldest first, as `ERR_error_string_n` renders it.
    public let stack: [String]

    public var description: String {
        stack.isEmpty ? "OpenSSL \(operation) failed" : "OpenSSL \(operation) failed: \(stack.joined(separator: "; "))"
    }

    /// Drains the calling thread's OpenSSL error queue into an error.
    static func drain(_ operation: String) -> OpenSSLError {
        var stack: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            stack.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return OpenSSLError(operation: operation, stack: stack)
    }
}

/// SHA-256 digests through OpenSSL's EVP interface.
public enum SHA256 {
    public static let byteCount = 32

    public static func hash<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> [UInt8] {
        let digest = bytes.withContiguousStorageIfAvailable { hash(UnsafeRawBufferPointer($0)) }
        return digest ?? Array(bytes).withUnsafeBytes { hash($0) }
    }

    public static func hash(_ string: String) -> [UInt8] {
        hash(Array(string.utf8))
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: byteCount) { out, count in
            var length: UInt32 = 0
            // EVP_Digest with a fetched-by-default SHA-256 cannot fail for valid pointers.
            let ok = EVP_Digest(bytes.baseAddress ?? UnsafeRawPointer(out.baseAddress!), bytes.count, out.baseAddress, &length, EVP_sha256(), nil)
            precondition(ok == 1 && length == UInt32(byteCount), "EVP_Digest(SHA-256) failed")
            count = byteCount
        }
    }
}

/// Cryptographically secure random bytes from OpenSSL's DRBG.
public enum SecureRandom {
    public static func bytes(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        guard count == 0 || RAND_bytes(&out, Int32(count)) == 1 else {
            throw OpenSSLError.drain("RAND_bytes")
        }
        return out
    }
}

/// Constant-time comparison, so a secret check does not leak how many leading bytes matched.
public func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    if lhs.isEmpty { return true }
    return lhs.withUnsafeBytes { l in rhs.withUnsafeBytes { r in CRYPTO_memcmp(l.baseAddress, r.baseAddress, lhs.count) == 0 } }
}

/// Slow key-derivation functions for stored passwords and client secrets.
public enum KeyDerivation {
    /// scrypt (RFC 7914) through `EVP_PBE_scrypt`. `n` must be a power of two.
    public static func scrypt(password: [UInt8], salt: [UInt8], n: UInt64, r: UInt64, p: UInt64, length: Int) throws -> [UInt8] {
        // 128·r·n bytes of working memory plus the p lanes; allow that explicitly
        // since OpenSSL's default cap (32 MiB) would refuse N=2^15, r=8.
        let memory = 128 * r * (n + p + 2) + 1024 * 1024
        var out = [UInt8](repeating: 0, count: length)
        let ok = password.withUnsafeBufferPointer { pw in
            salt.withUnsafeBufferPointer { s in
                pw.withMemoryRebound(to: CChar.self) { pwChars in
                    EVP_PBE_scrypt(pwChars.baseAddress, pw.count, s.baseAddress, s.count, n, r, p, memory, &out, length)
                }
            }
        }
        guard ok == 1 else { throw OpenSSLError.drain("scrypt") }
        return out
    }

    /// PBKDF2 with HMAC-SHA-256 (RFC 8018) through `PKCS5_PBKDF2_HMAC`.
    public static func pbkdf2SHA256(password: [UInt8], salt: [UInt8], iterations: UInt32, length: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        let ok = password.withUnsafeBufferPointer { pw in
            salt.withUnsafeBufferPointer { s in
                pw.withMemoryRebound(to: CChar.self) { pwChars in
                    PKCS5_PBKDF2_HMAC(pwChars.baseAddress, Int32(pw.count), s.baseAddress, Int32(s.count), Int32(iterations), EVP_sha256(), Int32(length), &out)
                }
            }
        }
        guard ok == 1 else { throw OpenSSLError.drain("PBKDF2") }
        return out
    }
}
