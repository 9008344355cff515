import RPCCore
import Testing
@testable import TollgatePublisher
import YAMLKit

@Suite struct YAMLTests {
    /// Strings a careless writer would let a reader turn into something else.
    static let awkward = [
        "", " leading", "trailing ", "yes", "No", "on", "OFF", "y", "~", "null", "true", "200", "1.0", "3.0.3", "-1", ".5", "1e3", "0x1F",
        "0o17", "1_000", ".inf", "-.Inf", ".NaN", "2001-12-14", "12:30", "a: b", "a #b", "#/components/schemas/Pet", "- item", "? key",
        "[x]", "{y}", "&anchor", "*alias", "!tag", "%directive", "@at", "`tick", "'single'", "\"double\"", "multi\nline", "tab\there",
        "bell\u{07}", "del\u{7F}", "c1\u{85}", "bom\u{FEFF}", "Ünïcødé ✓", "/pets/{petId}", "application/json", "Application & Application User",
    ]

    @Test func awkwardStringsSurviveAYAMLRoundTrip() throws {
        let members = Self.awkward.enumerated().map { (key: "k\($0.offset) \($0.element)", value: DocumentValue.string($0.element)) }
        let document = DocumentValue.object(members + [
            (key: "list", value: .array(Self.awkward.map(DocumentValue.string) + [.array([]), .object([]), .array([.int(1), .array([.bool(false)])])])),
            (key: "nested", value: .object([(key: "n", value: .null), (key: "d", value: .double(2.5)), (key: "i", value: .int(-7)),
                                            (key: "deeper", value: .array([.object([(key: "a", value: .string("1")), (key: "b", value: .int(1))])]))])),
        ])
        let yaml = DocumentWriter.yaml(document)
        let reread = try DocumentTree.parse(yaml)
        #expect(DocumentWriter.json(reread) == DocumentWriter.json(document), "\(yaml)")
        // Plain where nothing else could be meant, quoted otherwise.
        #expect(yaml.contains("\n- /pets/{petId}\n") && yaml.contains("\n- \"yes\"\n") && yaml.contains("\n- \"3.0.3\"\n"), "\(yaml)")
    }

    @Test func parserReportsWhereTheProblemIs() {
        do {
            _ = try YAMLParser.parse("a: 1\nb: [1, 2\nc: 3\n")
            Issue.record("accepted an unclosed flow sequence")
        } catch {
            #expect(error.mark?.line == 3 || error.mark?.line == 4, "\(error)")
        }
        #expect(throws: YAMLError.self) { _ = try YAMLParser.parse(String(repeating: "[", count: 100_000)) }
        #expect(throws: YAMLError.self) { _ = try YAMLParser.parse("a: *nowhere") }
    }

    @Test func aliasesExpandWithinABudget() throws {
        // Each level doubles the previous: 2^30 values if expanded naively.
        var text = "l0: &l0 [x, x]\n"
        for level in 1...30 { text += "l\(level): &l\(level) [*l\(level - 1), *l\(level - 1)]\n" }
        #expect(throws: RPCError.self) { _ = try DocumentTree.parse(text) }
        let small = try DocumentTree.parse("base: &b {name: x}\ncopy: *b\n")
        #expect(DocumentWriter.json(small).contains("\"copy\": {\n    \"name\": \"x\""))
    }
}
