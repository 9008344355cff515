import Testing
import TollgateProto

/// `withSerializedBytes` lends the encoded bytes without building an array.
@Suite struct SerializeIntoTests {
    private struct Stop: Error, Equatable {}

    @Test func lentBytesAreTheSerializedBytes() throws {
        let api = Fixtures.api()
        let bytes = try api.serializedBytes()
        #expect(try api.withSerializedBytes { Array($0) } == bytes)
        #expect(try api.serializedSize() == bytes.count)
        let event = Fixtures.usageEvent()
        #expect(try event.withSerializedBytes { Array($0) } == event.serializedBytes())
        for type in ProtoRegistry.messageTypes.values {
            try checkEmpty(type)
        }
    }

    private func checkEmpty<Message: ProtoMessage>(_ type: Message.Type) throws {
        #expect(try Message().withSerializedBytes { $0.count } == 0, "\(Message.protoName)")
        #expect(try Message().serializedSize() == 0, "\(Message.protoName)")
    }

    @Test func encodingInsideTheBodyLeavesTheLentBytesAlone() throws {
        let api = Fixtures.api(), token = Fixtures.token()
        let expected = try api.serializedBytes()
        let (outer, inner) = try api.withSerializedBytes { lent in
            // The body may encode (and decode) other messages meanwhile.
            let inner = try token.serializedBytes()
            _ = try OAuthToken(serializedBytes: inner)
            return (Array(lent), inner)
        }
        #expect(outer == expected)
        #expect(try OAuthToken(serializedBytes: inner) == token)
    }

    @Test func theBodysErrorComesThrough() {
        #expect(throws: Stop()) {
            try Fixtures.api().withSerializedBytes { (_: UnsafeRawBufferPointer) throws(Stop) -> Int in throw Stop() }
        }
    }
}

/// Large messages keep their fields in shared storage, copied on write;
/// they must still behave exactly like plain values.
@Suite struct CopyOnWriteTests {
    @Test func largeMessagesAreOneReferenceWide() {
        #expect(MemoryLayout<Api>.size == MemoryLayout<AnyObject>.size)
        #expect(MemoryLayout<UsageEvent>.size == MemoryLayout<AnyObject>.size)
        #expect(MemoryLayout<DeployedApi>.size == MemoryLayout<AnyObject>.size)
        #expect(MemoryLayout<ApiResource>.size > MemoryLayout<AnyObject>.size, "small messages stay inline")
    }

    @Test func copiesAreIndependent() {
        var original = Fixtures.api()
        var copy = original
        copy.name = "Changed"
        copy.resources.append(ApiResource(uriTemplate: "/more"))
        copy.tags[0] = "drinks"
        copy.maxSandboxTps = 5
        #expect(original.name == "PizzaShack" && original.resources.count == 10 && original.tags[0] == "food" && original.maxSandboxTps == nil)
        #expect(copy.name == "Changed" && copy.resources.count == 11 && copy.tags[0] == "drinks" && copy.maxSandboxTps == 5)

        // The other way round, and through a nested copy-on-write message.
        let before = original
        original.description = ""
        #expect(before.description == Fixtures.api().description)
        var deployed = DeployedApi(api: before, gatewayContext: "/pizzashack/1.0.0")
        let shared = deployed
        deployed.api?.tags.removeAll()
        deployed.gatewayContext = "/other"
        #expect(shared.api?.tags == before.tags && shared.gatewayContext == "/pizzashack/1.0.0")
        #expect(deployed.api?.tags == [] && before.tags.count == 3)

        // Defaults share one storage until written.
        var a = Api(), b = Api()
        a.id = "a"
        #expect(b.id == "" && Api().id == "")
        b.id = "b"
        #expect(a.id == "a" && b.id == "b")
    }

    @Test func copiesChangedOnOtherTasksStayIndependent() async {
        let original = Fixtures.api()
        let names = await withTaskGroup(of: String.self) { group in
            for index in 0..<8 {
                group.addTask {
                    var mine = original
                    for step in 0..<200 { mine.resources[step % 10].scope = "s\(index)-\(step)" }
                    mine.name = "task \(index)"
                    return mine.name + " " + mine.resources[9].scope
                }
            }
            return await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(names.count == 8)
        #expect(original == Fixtures.api())
    }

    @Test func equalityAndHashingCompareFieldValues() {
        let one = Fixtures.api(), two = Fixtures.api()  // separate storage, same values
        #expect(one == two)
        #expect(one.hashValue == two.hashValue)
        #expect(Set([one, two]).count == 1)

        var changed = two
        changed.updatedAtUnixMs += 1
        #expect(changed != one)
        #expect(Set([one, two, changed]).count == 2)
        changed.updatedAtUnixMs -= 1
        #expect(changed == one && changed.hashValue == one.hashValue)

        #expect(Api() == Api(id: ""))
        #expect(Api() != Api(id: "x"))
        #expect(DeployedApi(api: one) == DeployedApi(api: two))
        #expect(DeployedApi(api: one) != DeployedApi(api: changed.withName("other")))
    }
}

private extension Api {
    func withName(_ name: String) -> Api {
        var copy = self
        copy.name = name
        return copy
    }
}
