import Foundation
import Testing
import NIOCore
import RPCNIO
@testable import TollgateNode
import TestSupport

/// The `[limits]` keys that keep strangers from filling the RPC listeners
/// (docs/configuration.md, docs/rpc-protocol.md §9) reach the servers' limits,
/// and bad values are refused with their line.
@Suite struct RPCLimitsConfigTests {
    @Test func strangerLimitsReachTheRPCServers() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["publisher"])
        let path = try fixture.writeConfig("n1", roles: ["publisher"], clusterPort: try NodeFixture.freePort(), adminPort: nil,
                                           extra: "\n[limits]\nmax_unauthenticated_connections_per_address = 8\nunauthenticated_timeout_seconds = 12\n")
        let limits = NodeRuntime.rpcLimits(try NodeConfig.load(path: path))
        #expect(limits.maxUnauthenticatedConnectionsPerAddress == 8)
        #expect(limits.unauthenticatedTimeout == .seconds(12))

        let defaults = NodeRuntime.rpcLimits(try NodeConfig.load(path: try fixture.writeConfig("n1", roles: ["publisher"],
                                                                                             clusterPort: try NodeFixture.freePort(), adminPort: nil)))
        #expect(defaults.maxUnauthenticatedConnectionsPerAddress == 64 && defaults.unauthenticatedTimeout == .seconds(30))
    }

    @Test func outOfRangeValuesAreRefusedWithTheirLine() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["publisher"])
        let path = try fixture.writeConfig("n1", roles: ["publisher"], clusterPort: try NodeFixture.freePort(), adminPort: nil,
                                           extra: "\n[limits]\nmax_unauthenticated_connections_per_address = 0\nunauthenticated_timeout_seconds = 7200\n")
        let text = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        let line = { (key: String) in (text.firstIndex { $0.hasPrefix(key) } ?? -1) + 1 }
        do {
            _ = try NodeConfig.load(path: path)
            Issue.record("the configuration was accepted")
        } catch {
            let problems = Dictionary(uniqueKeysWithValues: error.problems.map { ($0.key, $0.line) })
            #expect(problems["limits.max_unauthenticated_connections_per_address"] == line("max_unauthenticated_connections_per_address"), "\(error)")
            #expect(problems["limits.unauthenticated_timeout_seconds"] == line("unauthenticated_timeout_seconds"), "\(error)")
        }
    }
}
