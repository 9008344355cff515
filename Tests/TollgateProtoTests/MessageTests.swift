import Foundation
import Testing
import TollgateProto

@Suite struct MessageTests {
    @Test func representativeRecordsRoundTrip() throws {
        let api = Fixtures.api()
        #expect(try Api(serializedBytes: api.serializedBytes()) == api)
        let token = Fixtures.token()
        #expect(try OAuthToken(serializedBytes: token.serializedBytes()) == token)
        let event = Fixtures.usageEvent()
        #expect(try UsageEvent(serializedBytes: event.serializedBytes()) == event)
    }

    @Test func unsetMessagesEncodeToNothingAndDecodeToDefaults() throws {
        for type in ProtoRegistry.messageTypes.values {
            try checkEmpty(type)
        }
    }

    private func checkEmpty<Message: ProtoMessage>(_ type: Message.Type) throws {
        #expect(try Message().serializedBytes().isEmpty, "\(Message.protoName)")
        #expect(try Message(serializedBytes: [UInt8]()) == Message(), "\(Message.protoName)")
    }

    @Test func presenceDistinguishesZeroFromAbsent() throws {
        var api = Fixtures.api()
        api.maxProductionTps = 0
        api.maxSandboxTps = nil
        let decoded = try Api(serializedBytes: api.serializedBytes())
        #expect(decoded.maxProductionTps == 0)
        #expect(decoded.maxSandboxTps == nil)
    }

    @Test func everyOneofMemberRoundTrips() throws {
        let strategies: [EndpointConfig.Strategy?] = [
            nil,
            .single(Endpoint(url: "http://one")),
            .loadBalanced(LoadBalancedEndpoints(endpoints: [Endpoint(url: "http://a"), Endpoint(url: "http://b")])),
            .failover(FailoverEndpoints(primary: Endpoint(url: "http://p"), secondaries: [])),
            // A member that is present but empty still counts as set.
            .single(Endpoint()),
        ]
        for strategy in strategies {
            let config = EndpointConfig(strategy: strategy)
            #expect(try EndpointConfig(serializedBytes: config.serializedBytes()) == config)
        }
    }

    @Test func unknownEnumNumbersSurvive() throws {
        var token = Fixtures.token()
        token.state = TokenState(rawValue: 77)
        #expect(token.state == .unrecognized(77))
        let decoded = try OAuthToken(serializedBytes: token.serializedBytes())
        #expect(decoded.state.rawValue == 77)
        #expect(decoded.state.protoName == "77")
        #expect(TokenState.revoked.protoName == "TOKEN_STATE_REVOKED")
    }

    /// What a gateway built before a feed frame existed does with it: the
    /// frame's field number is unknown to its schema, so the oneof decodes
    /// as unset (the watcher skips it) and the bytes are kept, not refused.
    /// Field 7 stands in for `caught_up` (3) as an older build sees it.
    @Test func aFeedFrameOfANewerSchemaDecodesAsUnset() throws {
        let caughtUp = DeploymentFeedCaughtUp(revision: 42, heartbeatSeconds: 10)
        let frame = WatchDeploymentsResponse(frame: .caughtUp(caughtUp))
        #expect(try WatchDeploymentsResponse(serializedBytes: frame.serializedBytes()) == frame)
        let payload = caughtUp.serializedBytes()
        let unknownFrame = [0x3A, UInt8(payload.count)] + payload
        let decoded = try WatchDeploymentsResponse(serializedBytes: unknownFrame)
        #expect(decoded.frame == nil)
        #expect(try decoded.serializedBytes() == unknownFrame, "kept as an unknown field")
        // The revocation feed's caught-up fields, to an older build, are an empty batch at head_sequence.
        let heartbeat = WatchRevocationsResponse(reset: false, revocations: [], headSequence: 9, caughtUp: true, heartbeatSeconds: 10)
        #expect(try WatchRevocationsResponse(serializedBytes: heartbeat.serializedBytes()) == heartbeat)
    }

    @Test func truncatedBuffersThrowAndNeverCrash() throws {
        let bytes = try Fixtures.api().serializedBytes()
        var failures = 0
        for length in 0..<bytes.count {
            do {
                _ = try Api(serializedBytes: bytes[0..<length])
            } catch {
                #expect(error.messageType == "tollgate.v1.Api")
                #expect(error.reason == .malformed)
                failures += 1
            }
        }
        // Cutting inside a field must fail; cuts that land between fields
        // decode as a shorter, valid message.
        #expect(failures > bytes.count / 2)
        #expect(throws: ProtoDecodingError.self) { try Api(serializedBytes: bytes.dropLast()) }
    }

    @Test func corruptBuffersThrowWithTheTypeNamed() {
        let cases: [[UInt8]] = [
            [0xFF],  // field number 0 / bad varint start
            [0x0A, 0x05, 0x41],  // length runs past the end
            [0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],  // 11-byte varint
            [0x0F],  // wire type 7 does not exist
            [0x0A, 0x02, 0xC3, 0x28],  // id: invalid UTF-8
        ]
        for bytes in cases {
            do {
                _ = try Api(serializedBytes: bytes)
                Issue.record("decoded corrupt bytes \(bytes)")
            } catch {
                #expect(error.messageType == "tollgate.v1.Api")
                #expect(error.description.contains("tollgate.v1.Api"))
            }
        }
        #expect(throws: ProtoDecodingError(messageType: "tollgate.v1.Api", reason: .invalidUTF8(field: "id"))) {
            try Api(serializedBytes: [0x0A, 0x02, 0xC3, 0x28])
        }
    }

    @Test func randomGarbageNeverCrashes() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? Api(serializedBytes: bytes)
            _ = try? OAuthToken(serializedBytes: bytes)
            _ = try? UsageEvent(serializedBytes: bytes)
        }
    }

    @Test func oversizeBuffersAreRefusedBeforeDecoding() {
        let bytes = [UInt8](repeating: 0, count: ProtoLimits.maxMessageBytes + 1)
        #expect(throws: ProtoDecodingError(messageType: "tollgate.v1.OAuthToken", reason: .tooLarge(size: bytes.count, limit: ProtoLimits.maxMessageBytes))) {
            try OAuthToken(serializedBytes: bytes)
        }
    }

    @Test func serviceDescriptorsListEveryMethod() {
        #expect(PublisherServiceDescriptor.createApi.path == "/tollgate.v1.PublisherService/CreateApi")
        #expect(PublisherServiceDescriptor.watchDeployments.serverStreaming)
        #expect(!PublisherServiceDescriptor.watchDeployments.clientStreaming)
        #expect(Set(ProtoRegistry.methods.map(\.path)).count == ProtoRegistry.methods.count)
        for method in ProtoRegistry.methods {
            #expect(ProtoRegistry.messageTypes[method.inputType] != nil, "\(method) input")
            #expect(ProtoRegistry.messageTypes[method.outputType] != nil, "\(method) output")
        }
    }
}
