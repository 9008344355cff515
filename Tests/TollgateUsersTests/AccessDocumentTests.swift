import Foundation
import RPCCore
import Testing
import TollgateProto
import TollgateServices

/// docs/rpc-protocol.md §13 lists which callers each method accepts; the
/// list must be the access table the server enforces, row for row.
@Suite struct AccessDocumentTests {
    static let document = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/rpc-protocol.md")

    /// The callers a rule admits, in the document's words.
    static func callers(_ rule: AccessRule) -> [String] {
        switch rule {
        case .anyone: ["anyone, no identity needed"]
        case .signedIn: ["any signed-in user"]
        case .permission(let path): ["a user holding `\(path)`"]
        case .node(let roles): [roles.isEmpty ? "any cluster node" : "a node with role " + roles.sorted().map { "`\($0)`" }.joined(separator: " or ")]
        case .operatorCertificate: ["any admin certificate from the cluster CA"]
        case .either(let first, let second): callers(first) + callers(second)
        }
    }

    static var expectedTable: String {
        let rows = AccessTable.rules.map { method, rule in "| `\(method.path)` | \(callers(rule).joined(separator: "; ")) |" }.sorted()
        return (["| method | accepted callers |", "|---|---|"] + rows).joined(separator: "\n")
    }

    @Test func theDocumentListsTheAccessTable() throws {
        let text = try String(contentsOf: Self.document, encoding: .utf8)
        let begin = try #require(text.range(of: "<!-- access-begin -->"))
        let end = try #require(text.range(of: "<!-- access-end -->"))
        let documented = text[begin.upperBound..<end.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(documented == Self.expectedTable, "docs/rpc-protocol.md §13 should hold:\n\(Self.expectedTable)")
    }
}
