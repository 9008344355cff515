import Foundation
import Testing
import TollgateProto

/// Records written by a newer schema, read and rewritten by this one: the
/// fields this build does not know must come back out untouched, at every
/// nesting level.
@Suite struct UnknownFieldTests {
    /// Fields a newer `Api` might carry: every wire type, the largest field
    /// number there is, and a length-delimited value with zero bytes.
    static let apiExtras: [[UInt8]] = [
        Wire.varintField(900, 150),
        Wire.fixed32Field(901, 0xDEAD_BEEF),
        Wire.fixed64Field(902, 0x0123_4567_89AB_CDEF),
        Wire.stringField(903, "from a newer schema"),
        Wire.lengthDelimitedField(904, [0, 1, 0]),
        Wire.varintField(536_870_911, 0),
    ]
    static let resourceExtras: [[UInt8]] = [
        Wire.varintField(77, 1),
        // A sub-message of a type this schema lacks: kept as opaque bytes.
        Wire.lengthDelimitedField(78, Wire.stringField(1, "nested") + Wire.varintField(2, 5)),
    ]

    /// A `DeployedApi` as a newer node would write it: unknown fields at the
    /// top (one between known fields, one at the end), in its `Api` and in
    /// one of its resources.
    static func newerDeployedApi() throws -> (bytes: [UInt8], api: [UInt8]) {
        let api = try Fixtures.api().serializedBytes() + apiExtras.joined()
        let resource = try ResolvedResource(uriTemplate: "/menu", verb: .get, throttlingPolicy: "Gold").serializedBytes()
            + resourceExtras.joined()
        let bytes = Wire.lengthDelimitedField(1, api)
            + Wire.stringField(2, "/pizzashack/1.0.0")
            + Wire.varintField(1001, 7)
            + Wire.lengthDelimitedField(4, resource)
            + Wire.fixed64Field(1000, 42)
        return (bytes, api)
    }

    @Test func decodingKeepsUnknownFieldsInWireOrderAtEveryLevel() throws {
        let newer = try Self.newerDeployedApi()
        let decoded = try DeployedApi(serializedBytes: newer.bytes)

        #expect(decoded.unknownFields.map(\.number) == [1001, 1000])
        #expect(decoded.unknownFields.map(\.wireType) == [.varint, .fixed64])
        #expect(decoded.unknownFields.map(\.bytes) == [[7], [42, 0, 0, 0, 0, 0, 0, 0]])

        let api = try #require(decoded.api)
        #expect(api.unknownFields.map(\.number) == [900, 901, 902, 903, 904, 536_870_911])
        #expect(api.unknownFields.map(\.wireType) == [.varint, .fixed32, .fixed64, .lengthDelimited, .lengthDelimited, .varint])
        #expect(api.unknownFields[0].bytes == [0x96, 0x01])
        #expect(api.unknownFields[1].bytes == [0xEF, 0xBE, 0xAD, 0xDE])
        #expect(api.unknownFields[3].bytes == [19] + Array("from a newer schema".utf8))
        #expect(api.unknownFields[4].bytes == [3, 0, 1, 0])

        #expect(decoded.resources.count == 1)
        #expect(decoded.resources[0].unknownFields.map(\.number) == [77, 78])
        #expect(decoded.resources[0].uriTemplate == "/menu")

        // The known fields read as they always did.
        var known = api
        known.unknownFields.removeAll()
        #expect(known == Fixtures.api())
        #expect(api != Fixtures.api(), "unknown fields are part of a message's value")
        // Nothing moved: re-encoding an Api whose unknown fields came last gives its bytes back.
        #expect(try api.serializedBytes() == newer.api)
    }

    @Test func rewritingKnownFieldsKeepsUnknownOnes() throws {
        let newer = try Self.newerDeployedApi()
        var record = try DeployedApi(serializedBytes: newer.bytes)
        let original = record

        // What an older node does: change known fields at each level and write the record back.
        record.gatewayContext = "/renamed/1.0.0"
        record.api?.name = "Renamed"
        record.api?.tags.append("rewritten")
        record.resources[0].uriTemplate = "/changed"
        let rewritten = try record.serializedBytes()

        for extra in Self.apiExtras + Self.resourceExtras + [Wire.varintField(1001, 7), Wire.fixed64Field(1000, 42)] {
            #expect(rewritten.contains(subsequence: extra), "\(extra) lost")
        }
        let again = try DeployedApi(serializedBytes: rewritten)
        #expect(again == record)
        #expect(again.unknownFields == original.unknownFields)
        #expect(again.api?.unknownFields == original.api?.unknownFields)
        #expect(again.resources[0].unknownFields == original.resources[0].unknownFields)
        #expect(again.api?.name == "Renamed" && again.gatewayContext == "/renamed/1.0.0" && again.resources[0].uriTemplate == "/changed")

        // Dropping them on purpose is possible, and then they are gone.
        var trimmed = again
        trimmed.unknownFields.removeAll()
        trimmed.api?.unknownFields = ProtoUnknownFields()
        let trimmedAgain = try DeployedApi(serializedBytes: trimmed.serializedBytes())
        #expect(trimmedAgain.unknownFields.isEmpty && trimmedAgain.api?.unknownFields.isEmpty == true)
        #expect(trimmedAgain.resources[0].unknownFields == original.resources[0].unknownFields)
    }

    @Test func unknownFieldsSurviveInAOneofMember() throws {
        let endpoint = try Endpoint(url: "http://one").serializedBytes() + Wire.varintField(99, 1)
        let config = Wire.lengthDelimitedField(1, endpoint)  // EndpointConfig.single
        let decoded = try EndpointConfig(serializedBytes: config + Wire.stringField(98, "x"))
        guard case .single(let single)? = decoded.strategy else {
            Issue.record("strategy \(String(describing: decoded.strategy))")
            return
        }
        #expect(single.unknownFields.map(\.number) == [99])
        #expect(decoded.unknownFields.map(\.number) == [98])
        #expect(try EndpointConfig(serializedBytes: decoded.serializedBytes()) == decoded)
    }

    @Test func pythonKeepsTheUnknownFieldsSwiftWrites() throws {
        let peer = try PythonPeer()
        let directory = try temporaryDirectory("proto-unknown")
        defer { try? FileManager.default.removeItem(at: directory) }
        var record = try DeployedApi(serializedBytes: Self.newerDeployedApi().bytes)
        record.api?.version = "2.0.0"
        let swiftFile = directory.appendingPathComponent("swift.bin"), pythonFile = directory.appendingPathComponent("python.bin")
        try Data(record.serializedBytes()).write(to: swiftFile)

        let report = try peer.run(["unknown", peer.protoDirectory, DeployedApi.protoName, swiftFile.path, pythonFile.path])
        let seen = try #require(try JSONSerialization.jsonObject(with: Data(report.utf8)) as? [String: [Int]], "\(report)")
        #expect(seen == ["": [1001, 1000], "api": [900, 901, 902, 903, 904, 536_870_911], "resources[0]": [77, 78]])

        // And what Python writes back, Swift reads with every field in place.
        let fromPython = try DeployedApi(serializedBytes: [UInt8](Data(contentsOf: pythonFile)))
        #expect(fromPython == record)
    }
}
