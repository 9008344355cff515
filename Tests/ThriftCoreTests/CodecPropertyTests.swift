import Testing
import ThriftCore
import TollgateProto

/// A seeded generator, so a failing case can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random values of every Thrift type, nested up to `depth`.
struct ValueGenerator {
    var random: SplitMix64

    mutating func type(allowContainers: Bool) -> ThriftType {
        let types: [ThriftType] = allowContainers ? ThriftType.allCases : [.bool, .i8, .double, .i16, .i32, .i64, .string]
        return types.randomElement(using: &random)!
    }

    mutating func value(_ type: ThriftType, depth: Int) -> ThriftValue {
        switch type {
        case .bool: return .bool(Bool.random(using: &random))
        case .i8: return .i8(Int8.random(in: .min ... .max, using: &random))
        case .i16: return .i16(Int16.random(in: .min ... .max, using: &random))
        case .i32: return .i32(Int32.random(in: .min ... .max, using: &random))
        case .i64: return .i64(Int64.random(in: .min ... .max, using: &random))
        // Any finite double (NaN is not equal to itself).
        case .double: return .double(Double(bitPattern: UInt64.random(in: 0 ... 0x7FEF_FFFF_FFFF_FFFF, using: &random)) * (Bool.random(using: &random) ? 1 : -1))
        case .string: return .string((0..<Int.random(in: 0...20, using: &random)).map { _ in UInt8.random(in: 0 ... 255, using: &random) })
        case .structure: return .structure(structure(depth: depth - 1))
        case .list, .set:
            let element = self.type(allowContainers: depth > 1)
            let count = Int.random(in: 0...(Bool.random(using: &random) ? 3 : 20), using: &random)
            let elements = (0..<count).map { _ in value(element, depth: depth - 1) }
            return type == .list ? .list(element, elements) : .set(element, elements)
        case .map:
            let count = Int.random(in: 0...4, using: &random)
            // An empty map's types are not on the compact wire; readers say string.
            guard count > 0 else { return .map(key: .string, value: .string, []) }
            let key = self.type(allowContainers: false), value = self.type(allowContainers: depth > 1)
            return .map(key: key, value: value, (0..<count).map { _ in ThriftMapEntry(key: self.value(key, depth: 0), value: self.value(value, depth: depth - 1)) })
        }
    }

    mutating func structure(depth: Int) -> ThriftStruct {
        var id: Int16 = Int16.random(in: -5...3, using: &random)
        var fields: [ThriftField] = []
        for _ in 0..<Int.random(in: 0...8, using: &random) {
            // Mostly small steps (the compact delta form), sometimes big ones.
            id &+= Bool.random(using: &random) ? Int16.random(in: 1...3, using: &random) : Int16.random(in: -200...200, using: &random)
            fields.append(ThriftField(id, value(type(allowContainers: depth > 0), depth: depth)))
        }
        return ThriftStruct(fields)
    }

    mutating func message() -> ThriftMessage {
        ThriftMessage(name: ["validateKey", "getAllURITemplates", "authenticate", "", "ünïcode"].randomElement(using: &random)!,
                      type: [.call, .reply, .exception, .oneway].randomElement(using: &random)!,
                      sequenceID: Int32.random(in: .min ... .max, using: &random), body: structure(depth: 3))
    }
}

@Suite struct CodecPropertyTests {
    static let protocols: [ThriftProtocol] = [.binary, .compact]

    @Test(arguments: protocols) func randomMessagesRoundTrip(_ wire: ThriftProtocol) throws {
        var generator = ValueGenerator(random: SplitMix64(state: 15))
        for _ in 0..<2000 {
            let message = generator.message()
            let bytes = wire.encode(message)
            let (decoded, length) = try wire.decode(bytes)
            #expect(length == bytes.count)
            #expect(decoded == message)
            #expect(wire.encode(decoded) == bytes)
        }
    }

