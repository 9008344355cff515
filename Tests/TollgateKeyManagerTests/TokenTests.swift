import Foundation
import OpenSSLKit
import RoleCore
import RPCCore
import Synchronization
import Testing
import TollgateKeyManager
import TollgateProto
import TollgateServices
import TollgateStorage
import TollgateUsers
import TestSupport

@Suite struct TokenTests {
    /// Issue 11: the password grant and the sign-in page throttle failures
    /// by the client's address, as Login does. A stranger guessing the
    /// administrator's password slows down only its own address; from any
    /// other, the administrator gets tokens and signs in at once. (With one
    /// shared count, the operator's attempts below were refused.)
    @Test func passwordFailuresThrottleTheirSourceAddressOnly() async throws {
        // Time stands still: the throttle's waits (1 s on) never run out mid-test.
        let fixture = try await ConsumerFixture(userClock: UserDirectory.Clock { 1_900_000_000_000 })
        defer { fixture.remove() }
        let callback = "https://client.example.com/cb"
        let alice = try await fixture.consumer("alice", subscribedTo: nil, callback: callback)
        let basic = (alice.consumerKey, alice.consumerSecret)
        let attacker = "203.0.113.66", operator_ = "192.0.2.10"
        func grant(_ password: String, from source: String) async -> (status: Int, json: [String: Any], response: HTTPResponse) {
            await fixture.post("/oauth2/token", [("grant_type", "password"), ("username", "root"), ("password", password)], basic: basic, from: source)
        }
        for _ in 0..<5 {
            let refused = await grant("wrong-Password-9", from: attacker)
            #expect(refused.status == 400 && refused.json["error"] as? String == "invalid_grant", "\(refused.json)")
        }
        // The attacker's address waits now, even with the right password…
        let throttled = await grant(ConsumerFixture.password, from: attacker)
        #expect(throttled.json["error"] as? String == "invalid_grant", "\(throttled.json)")
        // …and the administrator, from another address, gets a token…
        let granted = await grant(ConsumerFixture.password, from: operator_)
        #expect(granted.status == 200 && granted.json["access_token"] is String, "\(granted.json)")

        // …and signs in on the authorization page, which counts by address too.
        let csrf = "form-token-1"
        func signIn(_ password: String, from source: String) async -> HTTPResponse {
            await fixture.post("/oauth2/authorize", [("response_type", "code"), ("client_id", alice.consumerKey), ("redirect_uri", callback),
                                                     ("code_challenge", String(repeating: "A", count: 43)), ("code_challenge_method", "S256"),
                                                     ("csrf_token", csrf), ("username", "root"), ("password", password)],
                               from: source, cookie: "__Host-tollgate-csrf=\(csrf)").response
        }
        for _ in 0..<5 { #expect(await signIn("wrong-Password-9", from: "203.0.113.77").status == 200) }
        let page = await signIn(ConsumerFixture.password, from: "203.0.113.77")
        #expect(page.status == 200 && String(decoding: page.body, as: UTF8.self).contains("The username or password is wrong."))
        let signedIn = await signIn(ConsumerFixture.password, from: operator_)
        #expect(signedIn.status == 302 && signedIn.headers.contains { $0.name == "Location" && $0.value.hasPrefix(callback + "?code=") },
                "\(signedIn.status) \(signedIn.headers)")
    }

    @Test func passwordGrantRefreshRotationAndReplayRevokesTheFamily() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let basic = (alice.consumerKey, alice.consumerSecret)

        let first = await fixture.post("/oauth2/token", [("grant_type", "password"), ("username", "alice"), ("password", ConsumerFixture.password)], basic: basic)
        #expect(first.status == 200 && first.json["token_type"] as? String == "Bearer" && first.json["expires_in"] as? Int == 3600, "\(first.json)")
        #expect(first.response.headers.contains { $0.name == "Cache-Control" && $0.value == "no-store" })
        let access1 = try #require(first.json["access_token"] as? String), refresh1 = try #require(first.json["refresh_token"] as? String)

