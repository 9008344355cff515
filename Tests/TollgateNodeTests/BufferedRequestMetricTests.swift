import Foundation
import RoleCore
import TestSupport
import Testing
@testable import TollgateNode

/// `tollgate_rpc_buffered_request_bytes`: the RPC listeners' held request
/// bytes (docs/rpc-protocol.md §9), as scraped.
@Suite struct BufferedRequestMetricTests {
    func buffered(_ text: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix("tollgate_rpc_buffered_request_bytes ") }.flatMap { Double($0.split(separator: " ")[1]) }
    }

    @Test func reportsTheGaugeAtScrapeTime() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["gateway"])
        let metrics = NodeMetrics(version: "test", nodeID: "n1", roles: [.gateway], dataDirectory: fixture.path("data"), databases: [],
                                  certificateFile: fixture.path("n1.pem"), caFile: fixture.caPath)
        let idle = String(decoding: metrics.render(peers: [], bufferedRequestBytes: 0), as: UTF8.self)
        #expect(buffered(idle) == 0, "\(idle)")
        #expect(idle.contains("# TYPE tollgate_rpc_buffered_request_bytes gauge"))
        #expect(buffered(String(decoding: metrics.render(peers: [], bufferedRequestBytes: 65536), as: UTF8.self)) == 65536)
    }
}
