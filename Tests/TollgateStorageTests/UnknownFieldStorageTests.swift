import LMDBKit
import Testing
import TollgateProto
import TollgateStorage

/// Nodes of different versions share LMDB environments: a record written by
/// a newer node and rewritten by an older one must keep the newer fields.
@Suite struct UnknownFieldStorageTests {
    /// Protobuf wire bytes of fields the `Api` schema lacks: a string field
    /// 900 and a varint field 901; and for `ApiResource`, a varint field 60.
    static let apiExtras: [UInt8] = [0xA2, 0x38, 0x05] + Array("newer".utf8) + [0xA8, 0x38, 0x2A]
    static let resourceExtras: [UInt8] = [0xE0, 0x03, 0x01]

    @Test func anOlderNodeRewritingARecordKeepsANewerNodesFields() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            let environment = db.database.environment
            let records = try environment.openDatabase("apis")
            let key = Key(.string("1")).bytes
            try environment.write { txn in
                try db.apis.insert(api("1", name: "Pets", tags: ["animals"]), in: &txn)
            }

            // The newer node's write: the same record plus its own fields,
            // one at the top level and one inside a resource (field 30).
            let stored = try #require(try environment.read { try $0.get(key, in: records) })
            let resource = try ApiResource(uriTemplate: "/pets", verb: .get).serializedBytes() + Self.resourceExtras
            let newer = stored + [0xF2, 0x01, UInt8(resource.count)] + resource + Self.apiExtras
            try environment.write { txn in try txn.put(newer, forKey: key, in: records) }

            // The older node reads it through the typed table, changes a known field, and writes it back.
            var record = try #require(try db.api(id: "1"))
            #expect(record.unknownFields.map(\.number) == [900, 901])
            #expect(record.resources.map(\.uriTemplate) == ["/pets"])
            record.name = "Animals"
            record.resources[0].verb = .post
            try environment.write { txn in _ = try db.apis.put(record, in: &txn) }

            // The stored bytes still carry the newer fields, at both levels.
            let rewritten = try #require(try environment.read { try $0.get(key, in: records) })
            #expect(rewritten != newer)
            #expect(rewritten.contains(subsequence: Self.apiExtras))
            #expect(rewritten.contains(subsequence: Self.resourceExtras))
            let decoded = try Api(serializedBytes: rewritten)
            #expect(decoded.name == "Animals" && decoded.resources.first?.verb == .post)
            #expect(decoded.unknownFields == record.unknownFields)
            #expect(decoded.resources.first?.unknownFields.map(\.number) == [60])
            // The indexes followed the rename as usual.
            #expect(try db.api(name: "Animals", version: "1.0", tenant: "carbon.super")?.unknownFields.count == 2)
            #expect(try db.api(name: "Pets", version: "1.0", tenant: "carbon.super") == nil)
        }
    }

    @Test func aRecordThatCannotBeEncodedIsRefusedAndChangesNothing() throws {
        try withDataDirectory { dir in
            let db = try ApiManagerDatabase.open(in: dir)
            #expect(throws: ProtoEncodingError(messageType: "tollgate.v1.Api", reason: .nulInString(field: "name"))) {
                try db.database.environment.write { txn in try db.apis.insert(api("1", name: "Pe\u{0}ts"), in: &txn) }
            }
            #expect(try db.api(id: "1") == nil)
            #expect(try db.database.environment.read { try db.apis.count(in: $0) } == 0)
        }
    }
}