        let second = await fixture.post("/oauth2/token", [("grant_type", "refresh_token"), ("refresh_token", refresh1)], basic: basic)
        let access2 = try #require(second.json["access_token"] as? String), refresh2 = try #require(second.json["refresh_token"] as? String)
        #expect(refresh2 != refresh1 && access2 != access1)
        // The replaced access token is gone; the new one works.
        #expect(try await fixture.validate(access1, api).validationStatus == KeyValidationStatus.invalidCredentials)
        #expect(try await fixture.validate(access2, api).authorized)

        let replay = await fixture.post("/oauth2/token", [("grant_type", "refresh_token"), ("refresh_token", refresh1)], basic: basic)
        #expect(replay.status == 400 && replay.json["error"] as? String == "invalid_grant", "\(replay.json)")
        // Replaying a used refresh token revoked everything of the grant.
        #expect(try await fixture.validate(access2, api).validationStatus == KeyValidationStatus.invalidCredentials)
        let after = await fixture.post("/oauth2/token", [("grant_type", "refresh_token"), ("refresh_token", refresh2)], basic: basic)
        #expect(after.json["error"] as? String == "invalid_grant", "\(after.json)")

        let wrong = await fixture.post("/oauth2/token", [("grant_type", "password"), ("username", "alice"), ("password", "nope")], basic: basic)
        #expect(wrong.status == 400 && wrong.json["error"] as? String == "invalid_grant")
    }

    @Test func clientAuthenticationAndErrorShapesFollowRFC6749() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let alice = try await fixture.consumer("alice", subscribedTo: nil)
        let badSecret = await fixture.post("/oauth2/token", [("grant_type", "client_credentials")], basic: (alice.consumerKey, "wrong"))
        #expect(badSecret.status == 401 && badSecret.json["error"] as? String == "invalid_client")
        #expect(badSecret.response.headers.contains { $0.name == "WWW-Authenticate" && $0.value.hasPrefix("Basic") })
        // The secret in the body works as well as HTTP Basic, but not both at once.
        let body = await fixture.post("/oauth2/token", [("grant_type", "client_credentials"), ("client_id", alice.consumerKey), ("client_secret", alice.consumerSecret)])
        #expect(body.status == 200 && body.json["refresh_token"] == nil, "\(body.json)")
        let both = await fixture.post("/oauth2/token", [("grant_type", "client_credentials"), ("client_secret", alice.consumerSecret)],
                                      basic: (alice.consumerKey, alice.consumerSecret))
        #expect(both.json["error"] as? String == "invalid_request")
        let missing = await fixture.post("/oauth2/token", [], basic: (alice.consumerKey, alice.consumerSecret))
        #expect(missing.status == 400 && missing.json["error"] as? String == "invalid_request")
        let unsupported = await fixture.post("/oauth2/token", [("grant_type", "urn:ietf:params:oauth:grant-type:device_code")],
                                             basic: (alice.consumerKey, alice.consumerSecret))
        #expect(unsupported.json["error"] as? String == "unsupported_grant_type")
        let repeated = await fixture.post("/oauth2/token", [("grant_type", "client_credentials"), ("grant_type", "password")],
                                          basic: (alice.consumerKey, alice.consumerSecret))
        #expect(repeated.json["error"] as? String == "invalid_request")
        // A client whose keys lack a grant may not use it.
        let store = fixture.storeClient(alice.options)
        let app = try #require(try await store.createApplication(CreateApplicationRequest(application: Application(name: "cc-only"))).application)
        let keys = try await store.generateKeys(GenerateKeysRequest(applicationId: app.id, keyType: .production, grantTypes: [.clientCredentials]))
        let refused = await fixture.post("/oauth2/token", [("grant_type", "password"), ("username", "alice"), ("password", ConsumerFixture.password)],
                                         basic: (keys.key?.consumerKey ?? "", keys.consumerSecret))
        #expect(refused.json["error"] as? String == "unauthorized_client", "\(refused.json)")
    }

    @Test func authorizationCodeWithPKCEWorksOnceAndExpires() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let callback = "https://client.example.com/cb"
        let alice = try await fixture.consumer("alice", subscribedTo: nil, callback: callback)
        let client = try fixture.keyManager.client(alice.consumerKey)
        #expect(client.grantTypes.contains(.authorizationCode))
        let verifier = "verifier-" + String(repeating: "x", count: 50)
        let challenge = Base64URL.encode(SHA256.hash(verifier))

        func code() async throws -> String {
            try await fixture.keyManager.issueCode(client: client, username: "alice", tenant: superTenant, scopes: [], redirectURI: callback,
                                                   codeChallenge: challenge, codeChallengeMethod: "S256")
        }
        let basic = (alice.consumerKey, alice.consumerSecret)
        let third = try await code()
        let noVerifier = await fixture.post("/oauth2/token", [("grant_type", "authorization_code"), ("code", third), ("redirect_uri", callback)], basic: basic)
        #expect(noVerifier.json["error"] as? String == "invalid_grant", "\(noVerifier.json)")
        let wrongVerifier = await fixture.post("/oauth2/token", [("grant_type", "authorization_code"), ("code", third), ("redirect_uri", callback),
                                                                 ("code_verifier", String(repeating: "y", count: 60))], basic: basic)
        #expect(wrongVerifier.json["error"] as? String == "invalid_grant")
        let noRedirect = await fixture.post("/oauth2/token", [("grant_type", "authorization_code"), ("code", third), ("code_verifier", verifier)], basic: basic)
        #expect(noRedirect.json["error_description"] as? String == "redirect_uri is required: the authorization request named one", "\(noRedirect.json)")
        // Failed attempts leave the code unspent; the right request then works, once.
        let exchanged = await fixture.post("/oauth2/token", [("grant_type", "authorization_code"), ("code", third), ("redirect_uri", callback),
                                                             ("code_verifier", verifier)], basic: basic)
        let access = try #require(exchanged.json["access_token"] as? String, "\(exchanged.json)")
        #expect(exchanged.json["refresh_token"] is String)
        #expect(try fixture.keyManager.introspect(token: access).active)
        let again = await fixture.post("/oauth2/token", [("grant_type", "authorization_code"), ("code", third), ("redirect_uri", callback),
                                                         ("code_verifier", verifier)], basic: basic)
        #expect(again.json["error"] as? String == "invalid_grant")
        // A second exchange of a code revokes what the first one issued (RFC 6749 §4.1.2).
        #expect(try fixture.keyManager.introspect(token: access).active == false)

        // A key manager whose clock is past the code's lifetime refuses it.
        let later = try KeyManager(database: fixture.keyManager.database, users: fixture.keyManager.users, revocations: fixture.keyManager.revocations,
                                   signingKeys: fixture.keyManager.signingKeys, hasher: SecretHasher(settings: .testing),
                                   now: { Int64(Date().timeIntervalSince1970 * 1000) + 301_000 })
        var request = TokenRequest(grantType: .authorizationCode)
        request.code = try await code()
        request.redirectURI = callback
        request.codeVerifier = verifier
        await #expect(throws: OAuthError(.invalidGrant, "the authorization code has expired")) { _ = try await later.token(request, for: client) }
    }

    @Test func revocationAndIntrospectionFollowRFC7009And7662() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let bob = try await fixture.consumer("bob", subscribedTo: api)
        let aliceBasic = (alice.consumerKey, alice.consumerSecret)

        let seen = await fixture.post("/oauth2/introspect", [("token", alice.token)], basic: aliceBasic)
        #expect(seen.json["active"] as? Bool == true && seen.json["client_id"] as? String == alice.consumerKey && seen.json["exp"] is Int, "\(seen.json)")
        // Another client's token reads as inactive, and alice's revocation leaves it alone
        // (answered like an unknown token, so its existence is not revealed).
        #expect(await fixture.post("/oauth2/introspect", [("token", bob.token)], basic: aliceBasic).json["active"] as? Bool == false)
        #expect(await fixture.post("/oauth2/revoke", [("token", bob.token)], basic: aliceBasic).status == 200)
        #expect(try await fixture.validate(bob.token, api).authorized)
        // Unknown tokens are not an error.
        #expect(await fixture.post("/oauth2/revoke", [("token", "never-issued")], basic: aliceBasic).status == 200)

        let revoked = await fixture.post("/oauth2/revoke", [("token", alice.token), ("token_type_hint", "access_token")], basic: aliceBasic)
        #expect(revoked.status == 200)
        let after = await fixture.post("/oauth2/introspect", [("token", alice.token)], basic: aliceBasic)
        #expect(after.json["active"] as? Bool == false && after.json.count == 1, "\(after.json)")
        #expect(try await fixture.validate(alice.token, api).validationStatus == KeyValidationStatus.invalidCredentials)
    }

    @Test func regeneratingTheSecretRevokesEveryEarlierToken() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let store = fixture.storeClient(alice.options)
        let renewed = try await store.regenerateSecret(RegenerateSecretRequest(applicationId: alice.application.id, keyType: .production))
        #expect(renewed.consumerKey == alice.consumerKey && renewed.consumerSecret != alice.consumerSecret)
        #expect(try await fixture.validate(alice.token, api).validationStatus == KeyValidationStatus.invalidCredentials)
        let old = await fixture.post("/oauth2/token", [("grant_type", "client_credentials")], basic: (alice.consumerKey, alice.consumerSecret))
        #expect(old.status == 401)
        let fresh = await fixture.post("/oauth2/token", [("grant_type", "client_credentials")], basic: (alice.consumerKey, renewed.consumerSecret))
        let token = try #require(fresh.json["access_token"] as? String, "\(fresh.json)")
        #expect(try await fixture.validate(token, api).authorized)
        // Store-issued tokens replace their predecessor on request.
        let next = try #require(try await store.generateApplicationToken(GenerateApplicationTokenRequest(applicationId: alice.application.id,
                                                                                                         keyType: .production, previousToken: token)).token)
        #expect(try await fixture.validate(token, api).validationStatus == KeyValidationStatus.invalidCredentials)
        #expect(try await fixture.validate(next.accessToken, api).authorized)
    }

    @Test func scopesAreLimitedToThoseTheUsersRolesAllow() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api(scopes: [ApiScope(key: "menu:read", name: "Read", roles: []),
                                                 ApiScope(key: "orders:write", name: "Write", roles: ["Internal/subscriber"]),
                                                 ApiScope(key: "kitchen:admin", name: "Admin", roles: ["admin"])])
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let issued = await fixture.post("/oauth2/token", [("grant_type", "password"), ("username", "alice"), ("password", ConsumerFixture.password),
                                                          ("scope", "menu:read orders:write kitchen:admin unknown")], basic: (alice.consumerKey, alice.consumerSecret))
        #expect(issued.json["scope"] as? String == "menu:read orders:write", "\(issued.json)")
        let none = await fixture.post("/oauth2/token", [("grant_type", "client_credentials"), ("scope", "kitchen:admin")],
                                      basic: (alice.consumerKey, alice.consumerSecret))
        #expect(none.json["scope"] as? String == "default")
        let token = try #require(issued.json["access_token"] as? String)
        #expect(try await fixture.validate(token, api).scopes == ["menu:read", "orders:write"])
    }

    @Test func jwtAccessTokensVerifyWithThePublishedKeysUntilTheirKeyIsRetired() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api, tokenFormat: .jwt)
        let parts = alice.token.split(separator: ".")
        #expect(parts.count == 3)
        let header = try #require(try JSONSerialization.jsonObject(with: Data(Base64URL.decode(parts[0]) ?? [])) as? [String: Any])
        let claims = try #require(try JSONSerialization.jsonObject(with: Data(Base64URL.decode(parts[1]) ?? [])) as? [String: Any])
        #expect(header["alg"] as? String == "ES256" && claims["aud"] as? String == alice.consumerKey && claims["aut"] as? String == "APPLICATION")
        #expect(try await fixture.validate(alice.token, api).authorized)

        func verifies(_ token: String) throws -> Bool {
            let parts = token.split(separator: ".")
            let kid = (try JSONSerialization.jsonObject(with: Data(Base64URL.decode(parts[0]) ?? [])) as? [String: Any])?["kid"] as? String
            guard let entry = try fixture.keyManager.signingKeys.keys.first(where: { $0.kid == kid }) else { return false }
            let key = try P256PublicKey(x: entry.key.x, y: entry.key.y)
            return key.verify(Base64URL.decode(parts[2]) ?? [], of: Array("\(parts[0]).\(parts[1])".utf8))
        }
        #expect(try verifies(alice.token))
        var tampered = Array(alice.token)
        tampered[tampered.count / 2] = tampered[tampered.count / 2] == "A" ? "B" : "A"
        #expect(try verifies(String(tampered)) == false)

        let admin = KeyManagerServiceClient(fixture.transport, defaultOptions: try await fixture.session("root"))
        let rotated = try await admin.rotateSigningKey(RotateSigningKeyRequest())
        let newer = try #require(try await fixture.storeClient(alice.options).generateApplicationToken(
            GenerateApplicationTokenRequest(applicationId: alice.application.id, keyType: .production)).token?.accessToken)
        let newerVerifies = try verifies(newer), olderVerifies = try verifies(alice.token)
        #expect(rotated.publishedKids.count == 2 && newerVerifies && olderVerifies)
        _ = try await admin.rotateSigningKey(RotateSigningKeyRequest(retirePrevious: true))
        let olderAfter = try verifies(alice.token), newerAfter = try verifies(newer)
        #expect(!olderAfter && !newerAfter)
        await expectStatus(.permissionDenied) {
            _ = try await KeyManagerServiceClient(fixture.transport, defaultOptions: alice.options).rotateSigningKey(RotateSigningKeyRequest())
        }
    }

    @Test func concurrentIssuesAreEachStoredAndValid() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let tokens = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<64 {
                group.addTask {
                    let issued = await fixture.post("/oauth2/token", [("grant_type", "client_credentials")], basic: (alice.consumerKey, alice.consumerSecret))
                    return issued.json["access_token"] as? String ?? ""
                }
            }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(Set(tokens).count == 64 && !tokens.contains(""))
        for token in tokens { #expect(try await fixture.validate(token, api).authorized) }
    }

    @Test func expiredTokensArePurgedInSmallTransactions() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let alice = try await fixture.consumer("alice", subscribedTo: nil)
        for _ in 0..<5 {
            _ = await fixture.post("/oauth2/token", [("grant_type", "client_credentials")], basic: (alice.consumerKey, alice.consumerSecret))
        }
        let stored = { try fixture.keyManager.database.tokens(consumerKey: alice.consumerKey).count }
        #expect(try stored() == 6)
        #expect(try await fixture.keyManager.purge() == 0)
        // Two days on, every token is past its expiry and its retention.
        let later = try KeyManager(database: fixture.keyManager.database, users: fixture.keyManager.users, revocations: fixture.keyManager.revocations,
                                   signingKeys: fixture.keyManager.signingKeys, now: { Int64(Date().timeIntervalSince1970 * 1000) + 2 * 86_400_000 })
        #expect(try await later.purge(limit: 4) == 4)
        #expect(try await later.purge(limit: 4) == 2)
        #expect(try stored() == 0)
    }
}

