import Foundation
import Testing
import TollgateProto

/// Every message type against Python's protobuf library: Python writes empty
/// and fully populated random messages, Swift decodes and re-encodes each, and
/// Python checks that what Swift wrote is the message it started from.
@Suite struct InteropTests {
    @Test func everyMessageTypeRoundTripsThroughPython() throws {
        let peer = try PythonPeer()
        let directory = try temporaryDirectory("proto-samples")
        defer { try? FileManager.default.removeItem(at: directory) }
        try peer.run(["samples", peer.protoDirectory, directory.path])

        struct Entry: Decodable { let type: String; let file: String }
        let manifest = try JSONDecoder().decode([Entry].self, from: Data(contentsOf: directory.appendingPathComponent("manifest.json")))
        let covered = Set(manifest.map(\.type))
        let swiftTypes = Set(ProtoRegistry.messageTypes.keys)
        #expect(covered.symmetricDifference(swiftTypes).isEmpty,
                "only Python: \(covered.subtracting(swiftTypes).sorted()); only Swift: \(swiftTypes.subtracting(covered).sorted()) (run make proto)")

        for entry in manifest {
            let type = try #require(ProtoRegistry.messageTypes[entry.type], "no Swift type for \(entry.type)")
            let bytes = try [UInt8](Data(contentsOf: directory.appendingPathComponent(entry.file)))
            let reencoded = try roundTrip(type, bytes)
            try Data(reencoded).write(to: directory.appendingPathComponent(entry.file + ".swift.bin"))
        }
        let summary = try peer.run(["check", peer.protoDirectory, directory.path])
        #expect(summary.contains("0 failed"), "\(summary)")
    }

    /// Decodes with Swift, re-encodes, and checks Swift's own round trip is stable.
    private func roundTrip<Message: ProtoMessage>(_ type: Message.Type, _ bytes: [UInt8]) throws -> [UInt8] {
        let decoded = try Message(serializedBytes: bytes)
        let encoded = try decoded.serializedBytes()
        #expect(try Message(serializedBytes: encoded) == decoded, "\(Message.protoName) does not survive a Swift round trip")
        return encoded
    }
}

/// Representative records across the language boundary with known values:
/// Swift encodes and Python decodes (checked through Python's JSON form), and
/// Python encodes from JSON and Swift decodes.
@Suite struct RepresentativeInteropTests {
    private func pythonJSON<Message: ProtoMessage>(of message: Message, peer: PythonPeer) throws -> [String: Any] {
        let directory = try temporaryDirectory("proto-json")
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("message.bin")
        try Data(message.serializedBytes()).write(to: file)
        let json = try peer.run(["to-json", peer.protoDirectory, Message.protoName, file.path])
        return try #require(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    }

    private func fromPython<Message: ProtoMessage>(_ type: Message.Type, json: String, peer: PythonPeer) throws -> Message {
        let directory = try temporaryDirectory("proto-json")
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("in.json"), output = directory.appendingPathComponent("out.bin")
        try Data(json.utf8).write(to: input)
        try peer.run(["from-json", peer.protoDirectory, Message.protoName, input.path, output.path])
        return try Message(serializedBytes: [UInt8](Data(contentsOf: output)))
    }

    @Test func pythonReadsSwiftsApiRecord() throws {
        let peer = try PythonPeer()
        let json = try pythonJSON(of: Fixtures.api(), peer: peer)
        #expect(json["name"] as? String == "PizzaShack")
        #expect(json["description"] as? String == "Order pizza — and track it. 🍕")
        #expect(json["lifecycle_state"] as? String == "LIFECYCLE_STATE_PUBLISHED")
        #expect(json["max_production_tps"] as? Int == 0, "presence of a zero value")
        #expect(json["max_sandbox_tps"] == nil)
        let resources = try #require(json["resources"] as? [[String: Any]])
        #expect(resources.count == 10)
        #expect(resources[3]["uri_template"] as? String == "/menu/3/{itemId}")
        #expect(resources[3]["scope"] as? String == "order:write")
        let production = try #require(json["production_endpoints"] as? [String: Any])
        let failover = try #require(production["failover"] as? [String: Any])
        #expect((failover["primary"] as? [String: Any])?["read_timeout_ms"] as? String == "30000")
        #expect(json["transports"] as? [String] == ["TRANSPORT_SCHEME_HTTPS", "TRANSPORT_SCHEME_HTTP"])
    }

    @Test func pythonReadsSwiftsTokenAndEvent() throws {
        let peer = try PythonPeer()
        let token = try pythonJSON(of: Fixtures.token(), peer: peer)
        let hash = try #require(token["token_hash"] as? String)
        #expect(Data(base64Encoded: hash).map([UInt8].init) == Fixtures.token().tokenHash)
        #expect(token["expires_at_unix_ms"] as? String == "1764205200000")
        #expect(token["scopes"] as? [String] == ["default", "am_application_scope"])
        #expect(token["state"] as? String == "TOKEN_STATE_ACTIVE")

        let event = try pythonJSON(of: Fixtures.usageEvent(), peer: peer)
        #expect(event["request_timestamp_unix_ms"] as? String == "-1")
        #expect(event["response_size_bytes"] as? String == "18446744073709551615")
        #expect((event["fault"] as? [String: Any])?["error_code"] as? Int == 101503)
        #expect(event["throttled"] as? Bool == true)
    }

    @Test func swiftReadsPythonsRecords() throws {
        let peer = try PythonPeer()
        let api = try fromPython(Api.self, json: """
            {"name": "Weather", "version": "2.1", "context": "/weather", "tags": ["a", "b"],
             "lifecycle_state": "LIFECYCLE_STATE_DEPRECATED", "max_sandbox_tps": 25,
             "resources": [{"uri_template": "/now", "verb": "HTTP_VERB_GET", "auth_type": "RESOURCE_AUTH_TYPE_NONE"}],
             "sandbox_endpoints": {"single": {"url": "http://sandbox", "read_timeout_ms": "5000"}}}
            """, peer: peer)
        #expect(api.name == "Weather" && api.version == "2.1" && api.tags == ["a", "b"])
        #expect(api.lifecycleState == .deprecated)
        #expect(api.maxSandboxTps == 25 && api.maxProductionTps == nil)
        #expect(api.resources == [ApiResource(uriTemplate: "/now", verb: .get, authType: ResourceAuthType.none)])
        #expect(api.sandboxEndpoints?.strategy == .single(Endpoint(url: "http://sandbox", readTimeoutMs: 5000)))

        let token = try fromPython(OAuthToken.self, json: """
            {"token_hash": "AAEC/w==", "kind": "TOKEN_KIND_REFRESH", "expires_at_unix_ms": "0", "scopes": ["x"]}
            """, peer: peer)
        #expect(token.tokenHash == [0, 1, 2, 255])
        #expect(token.kind == .refresh && token.expiresAtUnixMs == 0 && token.scopes == ["x"])

        let event = try fromPython(UsageEvent.self, json: """
            {"correlation_id": "py-1", "response_code": 429, "throttled": true, "fault": {"error_message": "throttled"}}
            """, peer: peer)
        #expect(event.correlationId == "py-1" && event.responseCode == 429 && event.throttled)
        #expect(event.fault == UsageFault(errorMessage: "throttled"))
    }
}