    @Test(arguments: protocols) func everyTruncationOfAValidMessageIsAnError(_ wire: ThriftProtocol) {
        var generator = ValueGenerator(random: SplitMix64(state: 1015))
        var messages = (0..<200).map { _ in generator.message() }
        messages.append(ThriftMessage(name: "validateKey", type: .reply, sequenceID: 1,
                                      body: ThriftResult.success(GoldenBytesTests.sampleDTO).thrift { .structure($0.thrift) }))
        for message in messages {
            let bytes = wire.encode(message)
            for end in 0..<bytes.count {
                #expect(throws: ThriftDecodingError.truncated, "\(message.name) cut at \(end) of \(bytes.count)") {
                    _ = try wire.decode(bytes[0..<end])
                }
            }
        }
    }

    /// A newer peer's fields of every type, nested, are skipped by a reader
    /// that does not know them; the known ones read as before.
    @Test(arguments: protocols) func unknownFieldsOfEveryTypeAreSkipped(_ wire: ThriftProtocol) throws {
        var generator = ValueGenerator(random: SplitMix64(state: 77))
        let dto = GoldenBytesTests.sampleDTO
        for round in 0..<200 {
            var extended = dto.thrift
            // Unknown ids after 24 and below 0, of every type, containers nested three deep.
            for (index, type) in ThriftType.allCases.enumerated() {
                extended.fields.append(ThriftField(Int16(100 + index + round), generator.value(type, depth: 3)))
                extended.fields.insert(ThriftField(Int16(-1 - index), generator.value(type, depth: 3)), at: 0)
            }
            // A known id with an unexpected type is skipped too, as libthrift does.
            extended.fields.append(ThriftField(2, .i32(5)))
            let reply = ThriftMessage(name: "validateKey", type: .reply, sequenceID: 9, body: ThriftStruct([ThriftField(0, .structure(extended))]))
            let decoded = try wire.decode(wire.encode(reply)).message
            let read = try #require(decoded.body.structure(0)).fields.filter { $0.id >= 1 && $0.id <= 24 && !($0.id == 2 && $0.value == .i32(5)) }
            #expect(APIKeyValidationInfoDTO(thrift: ThriftStruct(read)) == dto)
            #expect(APIKeyValidationInfoDTO(thrift: try #require(decoded.body.structure(0))).consumerKey == "ck-123")
        }
    }

    @Test func limitsAreCheckedBeforeAllocating() {
        let limits = ThriftLimits(maxStringLength: 100, maxContainerCount: 50, maxDepth: 4, maxMessageSize: 1000)
        // A binary string claiming 2 GB: refused from its length alone.
        let header: [UInt8] = [0x80, 0x01, 0x00, 0x01, 0, 0, 0, 1, 0x78, 0, 0, 0, 1]
        #expect(throws: ThriftDecodingError.limitExceeded("a string of 2147483647 bytes (at most 100)")) {
            _ = try ThriftProtocol.binary.decode(header + [0x0b, 0, 1, 0x7f, 0xff, 0xff, 0xff], limits: limits)
        }
        // A list of a billion i64s.
        #expect(throws: ThriftDecodingError.limitExceeded("a container of 1000000000 elements (at most 50)")) {
            _ = try ThriftProtocol.binary.decode(header + [0x0f, 0, 1, 0x0a, 0x3b, 0x9a, 0xca, 0x00], limits: limits)
        }
        // A negative length.
        #expect(throws: ThriftDecodingError.malformed("negative length -1")) {
            _ = try ThriftProtocol.binary.decode(header + [0x0b, 0, 1, 0xff, 0xff, 0xff, 0xff], limits: limits)
        }
        // Within the count limit but more elements than bytes: waits for more, allocates nothing.
        #expect(throws: ThriftDecodingError.truncated) {
            _ = try ThriftProtocol.binary.decode(header + [0x0f, 0, 1, 0x0a, 0, 0, 0, 40], limits: limits)
        }
        // Nesting: structs in structs beyond the depth limit.
        var nested = ThriftStruct()
        for _ in 0..<10 { nested = ThriftStruct([ThriftField(1, .structure(nested))]) }
        let deep = ThriftMessage(name: "x", type: .call, sequenceID: 1, body: nested)
        for wire in Self.protocols {
            #expect(throws: ThriftDecodingError.limitExceeded("nesting deeper than 4")) { _ = try wire.decode(wire.encode(deep), limits: limits) }
        }
        // Compact: a varint that never ends, and a 5 GB length.
        #expect(throws: ThriftDecodingError.malformed("a varint longer than 5 bytes")) {
            _ = try ThriftProtocol.compact.decode([0x82, 0x21, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], limits: limits)
        }
        #expect(throws: ThriftDecodingError.self) {
            _ = try ThriftProtocol.compact.decode([0x82, 0x21, 0x01, 0xff, 0xff, 0xff, 0xff, 0x1f], limits: limits)
        }
    }

    @Test func malformedInputIsAnErrorNotATrap() {
        let cases: [(ThriftProtocol, [UInt8])] = [
            (.binary, [0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  // version 2
            (.binary, [0x80, 0x01, 0x00, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  // message type 9
            (.binary, [0x80, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0, 1]),  // field type 1
            (.binary, [0x80, 0x01, 0x00, 0x01, 0, 0, 0, 1, 0xff, 0, 0, 0, 1, 0]),  // a name that is not UTF-8
            (.compact, [0x81, 0x21, 0x01, 0x00, 0x00]),  // protocol id
            (.compact, [0x82, 0x22, 0x01, 0x00, 0x00]),  // version 2
            (.compact, [0x82, 0x21, 0x01, 0x00, 0x1d]),  // compact type 13
        ]
        for (wire, bytes) in cases {
            #expect(throws: ThriftDecodingError.self, "\(bytes)") { _ = try wire.decode(bytes) }
        }
        // The old non-strict binary header is read (libthrift's strictRead=false).
        let old: [UInt8] = [0, 0, 0, 1, 0x78, 1, 0, 0, 0, 5, 0]
        #expect((try? ThriftProtocol.binary.decode(old))?.message == ThriftMessage(name: "x", type: .call, sequenceID: 5, body: ThriftStruct()))
    }

    @Test func keyValidationInfoSurvivesTheDTO() {
        var info = GoldenBytesTests.sampleDTO.keyValidationInfo
        #expect(info.authorized && info.keyType == .production && info.subscriptionPolicy == "Gold" && info.applicationPolicy == "Unlimited")
        #expect(info.expiresAtUnixMs == 1_700_000_000_000 + 3_600_000 && info.spikeArrestUnit == .minute && info.stopOnQuotaReach)
        #expect(APIKeyValidationInfoDTO(info).keyValidationInfo == info)
        info.expiresAtUnixMs = nil
        #expect(APIKeyValidationInfoDTO(info).validityPeriod == Int64.max)
        #expect(APIKeyValidationInfoDTO(info).keyValidationInfo.expiresAtUnixMs == nil)
    }
}