@Suite struct RevocationFeedTests {
    @Test func aConnectedWatcherHearsOfRevocationsAndAReconnectGetsWhatItMissed() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let received = Watched<[WatchRevocationsResponse]>([])
        let watcher = Task {
            try await fixture.gateway.watchRevocations(WatchRevocationsRequest()) { response in received.update { $0.append(response) } }
        }
        try await received.wait(for: "the reset") { $0.first?.reset == true }
        let head = try #require(received.current.first?.headSequence)
        _ = try await fixture.storeClient(alice.options).revokeApplicationToken(
            RevokeApplicationTokenRequest(applicationId: alice.application.id, keyType: .production, accessToken: alice.token))
        let hash = SecretHasher.tokenHash(alice.token)
        try await received.wait(for: "the revocation") { $0.flatMap { $0.revocations }.contains { $0.target == TokenRevocation.Target.tokenHash(hash) } }
        watcher.cancel()
        _ = await watcher.result

        // Offline, the application is deleted; a reconnect from the last sequence gets exactly that.
        let seen = received.current.last?.headSequence ?? head
        _ = try await fixture.storeClient(alice.options).deleteApplication(DeleteApplicationRequest(applicationId: alice.application.id))
        let missed = Watched<[WatchRevocationsResponse]>([])
        let again = Task {
            try await fixture.gateway.watchRevocations(WatchRevocationsRequest(sinceSequence: seen)) { response in missed.update { $0.append(response) } }
        }
        try await missed.wait(for: "the deletion") { $0.flatMap { $0.revocations }.contains { $0.target == TokenRevocation.Target.applicationId(alice.application.id) } }
        #expect(missed.current.allSatisfy { !$0.reset } && missed.current.flatMap { $0.revocations }.allSatisfy { $0.sequence > seen })
        again.cancel()
        _ = await again.result

