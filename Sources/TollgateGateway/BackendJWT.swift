import Foundation
import OpenSSLKit
import Synchronization
import TollgateProto
import TollgateStorage

/// The JWT a gateway sends a backend for an API with `backend_jwt` set
/// (WSO2's `X-JWT-Assertion`): the caller's application, subscription and
/// user as WSO2's `http://wso2.org/claims/…` claims, signed ES256 by a key
/// the gateway keeps in its data directory (`backend-jwt-key.pem`) and
/// publishes as a JWKS at ``jwksPath`` on its traffic listeners
/// (docs/gateway.md, "Backend JWT").
///
/// Signing costs tens of microseconds, so a JWT is made once per token and
/// API and reused until it nears its `exp`; a changed validation result
/// (another tier, say) makes a new one at once.
final class BackendJWTIssuer: Sendable {
    /// Where the gateway answers with its public key, when no API claims the path.
    static let jwksPath = "/.well-known/jwks.json"
    static let keyFileName = "backend-jwt-key.pem"
    /// WSO2's issuer, so backends written against WSO2's gateway accept ours.
    static let defaultIssuer = "wso2.org/products/am"

    let key: P256SigningKey
    /// The key's RFC 7638 thumbprint: stable across restarts for one key file.
    let kid: String
    let headerName: String
    let issuer: String
    let lifetimeMs: Int64
    let maxEntries: Int
    /// The JWKS document, made once.
    let jwks: [UInt8]
    private let encodedHeader: String

    private struct CacheKey: Hashable {
        let token: String
        let apiID: String
    }

    private struct Entry {
        let inputs: ClaimInputs
        let jwt: String
        /// Re-signed from here on, so a backend never receives one about to expire.
        let renewAtMs: Int64
    }

    private let cache = Mutex<[CacheKey: Entry]>([:])

    init(key: P256SigningKey, headerName: String = "X-JWT-Assertion", issuer: String = BackendJWTIssuer.defaultIssuer,
         lifetimeSeconds: Int = 900, maxEntries: Int = 100_000) {
        self.key = key
        self.headerName = headerName
        self.issuer = issuer
        lifetimeMs = Int64(lifetimeSeconds) * 1000
        self.maxEntries = maxEntries
        let x = Base64URL.encode(key.x), y = Base64URL.encode(key.y)
        // Members in lexicographic order, no spaces (RFC 7638 §3.2).
        kid = Base64URL.encode(SHA256.hash("{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"\(x)\",\"y\":\"\(y)\"}"))
        jwks = Array("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"use\":\"sig\",\"alg\":\"ES256\",\"kid\":\"\(kid)\",\"x\":\"\(x)\",\"y\":\"\(y)\"}]}".utf8)
        encodedHeader = Base64URL.encode(Array("{\"typ\":\"JWT\",\"alg\":\"ES256\",\"kid\":\"\(kid)\"}".utf8))
    }

