import Foundation
import RPCCore
import RPCNIO
import TestSupport
import Synchronization
import Testing
import TollgateProto
import TollgateServices
import TollgateStorage
import TollgateUsers

/// Issue 11, item 5, through real connections: `UserService/Login` over TLS
/// from several loopback addresses (127.0.0.0/8), with the real user
/// directory and access table. Guessing from one address cannot lock the
/// administrator out of another, and a wrong password, an unknown user, a
/// throttled address and a locked account all get one answer.
@Suite(.serialized) struct LoginThrottleTests {
    final class FrozenClock: Sendable {
        let milliseconds = Atomic<Int64>(1_800_000_000_000)
    }

    @Test func guessesFromOneAddressNeitherLockTheAdministratorNorSayWhoExists() async throws {
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-login-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: data) }
        // Time moves only when the test says so: the throttle's waits never run out mid-test.
        let clock = FrozenClock()
        let directory = UserDirectory(database: try UserDatabase.open(in: data), hasher: SecretHasher(settings: .testing),
                                      now: { clock.milliseconds.load(ordering: .relaxed) })
        try await directory.bootstrap(admin: ("root", "first-Secret-1"))
        let access = AccessController(rules: AccessTable.rulesByPath, sessions: directory, tenants: SuperTenantAdministration())
        try await Harness.with(methods: UserService(directory: directory).methodHandlers, certificateOptional: true,
                               authorize: { (context) throws(RPCError) -> Caller in try access.authorize(context) }) { harness in
            /// Signs in over a new connection from `source`; the session token, or the refusal's code and message.
            func login(_ username: String, _ password: String, from source: String) async throws -> Result<String, RPCError> {
                let connection = try await harness.connect(as: nil, from: source)
                let result: Result<String, RPCError>
                do {
                    result = .success(try await UserServiceClient(connection).login(LoginRequest(username: username, password: password)).sessionToken)
                } catch let error as RPCError {
                    result = .failure(error)
                }
                await connection.close()
                return result
            }
            func refusal(_ result: Result<String, RPCError>) -> String? {
                guard case .failure(let error) = result else { return nil }
                return "\(error.code): \(error.message)"
            }
            let invalid = "\(RPCCode.unauthenticated): invalid username or password"
            let attacker = "127.0.0.2", operator_ = "127.0.0.3"

            for _ in 0..<5 { #expect(refusal(try await login("root", "wrong-Password-9", from: attacker)) == invalid) }
            // The attacker's address now waits, even with the right password,
            // and an unknown user gets the same answer.
            #expect(refusal(try await login("root", "first-Secret-1", from: attacker)) == invalid)
            #expect(refusal(try await login("nobody", "first-Secret-1", from: attacker)) == invalid)
            // The administrator, from another address, signs in at once and works.
            guard case .success(let token) = try await login("root", "first-Secret-1", from: operator_) else {
                Issue.record("the administrator was refused from another address")
                return
            }
            let connection = try await harness.connect(as: nil, from: operator_)
            let me = try await UserServiceClient(connection, defaultOptions: CallOptions(metadata: ["authorization": "Bearer \(token)"]))
                .whoAmI(WhoAmIRequest())
            #expect(me.user?.username == "root")

            // An ordinary account is locked by five failures from five
            // addresses (no address is throttled), and says nothing of it.
            _ = try await UserServiceClient(connection, defaultOptions: CallOptions(metadata: ["authorization": "Bearer \(token)"]))
                .createUser(CreateUserRequest(user: User(username: "sam", email: "sam@example.com", roles: ["subscriber"]), password: "sam-Secret-1"))
            await connection.close()
            for host in 10..<15 { #expect(refusal(try await login("sam", "wrong-Password-9", from: "127.0.0.\(host)")) == invalid) }
            #expect(refusal(try await login("sam", "sam-Secret-1", from: "127.0.0.20")) == invalid)
            // The lock ends by itself.
            clock.milliseconds.add(16 * 60_000, ordering: .relaxed)
            #expect(refusal(try await login("sam", "sam-Secret-1", from: "127.0.0.20")) == nil)
        }
    }
}
