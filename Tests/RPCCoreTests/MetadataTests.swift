import RPCCore
import Testing

@Suite struct MetadataTests {
    @Test func keepsOrderAndRepeatsAndLowercasesKeys() {
        var metadata = Metadata()
        metadata.add("X-Request-Id", "r1")
        metadata.add("tag", "a")
        metadata.add("tag", "b")
        metadata.add("trace-bin", binary: [0, 1])
        #expect(metadata.entries.map(\.key) == ["x-request-id", "tag", "tag", "trace-bin"])
        #expect(metadata["x-request-id"] == "r1" && metadata["TAG"] == "a")
        metadata.set("tag", "c")
        #expect(metadata.entries.filter { $0.key == "tag" }.count == 1)
        #expect(metadata.byteCount == "x-request-id".count + 2 + "trace-bin".count + 2 + "tag".count + 1)
        #expect(throws: Never.self) { try metadata.validate() }
    }

    @Test func refusesBadKeysAndValues() {
        var binaryWithoutSuffix = Metadata()
        binaryWithoutSuffix.add("trace", binary: [1])
        var textWithSuffix = Metadata()
        textWithSuffix.add("trace-bin", "x")
        var badKey = Metadata()
        badKey.add("bad key", "x")
        var controlCharacter = Metadata()
        controlCharacter.add("note", "line\nbreak")
        for metadata in [binaryWithoutSuffix, textWithSuffix, badKey, controlCharacter] {
            #expect(throws: RPCError.self) { try metadata.validate() }
        }
    }

    @Test func codesHaveTheirGRPCNumbersAndNames() {
        #expect(RPCCode.permissionDenied.rawValue == 7 && RPCCode.unauthenticated.rawValue == 16)
        #expect(RPCCode.resourceExhausted.description == "RESOURCE_EXHAUSTED")
        #expect(RPCCode(rawValue: 99).description == "CODE_99")
        #expect(RPCError(.notFound, "no such API").description == "NOT_FOUND: no such API")
    }
}