    /// The key in `directory`, made (and saved, mode 0600) on the first start.
    static func loadOrCreateKey(directory: String) throws -> P256SigningKey {
        let path = directory + "/" + keyFileName
        if let data = FileManager.default.contents(atPath: path) {
            do {
                return try P256SigningKey(pem: [UInt8](data))
            } catch {
                throw BackendJWTKeyError("\(path) is not a P-256 private key in PEM (\(error)); move it away to have a new one made")
            }
        }
        let key = try P256SigningKey.generate()
        let pem = try key.pem()
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw BackendJWTKeyError("cannot create \(temporary): \(String(cString: strerror(errno)))") }
        let written = pem.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, $0.count) }
        let synced = fsync(descriptor)
        close(descriptor)
        guard written == pem.count, synced == 0, rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw BackendJWTKeyError("cannot write \(path): \(reason)")
        }
        return key
    }

    /// What the claims are made of: a cached JWT is reused only while these are unchanged.
    struct ClaimInputs: Equatable {
        var subscriber: String
        var applicationID: String
        var applicationName: String
        var applicationTier: String
        var subscriptionTier: String
        var keyType: KeyType
        var userType: TokenUserType
        var endUser: String
        var endUserTenant: String
        var apiName: String
        var apiContext: String
        var apiVersion: String

        init(info: KeyValidationInfo, api: RoutedApi) {
            subscriber = info.subscriber
            applicationID = info.applicationId
            applicationName = info.applicationName
            applicationTier = info.applicationPolicy
            subscriptionTier = info.subscriptionPolicy
            keyType = info.keyType
            userType = info.userType
            endUser = info.endUserName
            endUserTenant = info.subscriberTenantDomain
            apiName = api.api.name
            apiContext = api.deployed.gatewayContext
            apiVersion = api.api.version
        }
    }

    /// The JWT for a call with `token` (validated as `info`) to `api`.
    func assertion(token: String, info: KeyValidationInfo, api: RoutedApi, now: Int64) -> String? {
        let inputs = ClaimInputs(info: info, api: api)
        let key = CacheKey(token: token, apiID: api.api.id)
        if let entry = cache.withLock({ $0[key] }), entry.renewAtMs > now, entry.inputs == inputs { return entry.jwt }
        guard let jwt = sign(inputs, now: now) else { return nil }
        // Renewed when a tenth of its life (at least a second) is left.
        let entry = Entry(inputs: inputs, jwt: jwt, renewAtMs: now + lifetimeMs - max(1000, lifetimeMs / 10))
        cache.withLock { entries in
            if entries.count >= maxEntries, entries[key] == nil {
                entries = entries.filter { $0.value.renewAtMs > now }
                // Still full of live entries: start over rather than grow.
                if entries.count >= maxEntries { entries.removeAll(keepingCapacity: true) }
            }
            entries[key] = entry
        }
        return jwt
    }

    var cachedCount: Int { cache.withLock { $0.count } }

    func sign(_ inputs: ClaimInputs, now: Int64) -> String? {
        let payload = Base64URL.encode(Array(claims(inputs, now: now).utf8))
        let signingInput = encodedHeader + "." + payload
        guard let signature = try? key.sign(Array(signingInput.utf8)) else { return nil }
        return signingInput + "." + Base64URL.encode(signature)
    }

    /// WSO2's claim dialect; `exp` and `iat` in seconds (RFC 7519).
    func claims(_ inputs: ClaimInputs, now: Int64) -> String {
        let dialect = "http://wso2.org/claims/"
        // WSO2 names the end user with the tenant, `admin@carbon.super` included.
        let endUser = inputs.endUser.contains("@") || inputs.endUserTenant.isEmpty ? inputs.endUser : inputs.endUser + "@" + inputs.endUserTenant
        var members: [(String, String)] = [
            (dialect + "subscriber", inputs.subscriber),
            (dialect + "applicationid", inputs.applicationID),
            (dialect + "applicationname", inputs.applicationName),
            (dialect + "applicationtier", inputs.applicationTier),
            (dialect + "apiname", inputs.apiName),
            (dialect + "apicontext", inputs.apiContext),
            (dialect + "version", inputs.apiVersion),
            (dialect + "tier", inputs.subscriptionTier),
            (dialect + "keytype", inputs.keyType == .sandbox ? "SANDBOX" : "PRODUCTION"),
            (dialect + "enduser", endUser),
        ]
        switch inputs.userType {
        case .application: members.append((dialect + "usertype", "APPLICATION"))
        case .applicationUser: members.append((dialect + "usertype", "APPLICATION_USER"))
        default: break
        }
        // WSO2's number for the super tenant; other tenants have no number here, only their domain in `enduser`.
        if inputs.endUserTenant == superTenant { members.append((dialect + "enduserTenantId", "-1234")) }
        var json = "{\"iss\":\"" + GatewayFault.escapeJSON(issuer) + "\",\"iat\":\(now / 1000),\"exp\":\((now + lifetimeMs) / 1000)"
        for (name, value) in members {
            json += ",\"" + name + "\":\"" + GatewayFault.escapeJSON(value) + "\""
        }
        return json + "}"
    }
}

struct BackendJWTKeyError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
