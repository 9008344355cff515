// tollgate-bench: single-threaded storage and message figures (`make bench`).
//
// Prints one line per measurement: operations per second and the mean cost.
// Run on a release build; the numbers are for this machine only.
import Foundation
import LMDBKit
import TollgateProto
import TollgateStorage

func measure(_ label: String, operations: Int, target: Double? = nil, _ body: () throws -> Void) rethrows {
    // One untimed pass warms caches and the allocator.
    let clock = ContinuousClock()
    let elapsed = try clock.measure(body)
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    let rate = Double(operations) / seconds
    var line = label.padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "%12.0f ops/s  %8.3f µs/op", rate, seconds / Double(operations) * 1e6)
    if let target { line += String(format: "   target %.0f: %@", target, rate >= target ? "met" : "MISSED") }
    print(line)
}

func temporaryDirectory() throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-bench-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func tokenRecord() -> OAuthToken {
    OAuthToken(
        tokenHash: Array(repeating: 0xA5, count: 32), kind: .access, pairedTokenId: Array(repeating: 0x5A, count: 16),
        consumerKey: "wSHHmJYfCkjcy1a5Cz0N1xvPJQsa", keyType: .production, applicationId: "3d1c1b9e-2f34-4a9d-9d55-8b2ad0c4e1f7",
        tenantDomain: "carbon.super", username: "alice", userType: .application, grantType: .clientCredentials,
        scopes: ["default", "am_application_scope"], issuedAtUnixMs: 1_764_201_600_000, state: .active,
        stateChangedAtUnixMs: 1_764_201_600_000, expiresAtUnixMs: 1_764_205_200_000)
}

func apiRecord() -> Api {
    var api = Api(id: "6f0c2a52-9f3e-4d57-8a43-1d2b7f7e0c11", tenantDomain: "carbon.super", provider: "admin",
                  name: "PizzaShack", version: "1.0.0", context: "/pizzashack", description: "Pizza ordering API",
                  tags: ["food", "orders"])
    api.resources = (0..<10).map { i in
        ApiResource(uriTemplate: "/menu/\(i)/{itemId}", verb: .get, authType: .application, throttlingPolicy: "Unlimited")
    }
    api.subscriptionPolicies = ["Gold", "Silver", "Bronze"]
    api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "https://backend.example/pizza", connectTimeoutMs: 2000, readTimeoutMs: 30000)))
    api.lifecycleState = .published
    return api
}

func benchProtobuf() throws {
    let token = tokenRecord()
    let api = apiRecord()
    let tokenBytes = try token.serializedBytes()
    let apiBytes = try api.serializedBytes()
    print("token record \(tokenBytes.count) bytes; API record with \(api.resources.count) resources \(apiBytes.count) bytes")
    let n = 500_000
    var sink = 0
    try measure("protobuf token record encode+decode", operations: n, target: 500_000) {
        for _ in 0..<n { sink &+= try OAuthToken(serializedBytes: token.serializedBytes()).scopes.count }
    }
    try measure("protobuf token record encode", operations: n) {
        for _ in 0..<n { sink &+= try token.serializedBytes().count }
    }
    try measure("protobuf token record encode, bytes lent (withSerializedBytes)", operations: n) {
        for _ in 0..<n { sink &+= try token.withSerializedBytes { $0.count } }
    }
    try measure("protobuf token record decode", operations: n) {
        for _ in 0..<n { sink &+= try OAuthToken(serializedBytes: tokenBytes).scopes.count }
    }
    let m = 100_000
    try measure("protobuf API record (10 resources) encode+decode", operations: m) {
        for _ in 0..<m { sink &+= try Api(serializedBytes: api.serializedBytes()).resources.count }
    }
    try measure("protobuf API record (10 resources) decode", operations: m) {
        for _ in 0..<m { sink &+= try Api(serializedBytes: apiBytes).resources.count }
    }
    if sink == 42 { print("") }
}

func benchLMDB() throws {
    // A hot set that fits the CPU caches, and one several times larger than them.
    try benchLMDB(records: 10_000)
    try benchLMDB(records: 100_000)
}

