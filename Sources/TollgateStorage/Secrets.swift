import Foundation
import OpenSSLKit
public import TollgateProto

/// Stored secrets: passwords and OAuth consumer secrets as slow KDF hashes,
/// tokens and codes as SHA-256 only, so the database files never hold a
/// secret in the clear.
public struct SecretHasher: Sendable {
    /// The KDF settings used for new hashes. Existing hashes keep the
    /// parameters stored beside them, so settings can be raised at any time.
    public enum Settings: Sendable, Hashable {
        case scrypt(n: UInt64, r: UInt32, p: UInt32)
        case pbkdf2SHA256(iterations: UInt32)

        /// scrypt N=2^15, r=8, p=1: 32 MiB and roughly 50–100 ms per hash on
        /// this class of machine; the memory cost is what resists GPU cracking.
        public static let standard = Settings.scrypt(n: 1 << 15, r: 8, p: 1)
        /// Cheap parameters for tests that create many accounts. Never for production data.
        public static let testing = Settings.scrypt(n: 1 << 4, r: 8, p: 1)
    }

    public static let saltBytes = 16
    public static let hashBytes = 32

    public let settings: Settings

    public init(settings: Settings = .standard) {
        self.settings = settings
    }

    /// A new salted hash of `secret`.
    public func hash(_ secret: String) throws -> SecretHash {
        let salt = try SecureRandom.bytes(Self.saltBytes)
        var record = SecretHash()
        record.salt = salt
        switch settings {
        case .scrypt(let n, let r, let p):
            record.algorithm = .scrypt
            record.scryptN = n
            record.scryptR = r
            record.scryptP = p
        case .pbkdf2SHA256(let iterations):
            record.algorithm = .pbkdf2Sha256
            record.iterations = iterations
        }
        record.hash = try Self.derive(secret, with: record)
        return record
    }

    /// Whether `secret` matches `stored`, compared in constant time.
    /// A record with an unknown algorithm never matches.
    public func verify(_ secret: String, against stored: SecretHash) throws -> Bool {
        guard stored.hash.count == Self.hashBytes, !stored.salt.isEmpty else { return false }
        switch stored.algorithm {
        case .scrypt, .pbkdf2Sha256:
            return constantTimeEquals(try Self.derive(secret, with: stored), stored.hash)
        case .unspecified, .unrecognized:
            return false
        }
    }

    /// Whether `stored` was made with weaker settings than the current ones
    /// (so a successful login can re-hash the password).
    public func needsRehash(_ stored: SecretHash) -> Bool {
        switch (settings, stored.algorithm) {
        case (.scrypt(let n, let r, let p), .scrypt):
            return stored.scryptN < n || stored.scryptR < r || stored.scryptP < p
        case (.pbkdf2SHA256(let iterations), .pbkdf2Sha256):
            return stored.iterations < iterations
        default:
            return true
        }
    }

    private static func derive(_ secret: String, with parameters: SecretHash) throws -> [UInt8] {
        let password = Array(secret.utf8)
        switch parameters.algorithm {
        case .scrypt:
            return try KeyDerivation.scrypt(
                password: password, salt: parameters.salt,
                n: parameters.scryptN, r: UInt64(parameters.scryptR), p: UInt64(parameters.scryptP),
                length: hashBytes)
        case .pbkdf2Sha256:
            return try KeyDerivation.pbkdf2SHA256(password: password, salt: parameters.salt, iterations: parameters.iterations, length: hashBytes)
        case .unspecified, .unrecognized:
            return []
        }
    }

    /// SHA-256 of a bearer secret (access token, refresh token, session
    /// token, authorization code): the only form in which they are stored.
    /// These are long random values, so a fast hash is enough.
    public static func tokenHash(_ token: String) -> [UInt8] {
        SHA256.hash(token)
    }

    /// A new random bearer token: 32 bytes, base64url without padding.
    public static func newToken() throws -> String {
        Base64URL.encode(try SecureRandom.bytes(32))
    }

    /// A time-ordered id: the milliseconds since 1970 in 8 big-endian bytes,
    /// then 8 random bytes. Records keyed by such ids are inserted at the
    /// end of their B-trees, touching the last page rather than a random one.
    public static func orderedID(at unixMs: Int64) throws -> [UInt8] {
        withUnsafeBytes(of: UInt64(max(unixMs, 0)).bigEndian, Array.init) + (try SecureRandom.bytes(8))
    }

    /// A new opaque OAuth token: its 16-byte ``orderedID(at:)`` then 32
    /// random bytes, base64url (64 characters). The id is not secret; the
    /// 256 random bits are.
    public static func newOpaqueToken(at unixMs: Int64) throws -> (token: String, id: [UInt8]) {
        let id = try orderedID(at: unixMs)
        return (Base64URL.encode(id + (try SecureRandom.bytes(32))), id)
    }

    /// The id inside an opaque token from ``newOpaqueToken(at:)``; nil for
    /// anything else.
    public static func opaqueTokenID(_ token: String) -> [UInt8]? {
        guard token.utf8.count == 64, let bytes = Base64URL.decode(token), bytes.count == 48 else { return nil }
        return Array(bytes.prefix(16))
    }

    /// A token's id, which is not secret: the first 16 bytes of an opaque
    /// token, or the base64url-decoded `jti` of a JWT. Nil for anything else.
    public static func tokenID(of token: String) -> [UInt8]? {
        if let id = opaqueTokenID(token) { return id }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let payload = Base64URL.decode(parts[1]),
              let claims = try? JSONDecoder().decode(JWTIdentifier.self, from: Data(payload)),
              let id = Base64URL.decode(claims.jti), id.count == 16 else { return nil }
        return id
    }

    private struct JWTIdentifier: Decodable { let jti: String }

}

/// Base64url without padding (RFC 4648 §5), as tokens, JWTs, JWKs and PKCE use it.
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let bytes = Array(bytes)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var value = UInt32(0)
            for (offset, byte) in chunk.enumerated() { value |= UInt32(byte) << (16 - 8 * offset) }
            for position in 0..<(chunk.count + 1) { out.append(alphabet[Int((value >> (18 - 6 * position)) & 0x3F)]) }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Nil for anything that is not unpadded base64url.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var values: [UInt8] = []
        values.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): values.append(byte - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): values.append(byte - UInt8(ascii: "a") + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): values.append(byte - UInt8(ascii: "0") + 52)
            case UInt8(ascii: "-"): values.append(62)
            case UInt8(ascii: "_"): values.append(63)
            default: return nil
            }
        }
        guard values.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        var index = 0
        while index < values.count {
            let chunk = values[index..<min(index + 4, values.count)]
            var value = UInt32(0)
            for (offset, sextet) in chunk.enumerated() { value |= UInt32(sextet) << (18 - 6 * offset) }
            for position in 0..<(chunk.count - 1) { out.append(UInt8((value >> (16 - 8 * position)) & 0xFF)) }
            index += 4
        }
        return out
    }
}
