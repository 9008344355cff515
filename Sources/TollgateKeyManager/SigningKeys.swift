import TollgateStorage
import FoundationEssentials
public import OpenSSLKit
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The key manager's JWT signing keys: P-256 keys in files under the data
/// directory (`oauth-signing-keys/<kid>.pem`, mode 0600), the newest of
/// which signs. Every key still in the folder is published in the JWKS, so
/// tokens signed before a rotation keep verifying until their key is retired.
///
/// The store and key manager of one host share the data directory, and
/// either may sign; each re-reads the folder when it changed, so a rotation
/// made by one process is picked up by the other within ``refreshInterval``.
public final class SigningKeySet: Sendable {
    public struct Entry: Sendable {
        public let kid: String
        public let key: P256SigningKey
        /// From the file name: when the key was made.
        public let createdAtUnixMs: Int64
    }

    public let directory: String
    let refreshInterval: Duration
    private let state: Mutex<(keys: [Entry], checkedAt: ContinuousClock.Instant)>

    /// Loads the keys, making the first one if the folder has none.
    public init(directory: String, refreshInterval: Duration = .seconds(2)) throws {
        self.directory = directory
        self.refreshInterval = refreshInterval
        try Self.makeDirectory(directory)
        var keys = try Self.load(directory)
        if keys.isEmpty {
            keys = [try Self.create(in: directory)]
        }
        state = Mutex((keys, ContinuousClock.now))
    }

    /// Keys newest first.
    public var keys: [Entry] {
        get throws {
            let stale = state.withLock { ContinuousClock.now - $0.checkedAt > refreshInterval }
            if stale {
                let loaded = try Self.load(directory)
                state.withLock { $0 = (loaded.isEmpty ? $0.keys : loaded, ContinuousClock.now) }
            }
            return state.withLock { $0.keys }
        }
    }

    /// The key that signs new tokens.
    public var active: Entry {
        get throws {
            guard let newest = try keys.first else { throw SigningKeyError("signing", "no signing key in \(directory)") }
            return newest
        }
    }

    /// A new signing key; with `retirePrevious`, every older key leaves the
    /// JWKS (and the disk) at once.
    @discardableResult
    public func rotate(retirePrevious: Bool) throws -> Entry {
        let made = try Self.create(in: directory)
        if retirePrevious {
            for entry in try Self.load(directory) where entry.kid != made.kid {
                unlink(directory + "/" + entry.kid + ".pem")
            }
        }
        let loaded = try Self.load(directory)
        state.withLock { $0 = (loaded, ContinuousClock.now) }
        return made
    }

    /// The JSON Web Key Set (RFC 7517) of every published key.
    public func jwks() throws -> JSONValue {
        .object([("keys", .array(try keys.map { entry in
            .object([("kty", "EC"), ("crv", "P-256"), ("use", "sig"), ("alg", "ES256"), ("kid", .string(entry.kid)),
                     ("x", .string(Base64URL.encode(entry.key.x))), ("y", .string(Base64URL.encode(entry.key.y)))])
        }))])
    }

    // MARK: Files

    static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw SigningKeyError("creating \(path)", String(cString: strerror(errno)))
        }
    }

    static func load(_ directory: String) throws -> [Entry] {
        guard let folder = opendir(directory) else {
            throw SigningKeyError("reading \(directory)", String(cString: strerror(errno)))
        }
        defer { closedir(folder) }
        var entries: [Entry] = []
        while let item = readdir(folder) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasSuffix(".pem"), !name.hasPrefix(".") else { continue }
            let kid = String(name.dropLast(4))
            guard let created = Int64(kid.split(separator: "-").first ?? "") else { continue }
            let bytes = try readFile(directory + "/" + name)
            entries.append(Entry(kid: kid, key: try P256SigningKey(pem: bytes), createdAtUnixMs: created))
        }
        return entries.sorted { ($0.createdAtUnixMs, $0.kid) > ($1.createdAtUnixMs, $1.kid) }
    }

    static func create(in directory: String) throws -> Entry {
        let key = try P256SigningKey.generate()
        let created = Int64(Date().timeIntervalSince1970 * 1000)
        let kid = "\(created)-" + (try SecureRandom.bytes(4)).map { String($0, radix: 16).leftPadded(2) }.joined()
        let path = directory + "/" + kid + ".pem"
        let temporary = directory + "/." + kid + ".tmp"
        let pem = try key.pem()
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SigningKeyError("writing \(temporary)", String(cString: strerror(errno))) }
        let written = pem.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == pem.count, synced == 0, rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw SigningKeyError("writing \(path)", reason)
        }
        return Entry(kid: kid, key: key, createdAtUnixMs: created)
    }

    static func readFile(_ path: String) throws -> [UInt8] {
        guard let file = fopen(path, "r") else { throw SigningKeyError("reading \(path)", String(cString: strerror(errno))) }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}

/// Signs access tokens as JWTs (RFC 7519, ES256).
public enum JWT {
    /// `header.payload.signature` for `claims`, signed by `key`.
    public static func sign(_ claims: JSONValue, with entry: SigningKeySet.Entry) throws -> String {
        let header: JSONValue = .object([("alg", "ES256"), ("typ", "JWT"), ("kid", .string(entry.kid))])
        let signingInput = Base64URL.encode(header.bytes) + "." + Base64URL.encode(claims.bytes)
        let signature = try entry.key.sign(Array(signingInput.utf8))
        return signingInput + "." + Base64URL.encode(signature)
    }

    /// Whether `token` looks like a JWS compact serialization (three parts).
    public static func looksLikeJWT(_ token: String) -> Bool {
        token.utf8.lazy.filter { $0 == UInt8(ascii: ".") }.count == 2
    }
}

/// A signing-key file could not be made or read.
public struct SigningKeyError: Error, Sendable, CustomStringConvertible {
    public let operation: String
    public let reason: String
    init(_ operation: String, _ reason: String) {
        self.operation = operation
        self.reason = reason
    }
    public var description: String { "\(operation): \(reason)" }
}