func benchLMDB(records count: Int) throws {
    let path = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: path) }
    let env = try Environment(path: path)
    let db = try env.openDatabase("bench")
    let keys = (0..<count).map { i in withUnsafeBytes(of: UInt64(i).bigEndian, Array.init) + Array("-token-key".utf8) }
    let value = try tokenRecord().serializedBytes()
    try env.write { txn in for key in keys { try txn.put(value, forKey: key, in: db) } }

    var order = Array(keys.indices)
    order.shuffle()
    let reads = 2_000_000
    var found = 0
    try measure("LMDB point reads of \(count / 1000)k records, 1 read txn per 1000", operations: reads, target: 1_000_000) {
        var done = 0
        while done < reads {
            try env.read { txn in
                for i in 0..<1000 {
                    if try txn.withValue(keys[order[(done + i) % count]], in: db, { $0.count }) != nil { found += 1 }
                }
            }
            done += 1000
        }
    }
    let single = 200_000
    try measure("LMDB point reads of \(count / 1000)k records, 1 read txn per read", operations: single) {
        for i in 0..<single {
            if try env.read({ txn in try txn.withValue(keys[order[i % count]], in: db, { $0.count }) }) != nil { found += 1 }
        }
    }
    guard count == 100_000 else { return }
    let commits = 2_000
    try measure("LMDB write commits (1 put each, fsync on commit)", operations: commits) {
        for i in 0..<commits { try env.write { txn in try txn.put(value, forKey: keys[i], in: db) } }
    }
    let batched = 100_000
    try measure("LMDB puts in commits of 1000 (fsync on commit)", operations: batched) {
        for start in stride(from: 0, to: batched, by: 1000) {
            try env.write { txn in for i in start..<start + 1000 { try txn.put(value, forKey: keys[i % count], in: db) } }
        }
    }
    if found == -1 { print("") }
}

func benchStorage() throws {
    let path = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: path) }
    let apimgt = try ApiManagerDatabase.open(in: path)
    let tokens = (0..<50_000).map { i -> OAuthToken in
        var token = tokenRecord()
        token.tokenHash = SecretHasher.tokenHash("token-\(i)")
        token.tokenId = Array(token.tokenHash.prefix(16))
        return token
    }
    try apimgt.database.environment.write { txn in
        for token in tokens { try apimgt.tokens.put(token, in: &txn) }
    }
    let lookups = 500_000
    var found = 0
    try measure("token lookup by hash + decode (1 read txn per 1000)", operations: lookups) {
        var done = 0
        while done < lookups {
            try apimgt.database.environment.read { txn in
                for i in 0..<1000 {
                    if try apimgt.tokens.get(Key(.bytes(tokens[(done + i) % tokens.count].tokenId)), in: txn) != nil { found += 1 }
                }
            }
            done += 1000
        }
    }
    if found == -1 { print("") }
}

// `tollgate-bench [protobuf|lmdb|storage|tls|rpc|node|publisher|keymanager|gateway|throttle|analytics]…` runs only the named groups.
let groups = Set(CommandLine.arguments.dropFirst())
func wanted(_ group: String) -> Bool { groups.isEmpty || groups.contains(group) }
print("tollgate-bench on \(ProcessInfo.processInfo.activeProcessorCount) cores (storage and message groups run on one thread)")
if wanted("protobuf") { try benchProtobuf() }
if wanted("lmdb") { try benchLMDB() }
if wanted("storage") { try benchStorage() }
if wanted("tls") { try benchTLS() }
if wanted("node") { try benchNodes() }
if wanted("publisher") { runAsync { try await benchPublisher() } }
if wanted("keymanager") { runAsync { try await benchKeyManager() } }
if wanted("gateway") { runAsync { try await benchGateway() } }
if wanted("throttle") { runAsync { try await benchThrottling() } }
if wanted("analytics") { runAsync { try await benchAnalytics() } }
if wanted("rpc") {
    // The RPC client is async; run it to completion from this synchronous
    // main. Detached: a plain Task would wait for the main actor we block.
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        do { try await benchRPC() } catch { print("rpc benchmark failed: \(error)") }
        done.signal()
    }
    done.wait()
}

/// Runs async work to completion from this synchronous main. Detached: a
/// plain Task would wait for the main actor this thread blocks.
func runAsync(_ body: @escaping @Sendable () async throws -> Void) {
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        do { try await body() } catch { print("benchmark failed: \(error)") }
        done.signal()
    }
    done.wait()
}
