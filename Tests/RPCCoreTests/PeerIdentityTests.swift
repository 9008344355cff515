import RPCCore
import Testing

@Suite struct PeerIdentityTests {
    @Test func parsesAndBuildsClusterURIs() {
        #expect(PeerIdentity(uri: "tollgate://node/gw-1?role=gateway") == .node(id: "gw-1", roles: ["gateway"]))
        #expect(PeerIdentity(uri: "tollgate://node/dev?role=publisher&role=store") == .node(id: "dev", roles: ["publisher", "store"]))
        #expect(PeerIdentity(uri: "tollgate://user/admin@wso2.com") == .user(name: "admin@wso2.com"))
        for identity in [PeerIdentity.node(id: "km-2", roles: ["keymanager"]), .user(name: "ops")] {
            #expect(PeerIdentity(uri: identity.uri) == identity)
        }
        #expect(PeerIdentity(certificateURIs: ["https://example.com", "tollgate://user/ops"]) == .user(name: "ops"))
    }

    @Test(arguments: [
        "https://node/x?role=gateway", "tollgate://node/x", "tollgate://node/?role=gateway", "tollgate://node/x?role=",
        "tollgate://node/x?rol=gateway", "tollgate://node/a/b?role=gateway", "tollgate://user/x?role=admin",
        "tollgate://group/x", "tollgate://user/bad name", "tollgate://node/x?role=a b",
    ])
    func refusesAnythingElse(uri: String) {
        #expect(PeerIdentity(uri: uri) == nil)
    }
}