        // Only gateways may watch.
        await expectStatus(.permissionDenied) {
            try await KeyManagerServiceClient(fixture.transport, defaultOptions: alice.options)
                .watchRevocations(WatchRevocationsRequest(), options: CallOptions(metadata: alice.options.metadata, timeout: .seconds(5))) { _ in }
        }
    }

    @Test func theFeedSaysCaughtUpAndRepeatsItWhileQuiet() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        // One revocation, so that the head is a sequence a watcher can resume from.
        let alice = try await fixture.consumer("alice", subscribedTo: try await fixture.api())
        _ = try await fixture.storeClient(alice.options).revokeApplicationToken(
            RevokeApplicationTokenRequest(applicationId: alice.application.id, keyType: .production, accessToken: alice.token))
        // A fresh watcher: the reset, then caught up at the same head, announcing the ten-second heartbeat.
        let fresh = Watched<[WatchRevocationsResponse]>([])
        let watcher = Task {
            try await fixture.gateway.watchRevocations(WatchRevocationsRequest()) { response in fresh.update { $0.append(response) } }
        }
        let start = try await fresh.wait(for: "the reset and caught-up") { $0.count >= 2 }
        watcher.cancel()
        _ = await watcher.result
        let head = start[0].headSequence
        #expect(head > 0)
        #expect(start[0].reset && !start[0].caughtUp)
        #expect(!start[1].reset && start[1].caughtUp && start[1].revocations.isEmpty && start[1].headSequence == head && start[1].heartbeatSeconds == 10)

        // Resuming at the head, with nothing new, from a service repeating it every 200 ms:
        // caught up at once, then again and again, never a reset.
        let service = KeyManagerRPCService(keyManager: fixture.keyManager, feedHeartbeat: .milliseconds(200))
        let transport = InProcessTransport(methods: service.handlers) { _ in .node(id: "gw1", roles: ["gateway"]) }
        let quiet = Watched<[WatchRevocationsResponse]>([])
        let resumed = Task {
            try await KeyManagerServiceClient(transport).watchRevocations(WatchRevocationsRequest(sinceSequence: head)) { response in
                quiet.update { $0.append(response) }
            }
        }
        let beats = try await quiet.wait(for: "three heartbeats") { $0.count >= 3 }
        resumed.cancel()
        _ = await resumed.result
        #expect(beats.allSatisfy { $0.caughtUp && !$0.reset && $0.revocations.isEmpty && $0.headSequence == head && $0.heartbeatSeconds == 1 },
                "\(beats)")
    }
}
