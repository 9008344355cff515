import Foundation
import OpenSSLKit
import Testing
@testable import TollgateGateway
import TollgateProto
import TollgateStorage

@Suite struct BackendJWTTests {
    static func info(tier: String = "Gold") -> KeyValidationInfo {
        var info = KeyValidationInfo(authorized: true, validationStatus: 0, keyType: .sandbox)
        info.subscriber = "alice"
        info.subscriberTenantDomain = "carbon.super"
        info.applicationId = "app-1"
        info.applicationName = "Mobile \"beta\""
        info.applicationPolicy = "10PerMin"
        info.subscriptionPolicy = tier
        info.endUserName = "bob"
        info.userType = .applicationUser
        return info
    }

    static func api(backendJWT: Bool = true) -> RoutedApi {
        var definition = deployed(id: "api-1", context: "/menu", version: "2.0", resources: [("/items", .get, .any)])
        definition.api?.name = "Menu"
        definition.api?.backendJwt = backendJWT
        return RoutedApi(definition)
    }

    static func decode(_ part: Substring) throws -> [String: Any] {
        let bytes = try #require(Base64URL.decode(part))
        return try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    }

    @Test func signedWithWSO2ClaimsAndVerifiableAgainstTheJWKS() throws {
        let issuer = BackendJWTIssuer(key: try P256SigningKey.generate(), lifetimeSeconds: 600)
        let now: Int64 = 1_800_000_000_000
        let jwt = try #require(issuer.assertion(token: "t1", info: Self.info(), api: Self.api(), now: now))
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false)
        #expect(parts.count == 3)
        let header = try Self.decode(parts[0])
        #expect(header["alg"] as? String == "ES256" && header["typ"] as? String == "JWT" && header["kid"] as? String == issuer.kid)
        let claims = try Self.decode(parts[1])
        let wso2 = "http://wso2.org/claims/"
        #expect(claims["iss"] as? String == "wso2.org/products/am")
        #expect(claims["iat"] as? Int == 1_800_000_000 && claims["exp"] as? Int == 1_800_000_600)
        #expect(claims[wso2 + "subscriber"] as? String == "alice")
        #expect(claims[wso2 + "applicationid"] as? String == "app-1")
        #expect(claims[wso2 + "applicationname"] as? String == "Mobile \"beta\"")
        #expect(claims[wso2 + "applicationtier"] as? String == "10PerMin")
        #expect(claims[wso2 + "tier"] as? String == "Gold")
        #expect(claims[wso2 + "keytype"] as? String == "SANDBOX")
        #expect(claims[wso2 + "usertype"] as? String == "APPLICATION_USER")
        #expect(claims[wso2 + "enduser"] as? String == "bob@carbon.super")
        #expect(claims[wso2 + "enduserTenantId"] as? String == "-1234")
        #expect(claims[wso2 + "apicontext"] as? String == "/menu/2.0")
        #expect(claims[wso2 + "version"] as? String == "2.0")
        #expect(claims[wso2 + "apiname"] as? String == "Menu")

        // The published key checks the signature; a changed payload fails it.
        let jwks = try #require(try JSONSerialization.jsonObject(with: Data(issuer.jwks)) as? [String: [[String: String]]])
        let jwk = try #require(jwks["keys"]?.first)
        #expect(jwk["kid"] == issuer.kid && jwk["kty"] == "EC" && jwk["crv"] == "P-256" && jwk["alg"] == "ES256")
        let x = try #require(Base64URL.decode(jwk["x"] ?? "")), y = try #require(Base64URL.decode(jwk["y"] ?? ""))
        let publicKey = try P256PublicKey(x: x, y: y)
        let signature = try #require(Base64URL.decode(parts[2]))
        #expect(publicKey.verify(signature, of: Array("\(parts[0]).\(parts[1])".utf8)))
        let other = try #require(issuer.assertion(token: "t2", info: Self.info(tier: "Silver"), api: Self.api(), now: now))
        let otherParts = other.split(separator: ".")
        #expect(!publicKey.verify(signature, of: Array("\(parts[0]).\(otherParts[1])".utf8)))
    }

    @Test func cachedPerTokenAndApiUntilNearExpiry() throws {
        let issuer = BackendJWTIssuer(key: try P256SigningKey.generate(), lifetimeSeconds: 100)
        let now: Int64 = 1_800_000_000_000
        let first = issuer.assertion(token: "t1", info: Self.info(), api: Self.api(), now: now)
        // ECDSA signatures are randomized: an equal string means the cached one.
        #expect(issuer.assertion(token: "t1", info: Self.info(), api: Self.api(), now: now + 80_000) == first)
        #expect(issuer.assertion(token: "t2", info: Self.info(), api: Self.api(), now: now) != first)
        #expect(issuer.assertion(token: "t1", info: Self.info(tier: "Silver"), api: Self.api(), now: now + 1000) != first)
        let renewed = issuer.assertion(token: "t1", info: Self.info(), api: Self.api(), now: now + 91_000)
        #expect(renewed != first && renewed != nil)
        let claims = try Self.decode(try #require(renewed).split(separator: ".")[1])
        #expect(claims["exp"] as? Int == 1_800_000_191)
    }

    @Test func boundedCache() throws {
        let issuer = BackendJWTIssuer(key: try P256SigningKey.generate(), maxEntries: 8)
        for index in 0..<50 { _ = issuer.assertion(token: "t\(index)", info: Self.info(), api: Self.api(), now: 1_800_000_000_000) }
        #expect(issuer.cachedCount <= 8)
    }

    @Test func keyKeptInTheDataDirectory() throws {
        let directory = NSTemporaryDirectory() + "backend-jwt-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = BackendJWTIssuer(key: try BackendJWTIssuer.loadOrCreateKey(directory: directory))
        let second = BackendJWTIssuer(key: try BackendJWTIssuer.loadOrCreateKey(directory: directory))
        #expect(first.kid == second.kid && first.jwks == second.jwks)
        let path = directory + "/" + BackendJWTIssuer.keyFileName
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
        #expect(mode == 0o600)
        try Data("not a key".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: BackendJWTKeyError.self) { try BackendJWTIssuer.loadOrCreateKey(directory: directory) }
    }
}
