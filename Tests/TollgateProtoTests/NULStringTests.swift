import Testing
import TollgateProto

/// protobuf-c keeps strings NUL-terminated, so U+0000 inside one would cut
/// it. Both directions refuse such strings instead, naming the field.
@Suite struct NULStringTests {
    private func nul(_ type: String, _ field: String) -> ProtoEncodingError {
        ProtoEncodingError(messageType: type, reason: .nulInString(field: field))
    }

    @Test func encodingRefusesAStringField() {
        var api = Fixtures.api()
        api.name = "a\u{0}b"
        #expect(throws: nul("tollgate.v1.Api", "name")) { try api.serializedBytes() }
        #expect(throws: nul("tollgate.v1.Api", "name")) { try api.serializedSize() }
        #expect(throws: nul("tollgate.v1.Api", "name")) {
            try api.withSerializedBytes { _ in Issue.record("the body got bytes of a message that cannot be encoded") }
        }
        do {
            _ = try api.serializedBytes()
        } catch {
            let text = String(describing: error)
            #expect(text.contains("tollgate.v1.Api") && text.contains("'name'") && text.contains("U+0000"), "\(text)")
        }
    }

    @Test func encodingRefusesAnElementOfARepeatedString() {
        var api = Fixtures.api()
        api.tags = ["fine", "a\u{0}b"]
        #expect(throws: nul("tollgate.v1.Api", "tags")) { try api.serializedBytes() }
    }

    @Test func encodingRefusesStringsInSubMessagesNamingTheInnermostType() {
        var api = Fixtures.api()
        api.resources[7].uriTemplate = "/menu/\u{0}"
        #expect(throws: nul("tollgate.v1.ApiResource", "uri_template")) { try api.serializedBytes() }

        // Four levels down, through a oneof, a copy-on-write message and a repeated field.
        let deep = WatchDeploymentsResponse(frame: .change(DeploymentChange(change: .apiUpserted(DeployedApi(api: api)))))
        #expect(throws: nul("tollgate.v1.ApiResource", "uri_template")) { try deep.serializedBytes() }

        let removed = DeploymentChange(change: .apiRemoved("\u{0}"))
        #expect(throws: nul("tollgate.v1.DeploymentChange", "api_removed")) { try removed.serializedBytes() }
    }

    @Test func decodingRefusesAStringWithAZeroByte() throws {
        // Api.name (field 4) = "a\0b"
        #expect(throws: ProtoDecodingError(messageType: "tollgate.v1.Api", reason: .nulInString(field: "name"))) {
            try Api(serializedBytes: Wire.stringField(4, "a\u{0}b"))
        }
        // At either end, or nothing but the zero byte; among valid fields.
        let valid = try Fixtures.api().serializedBytes()
        for text in ["\u{0}abc", "abc\u{0}", "\u{0}"] {
            #expect(throws: ProtoDecodingError(messageType: "tollgate.v1.Api", reason: .nulInString(field: "description"))) {
                try Api(serializedBytes: valid + Wire.stringField(7, text))
            }
        }
        // Api.tags (field 8), one element of several.
        #expect(throws: ProtoDecodingError(messageType: "tollgate.v1.Api", reason: .nulInString(field: "tags"))) {
            try Api(serializedBytes: Wire.stringField(8, "ok") + Wire.stringField(8, "a\u{0}b"))
        }
    }

    @Test func decodingRefusesAZeroByteInANestedString() throws {
        // Api.resources (30) holding an ApiResource whose uri_template (1) has a zero byte.
        let resource = Wire.stringField(1, "/a\u{0}b") + Wire.varintField(2, 1)
        let api = try Fixtures.api().serializedBytes() + Wire.lengthDelimitedField(30, resource)
        let refused = ProtoDecodingError(messageType: "tollgate.v1.ApiResource", reason: .nulInString(field: "uri_template"))
        #expect(throws: refused) { try Api(serializedBytes: api) }
        // Deeper: DeployedApi.api (1), DeploymentChange.api_upserted (10), WatchDeploymentsResponse.change (2).
        let deployed = Wire.stringField(2, "/ctx") + Wire.lengthDelimitedField(1, api)
        let change = Wire.varintField(1, 9) + Wire.lengthDelimitedField(10, deployed)
        #expect(throws: refused) { try WatchDeploymentsResponse(serializedBytes: Wire.lengthDelimitedField(2, change)) }
        #expect(throws: refused) { try DeploymentSnapshotChunk(serializedBytes: Wire.lengthDelimitedField(2, deployed)) }
    }

    @Test func zeroBytesOutsideStringsAreFine() throws {
        // bytes fields carry any byte.
        var token = Fixtures.token()
        token.tokenHash = [0x61, 0, 0x62, 0]
        let bytes = try token.serializedBytes()
        #expect(try OAuthToken(serializedBytes: bytes) == token)
        // A zero-valued presence field puts a 0 byte among clean strings.
        var api = Fixtures.api()
        api.maxSandboxTps = 0
        #expect(try Api(serializedBytes: api.serializedBytes()) == api)
        // A field this schema does not know is never read as a string.
        let newer = try Api(serializedBytes: Fixtures.api().serializedBytes() + Wire.lengthDelimitedField(999, [0x61, 0, 0x62]))
        #expect(newer.unknownFields.first?.bytes == [3, 0x61, 0, 0x62])
    }

    @Test func messagesWithoutStringsCannotFailToEncode() {
        // RpcSettings has no string field at any depth: no `try` needed.
        let settings = RpcSettings(maxFrameSize: 1 << 20)
        #expect(settings.serializedBytes() == [0x08, 0x80, 0x80, 0x40])
        #expect(settings.serializedSize() == 4)
        #expect(settings.withSerializedBytes { Array($0) } == [0x08, 0x80, 0x80, 0x40])
    }
}
