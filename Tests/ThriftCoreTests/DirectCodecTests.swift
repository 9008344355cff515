import Testing
import ThriftCore
import TollgateProto

/// The key-validation hot path reads and writes TBinaryProtocol without the
/// generic value model: its results must be exactly those of the generic
/// codec and the typed layer over it.
@Suite struct DirectCodecTests {
    static func genericCall(_ bytes: [UInt8]) throws -> KeyValidationCall.Arguments {
        let message = try ThriftProtocol.binary.decode(bytes).message
        do throws(ThriftMissingFieldError) {
            switch message.name {
            case KeyValidationService.validateKey: return .validateKey(try ValidateKeyArguments(thrift: message.body))
            case KeyValidationService.validateKeyforHandshake: return .validateKeyforHandshake(try ValidateKeyForHandshakeArguments(thrift: message.body))
            case KeyValidationService.getAllURITemplates: return .getAllURITemplates(try GetAllURITemplatesArguments(thrift: message.body))
            default: return .unknownMethod
            }
        } catch {
            return .missing(error)
        }
    }

    @Test func repliesAndCallsAreTheGenericCodecsBytes() throws {
        var refused = APIKeyValidationInfoDTO()
        refused.authorized = false
        refused.validationStatus = 900_901
        for dto in [GoldenBytesTests.sampleDTO, refused, APIKeyValidationInfoDTO()] {
            let result = ThriftResult.success(dto)
            #expect(result.binaryReply(method: "validateKey", sequenceID: 7)
                == ThriftProtocol.binary.encode(ThriftMessage(name: "validateKey", type: .reply, sequenceID: 7, body: result.thrift { .structure($0.thrift) })))
        }
        let declared = ThriftResult<APIKeyValidationInfoDTO>.keyManagementException(KeyValidationService.invalidSessionMessage)
        #expect(declared.binaryReply(method: "validateKeyforHandshake", sequenceID: -3)
            == ThriftProtocol.binary.encode(ThriftMessage(name: "validateKeyforHandshake", type: .reply, sequenceID: -3,
                                                          body: declared.thrift { .structure($0.thrift) })))
        var call = GoldenBytesTests.call
        for domain in [nil, "example.com"] {
            call.clientDomain = domain
            #expect(call.binaryCall(sequenceID: 12)
                == ThriftProtocol.binary.encode(ThriftMessage(name: "validateKey", type: .call, sequenceID: 12, body: call.thrift)))
        }
    }

    @Test func callsWithRandomExtraFieldsDecodeAsTheTypedLayerReadsThem() throws {
        var generator = ValueGenerator(random: SplitMix64(state: 15))
        let names = [KeyValidationService.validateKey, KeyValidationService.validateKeyforHandshake, KeyValidationService.getAllURITemplates, "other"]
        for round in 0..<500 {
            // The real arguments, some dropped or of another type, among random fields.
            var fields = GoldenBytesTests.call.thrift.fields.filter { _ in round % 7 != 0 || Bool.random(using: &generator.random) }
            fields += generator.structure(depth: 3).fields
            fields.shuffle(using: &generator.random)
            let bytes = ThriftProtocol.binary.encode(ThriftMessage(name: names[round % names.count], type: .call, sequenceID: Int32(round),
                                                                   body: ThriftStruct(fields)))
            let (direct, length) = try KeyValidationCall.decodeBinary(bytes[...])
            #expect(length == bytes.count)
            #expect(direct.arguments == (try Self.genericCall(bytes)))
            #expect(direct.header == ThriftMessageHeader(name: names[round % names.count], type: .call, sequenceID: Int32(round)))
            #expect(try ThriftProtocol.binaryMessageLength(bytes[...]).length == bytes.count)
            // Every truncation is `truncated`, as for the generic decoder.
            let cut = Int.random(in: 0..<bytes.count, using: &generator.random)
            #expect(throws: ThriftDecodingError.truncated) { try KeyValidationCall.decodeBinary(bytes[..<cut]) }
        }
    }

    @Test func repliesWithRandomExtraFieldsDecodeAsTheTypedLayerReadsThem() throws {
        var generator = ValueGenerator(random: SplitMix64(state: 16))
        for round in 0..<500 {
            var dto = GoldenBytesTests.sampleDTO.thrift.fields.filter { _ in Bool.random(using: &generator.random) }
            dto += generator.structure(depth: 2).fields
            dto.shuffle(using: &generator.random)
            var result = [ThriftField(0, .structure(ThriftStruct(dto)))]
            if round % 3 == 0 { result = [ThriftField(1, .structure(ThriftStruct([ThriftField(1, .text("refused"))])))] }
            if round % 5 == 0 { result = generator.structure(depth: 3).fields }
            let type: ThriftMessageType = round % 11 == 0 ? .exception : .reply
            let message = ThriftMessage(name: "validateKey", type: type, sequenceID: 1, body: ThriftStruct(result))
            let bytes = ThriftProtocol.binary.encode(message)
            let expected: ThriftReply<APIKeyValidationInfoDTO>
            if type == .exception {
                expected = .exception(ThriftApplicationException(thrift: message.body))
            } else {
                do throws(ThriftApplicationException) {
                    expected = .result(try ThriftResult(thrift: message.body, method: "validateKey") { value -> APIKeyValidationInfoDTO? in
                        if case .structure(let s) = value { APIKeyValidationInfoDTO(thrift: s) } else { nil }
                    })
                } catch {
                    expected = .exception(error)
                }
            }
            #expect(try ThriftReply<APIKeyValidationInfoDTO>.decodeBinary(bytes[...], method: "validateKey").reply == expected)
        }
    }

    @Test func limitsAndMalformedInputAreRefusedAsByTheGenericDecoder() throws {
        let limits = ThriftLimits(maxStringLength: 16, maxContainerCount: 4, maxDepth: 3, maxMessageSize: 1024)
        var nested = ThriftStruct([ThriftField(1, .i32(1))])
        for _ in 0..<4 { nested = ThriftStruct([ThriftField(9, .structure(nested))]) }
        let bodies = [
            ThriftStruct([ThriftField(1, .text(String(repeating: "x", count: 17)))]),
            ThriftStruct([ThriftField(20, .list(.i32, (0..<5).map { .i32($0) }))]),
            ThriftStruct([ThriftField(20, .map(key: .string, value: .i8, [ThriftMapEntry(key: .text("long enough to refuse"), value: .i8(1))]))]),
            nested,
        ]
        for body in bodies {
            let bytes = ThriftProtocol.binary.encode(ThriftMessage(name: "validateKey", type: .call, sequenceID: 1, body: body))
            let generic = try #require(#expect(throws: ThriftDecodingError.self) { try ThriftProtocol.binary.decode(bytes, limits: limits) })
            #expect(throws: generic) { try KeyValidationCall.decodeBinary(bytes[...], limits: limits) }
            #expect(throws: generic) { try ThriftProtocol.binaryMessageLength(bytes[...], limits: limits) }
        }
        var bad = ThriftProtocol.binary.encode(ThriftMessage(name: "validateKey", type: .call, sequenceID: 1, body: ThriftStruct([ThriftField(30, .i32(1))])))
        bad[bad.count - 8] = 0x63  // a field type code that is none
        #expect(throws: ThriftDecodingError.malformed("field type code 99")) { try KeyValidationCall.decodeBinary(bad[...]) }
    }
}
