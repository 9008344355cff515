import Foundation
import TestSupport
import Testing

/// The bootstrap admin's password file is read on the first start only:
/// once an administrator exists the node starts without it.
@Suite struct BootstrapPasswordTests {
    @Test func aLaterStartNeedsNoPasswordFile() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["publisher"])
        let config = try fixture.writeConfig("n1", roles: ["publisher"], clusterPort: try NodeFixture.freePort(), adminPort: nil)
        try await withNodes { nodes in
            let first = try nodes.start(config: config)
            #expect(await first.waitFor("ready: node n1"), "\(first.output)")
            #expect(first.output.contains("created the first administrator"), "\(first.output)")
            #expect(await first.stop() == 0)

            try FileManager.default.removeItem(atPath: fixture.path("admin.password"))
            let second = try nodes.start(config: config)
            #expect(await second.waitFor("ready: node n1"), "\(second.output)")
            #expect(!second.output.contains("admin.password"), "\(second.output)")
            #expect(await second.stop() == 0)
        }
    }
}
