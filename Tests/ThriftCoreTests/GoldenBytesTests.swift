import Foundation
import TestSupport
import Testing
import ThriftCore

/// Messages encoded by Apache Thrift's own Python library (code generated
/// by Debian's thrift-compiler from proto/thrift; Tests/Interop/thrift_peer.py
/// `encode`) against the same messages encoded here: byte for byte for
/// TBinaryProtocol, and decodable both ways for TCompactProtocol.
@Suite struct GoldenBytesTests {
    static var python: String { ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"] ?? "/usr/bin/python3" }
    static var peer: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Interop/thrift_peer.py").path
    }

    static func stock(_ mode: String, input: String? = nil) async throws -> [String: Any] {
        let result = try await runTool(python, [peer, mode], input: input.map { Data($0.utf8) }, timeout: .seconds(60))
        try #require(result.status == 0, "thrift_peer.py \(mode): \(result.output)")
        let line = try #require(result.output.split(separator: "\n").last { $0.hasPrefix("{") })
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
    static func bytes(_ hex: String) -> [UInt8] {
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            result.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return result
    }

    /// The DTO thrift_peer.py's `sample_dto` builds.
    static var sampleDTO: APIKeyValidationInfoDTO {
        var dto = APIKeyValidationInfoDTO()
        dto.authorized = true
        dto.subscriber = "alice"
        dto.tier = "Gold"
        dto.type = "PRODUCTION"
        dto.endUserName = "alice@carbon.super"
        dto.applicationName = "web"
        dto.validationStatus = 0
        dto.applicationId = "app-1"
        dto.applicationTier = "Unlimited"
        dto.apiName = "Menu"
        dto.consumerKey = "ck-123"
        dto.apiPublisher = "admin"
        dto.authorizedDomains = ["ALL"]
        dto.scopes = ["read"]
        dto.validityPeriod = 3_600_000
        dto.issuedTime = 1_700_000_000_000
        dto.isContentAware = false
        dto.apiTier = ""
        dto.throttlingDataList = ["api_level_throttling_key"]
        dto.spikeArrestLimit = 0
        dto.subscriberTenantDomain = "carbon.super"
        dto.spikeArrestUnit = "min"
        dto.stopOnQuotaReach = true
        return dto
    }

    static let call = ValidateKeyArguments(context: "/menu/1", version: "1", accessToken: "token-abc", sessionId: "session-1",
                                           requiredAuthenticationLevel: "Any", clientDomain: nil, matchingResource: "/dishes", httpVerb: "GET")

    @Test func binaryCallsAndRepliesAreByteIdenticalToTheStockLibrary() async throws {
        let stock = try await Self.stock("encode")
        let ours: [String: ThriftMessage] = [
            "binary_call": ThriftMessage(name: "validateKey", type: .call, sequenceID: 1, body: Self.call.thrift),
            "binary_reply": ThriftMessage(name: "validateKey", type: .reply, sequenceID: 1,
                                          body: ThriftResult.success(Self.sampleDTO).thrift { .structure($0.thrift) }),
            "binary_refused": ThriftMessage(name: "validateKey", type: .reply, sequenceID: 7,
                                            body: ThriftResult<APIKeyValidationInfoDTO>.keyManagementException(KeyValidationService.invalidSessionMessage)
                                                .thrift { .structure($0.thrift) }),
            "binary_exception": ThriftApplicationException(.unknownMethod, "Invalid method name: 'nope'").message(name: "nope", sequenceID: 3),
        ]
        for (key, message) in ours {
            #expect(Self.hex(ThriftProtocol.binary.encode(message)) == stock[key] as? String, "\(key)")
            // And the stock bytes decode to the same message here.
            let decoded = try ThriftProtocol.binary.decode(Self.bytes(try #require(stock[key] as? String)))
            #expect(decoded.message == message, "\(key)")
        }
        // The research document's first-call header: 80 01 00 01, length 11, "validateKey", seqid 1.
        let call = ThriftProtocol.binary.encode(try #require(ours["binary_call"]))
        #expect(Array(call.prefix(23)) == [0x80, 0x01, 0x00, 0x01, 0, 0, 0, 0x0b] + Array("validateKey".utf8) + [0, 0, 0, 1])
    }

    @Test func compactBodiesDecodeBothWays() async throws {
        let stock = try await Self.stock("encode")
        // Stock bytes → ours.
        let call = try ThriftProtocol.compact.decode(Self.bytes(try #require(stock["compact_call"] as? String))).message
        #expect(call.name == "authenticate" && call.type == .call && call.sequenceID == 1)
        #expect(try AuthenticateArguments(thrift: call.body) == AuthenticateArguments(userName: "admin", password: "secret"))
        let reply = try ThriftProtocol.compact.decode(Self.bytes(try #require(stock["compact_reply"] as? String))).message
        #expect(try ThriftResult<String>(thrift: reply.body, method: "authenticate") { if case .string(let b) = $0 { String(decoding: b, as: UTF8.self) } else { nil } }
                == .success("session-1"))
        let refused = try ThriftProtocol.compact.decode(Self.bytes(try #require(stock["compact_refused"] as? String))).message
        #expect(try ThriftResult<String>(thrift: refused.body, method: "authenticate") { _ in nil } == .declared(id: 1, message: "Invalid User : admin"))
        let dto = try ThriftProtocol.compact.decode(Self.bytes(try #require(stock["compact_dto"] as? String))).message
        #expect(dto.body.structure(0).map(APIKeyValidationInfoDTO.init(thrift:)) == Self.sampleDTO)

        // Ours → stock: the stock library reads what we encode.
        let ourReply = ThriftMessage(name: "authenticate", type: .reply, sequenceID: 1, body: ThriftResult.success("session-1").thrift { .text($0) })
        let ourCall = ThriftMessage(name: "authenticate", type: .call, sequenceID: 1, body: AuthenticateArguments(userName: "admin", password: "secret").thrift)
        let ourDTO = ThriftMessage(name: "validateKey", type: .reply, sequenceID: 1, body: ThriftResult.success(Self.sampleDTO).thrift { .structure($0.thrift) })
        // Compact bytes are fixed by the format, so ours equal the stock ones too.
        #expect(Self.hex(ThriftProtocol.compact.encode(ourCall)) == stock["compact_call"] as? String)
        #expect(Self.hex(ThriftProtocol.compact.encode(ourReply)) == stock["compact_reply"] as? String)
        let request = """
            {"call": ["compact", "\(Self.hex(ThriftProtocol.compact.encode(ourCall)))"],
             "reply": ["compact", "\(Self.hex(ThriftProtocol.compact.encode(ourReply)))"],
             "dto": ["compact", "\(Self.hex(ThriftProtocol.compact.encode(ourDTO)))"]}
            """
        let read = try await Self.stock("decode", input: request)
        let readCall = try #require(read["call"] as? [String: Any])
        #expect((readCall["body"] as? [String: String]) == ["userName": "admin", "password": "secret"])
        #expect(((read["reply"] as? [String: Any])?["body"] as? [String: String]) == ["success": "session-1"])
        let readDTO = try #require(((read["dto"] as? [String: Any])?["body"] as? [String: Any])?["success"] as? [String: Any])
        #expect(readDTO["consumerKey"] as? String == "ck-123" && readDTO["validityPeriod"] as? Int == 3_600_000 && readDTO["stopOnQuotaReach"] as? Bool == true
                && readDTO["scopes"] as? [String] == ["read"] && readDTO["spikeArrestUnit"] as? String == "min")
    }
}
