import RPCCore
import TollgateProto
import YAMLKit

/// What an OpenAPI 3.x or Swagger 2.0 document says about an API.
struct ImportedDefinition: Sendable {
    var openapiVersion: String
    var format: DefinitionFormat
    var title: String
    var version: String
    var description: String
    var tags: [String]
    var resources: [ApiResource]
    var scopes: [ApiScope]
    var warnings: [String]
    /// The absolute http(s) URLs of the document's servers (Swagger: schemes, host and
    /// basePath), variables filled with their defaults: endpoint suggestions.
    var servers: [String] = []
}

/// A parsed definition: JSON's data model with mapping order kept, so an
/// export lists paths, operations and schemas the way their author wrote them.
indirect enum DocumentValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([DocumentValue])
    case object([(key: String, value: DocumentValue)])

    subscript(key: String) -> DocumentValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    var members: [(key: String, value: DocumentValue)]? {
        if case .object(let members) = self { return members }
        return nil
    }

    var elements: [DocumentValue]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Any scalar as text: `version: 1.0` is a number to YAML but a version string to OpenAPI.
    var text: String? {
        switch self {
        case .string(let string): return string
        case .int(let int): return String(int)
        case .double(let double): return double.description
        case .bool(let bool): return bool ? "true" : "false"
        case .null, .array, .object: return nil
        }
    }

    /// Order matters: an export is meant to list members as its source did.
    static func == (left: DocumentValue, right: DocumentValue) -> Bool {
        switch (left, right) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.int(let a), .int(let b)): return a == b
        case (.double(let a), .double(let b)): return a == b || (a.isNaN && b.isNaN)
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// Removes the member named `key`, if there is one.
    mutating func remove(_ key: String) {
        guard case .object(var members) = self else { return }
        members.removeAll { $0.key == key }
        self = .object(members)
    }

    /// Replaces the member named `key`, or appends it; does nothing to a non-object.
    mutating func set(_ key: String, _ value: DocumentValue) {
        guard case .object(var members) = self else { return }
        if let index = members.firstIndex(where: { $0.key == key }) {
            members[index].value = value
        } else {
            members.append((key: key, value: value))
        }
        self = .object(members)
    }
}

/// Reads YAML (and so JSON, which YAML's flow style covers) into ``DocumentValue``.
enum DocumentTree {
    /// What a publisher accepts unless its configuration says otherwise (`max_definition_bytes`).
    static let defaultMaxBytes = 2 << 20
    /// The most `max_definition_bytes` may allow: an import request, and the response that
    /// echoes the stored definition beside the API, must each fit in one 4 MiB RPC frame.
    static let largestMaxBytes = 3_670_016
    static let maxDepth = 64
    /// Aliases are expanded into copies, so a small document could otherwise grow without bound.
    static let maxValues = 1_000_000

    static func parse(_ text: String, maxBytes: Int = defaultMaxBytes) throws(RPCError) -> DocumentValue {
        guard text.utf8.count <= maxBytes else {
            throw RPCError(.invalidArgument, "the definition is \(mebibytes(text.utf8.count)); this node accepts at most \(mebibytes(maxBytes)): "
                + "raise max_definition_bytes in the [publisher] section of the publisher node's configuration (at most \(mebibytes(largestMaxBytes)))")
        }
        let root: YAMLNode?
        do {
            root = try YAMLParser.parse(text, maxDepth: maxDepth)
        } catch {
            throw RPCError(.invalidArgument, "the definition is not valid YAML or JSON: \(error)")
        }
        guard let root else { throw RPCError(.invalidArgument, "the definition is empty") }
        var budget = maxValues
        return try value(of: root, depth: 0, budget: &budget)
    }

    static func mebibytes(_ bytes: Int) -> String {
        let tenths = (bytes * 10 + (1 << 20) - 1) >> 20
        return "\(tenths / 10).\(tenths % 10) MiB (\(bytes) bytes)"
    }

    private static func value(of node: YAMLNode, depth: Int, budget: inout Int) throws(RPCError) -> DocumentValue {
        budget -= 1
        guard budget >= 0 else {
            throw RPCError(.invalidArgument, "the definition holds more than \(maxValues) values (aliases counted as copies)")
        }
        guard depth <= maxDepth else {
            throw RPCError(.invalidArgument, "the definition nests deeper than \(maxDepth) levels at \(node.mark)")
        }
        switch node {
        case .scalar(let scalar):
            // Quoted, block and `!!str` scalars are strings; only plain ones are typed by their spelling.
            guard !scalar.isExplicitString else { return .string(scalar.value) }
            return coreSchemaValue(scalar.value) ?? .string(scalar.value)
        case .sequence(let sequence, _):
            var elements: [DocumentValue] = []
            for element in sequence {
                elements.append(try value(of: element, depth: depth + 1, budget: &budget))
            }
            return .array(elements)
        case .mapping(let mapping, _):
            var members: [(key: String, value: DocumentValue)] = []
            var seen: Set<String> = []
            for (key, element) in mapping {
                guard case .scalar(let keyScalar) = key else {
                    throw RPCError(.invalidArgument, "mapping keys must be plain values at \(key.mark)")
                }
                // `200` and `"200"` are the same member name.
                guard seen.insert(keyScalar.value).inserted else {
                    throw RPCError(.invalidArgument, "duplicate key `\(keyScalar.value)` at \(key.mark)")
                }
                let converted = try value(of: element, depth: depth + 1, budget: &budget)
                members.append((key: keyScalar.value, value: converted))
            }
            return .object(members)
        }
    }

    /// The YAML 1.2 core schema's reading of a plain scalar, or nil when it is a string.
    /// YAML 1.1's `yes`, `on` and dates stay strings, as in JSON.
    static func coreSchemaValue(_ text: String) -> DocumentValue? {
        switch text {
        case "", "~", "null", "Null", "NULL": return .null
        case "true", "True", "TRUE": return .bool(true)
        case "false", "False", "FALSE": return .bool(false)
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return .double(.infinity)
        case "-.inf", "-.Inf", "-.INF": return .double(-.infinity)
        case ".nan", ".NaN", ".NAN": return .double(.nan)
        default: break
        }
        for (prefix, radix) in [("0x", 16), ("0o", 8)] where text.hasPrefix(prefix) {
            let digits = text.dropFirst(2)
            guard !digits.isEmpty, digits.allSatisfy({ $0.hexDigitValue.map { $0 < radix } ?? false }) else { return nil }
            return Int(digits, radix: radix).map(DocumentValue.int)
        }
        let bytes = Array(text.utf8)
        var index = bytes.first == UInt8(ascii: "+") || bytes.first == UInt8(ascii: "-") ? 1 : 0
        func digitRun() -> Int {
            let start = index
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") { index += 1 }
            return index - start
        }
        let integerDigits = digitRun()
        if integerDigits > 0, index == bytes.count {
            return Int(text).map(DocumentValue.int) ?? Double(text).map(DocumentValue.double)
        }
        var fractionDigits = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            fractionDigits = digitRun()
        }
        guard integerDigits + fractionDigits > 0 else { return nil }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digitRun() > 0 else { return nil }
        }
        guard index == bytes.count else { return nil }
        return Double(text).map(DocumentValue.double)
    }
}

/// Writes ``DocumentValue`` as JSON or block-style YAML, by hand, for a stable layout.
enum DocumentWriter {
    static func json(_ value: DocumentValue) -> String {
        var output = ""
        writeJSON(value, indent: "", into: &output)
        output += "\n"
        return output
    }

    private static func writeJSON(_ value: DocumentValue, indent: String, into output: inout String) {
        let inner = indent + "  "
        switch value {
        case .null: output += "null"
        case .bool(let bool): output += bool ? "true" : "false"
        case .int(let int): output += String(int)
        // JSON has no infinities or NaN.
        case .double(let double): output += double.isFinite ? double.description : "null"
        case .string(let string): writeJSONString(string, into: &output)
        case .array(let elements):
            guard !elements.isEmpty else { output += "[]"; return }
            output += "[\n"
            for (position, element) in elements.enumerated() {
                if position > 0 { output += ",\n" }
                output += inner
                writeJSON(element, indent: inner, into: &output)
            }
            output += "\n" + indent + "]"
        case .object(let members):
            guard !members.isEmpty else { output += "{}"; return }
            output += "{\n"
            for (position, member) in members.enumerated() {
                if position > 0 { output += ",\n" }
                output += inner
                writeJSONString(member.key, into: &output)
                output += ": "
                writeJSON(member.value, indent: inner, into: &output)
            }
            output += "\n" + indent + "}"
        }
    }

    private static func writeJSONString(_ string: String, into output: inout String) {
        output += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case "\u{08}": output += "\\b"
            case "\u{0C}": output += "\\f"
            // Controls, and the C1 range YAML does not allow unescaped (JSON does not mind either way).
            case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0xFEFF:
                let hex = String(scalar.value, radix: 16, uppercase: true)
                output += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: output.unicodeScalars.append(scalar)
            }
        }
        output += "\""
    }

    /// Block-style YAML. Strings are written plain only when no YAML 1.1 or
    /// 1.2 reader could take them for anything else; all others are
    /// double-quoted with JSON's escapes, which YAML shares.
    static func yaml(_ value: DocumentValue) -> String {
        var output = ""
        switch value {
        case .object(let members) where !members.isEmpty: writeYAMLObject(members, indent: 0, continuing: false, into: &output)
        case .array(let elements) where !elements.isEmpty: writeYAMLArray(elements, indent: 0, into: &output)
        default: output += yamlScalar(value) + "\n"
        }
        return output
    }

    private static func writeYAMLObject(_ members: [(key: String, value: DocumentValue)], indent: Int, continuing: Bool, into output: inout String) {
        for (position, member) in members.enumerated() {
            if position > 0 || !continuing { output += String(repeating: " ", count: indent) }
            output += yamlString(member.key) + ":"
            switch member.value {
            case .object(let inner) where !inner.isEmpty:
                output += "\n"
                writeYAMLObject(inner, indent: indent + 2, continuing: false, into: &output)
            case .array(let elements) where !elements.isEmpty:
                output += "\n"
                writeYAMLArray(elements, indent: indent, into: &output)
            default:
                output += " " + yamlScalar(member.value) + "\n"
            }
        }
    }

    private static func writeYAMLArray(_ elements: [DocumentValue], indent: Int, into output: inout String) {
        for element in elements {
            output += String(repeating: " ", count: indent) + "-"
            switch element {
            case .object(let members) where !members.isEmpty:
                output += " "
                writeYAMLObject(members, indent: indent + 2, continuing: true, into: &output)
            case .array(let inner) where !inner.isEmpty:
                output += "\n"
                writeYAMLArray(inner, indent: indent + 2, into: &output)
            default:
                output += " " + yamlScalar(element) + "\n"
            }
        }
    }

    private static func yamlScalar(_ value: DocumentValue) -> String {
        switch value {
        case .null: "null"
        case .bool(let bool): bool ? "true" : "false"
        case .int(let int): String(int)
        case .double(let double): double.isNaN ? ".nan" : double.isInfinite ? (double < 0 ? "-.inf" : ".inf") : double.description
        case .string(let string): yamlString(string)
        case .array: "[]"
        case .object: "{}"
        }
    }

    /// YAML 1.1's booleans and nulls beyond the core schema's (`yes`, `off`, `~`…).
    static let yaml11Words: Set<String> = ["y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"]
    static let plainCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-./(){}$+=,;")

    private static func yamlString(_ string: String) -> String {
        let plain = !string.isEmpty && string.first.map { $0.isLetter || $0 == "/" || $0 == "_" } == true
            && string.last != " " && string.allSatisfy(plainCharacters.contains)
            && DocumentTree.coreSchemaValue(string) == nil && !yaml11Words.contains(string.lowercased())
            && Double(string) == nil
        guard !plain else { return string }
        var quoted = ""
        writeJSONString(string, into: &quoted)
        return quoted
    }
}

enum OpenAPIDocuments {
    static let operationVerbs: [(key: String, verb: HttpVerb)] = [
        ("get", .get), ("put", .put), ("post", .post), ("delete", .delete), ("options", .options), ("head", .head), ("patch", .patch),
    ]
    /// Path item fields that are not operations and need no word.
    static let pathItemFields: Set<String> = ["parameters", "summary", "description", "servers"]
    /// WSO2's names for the resource auth types, as `x-auth-type` carries them.
    static let authTypeNames: [(name: String, type: ResourceAuthType)] = [
        ("Application & Application User", .`any`), ("Any", .`any`), ("Application", .application),
        ("Application User", .applicationUser), ("None", .none),
    ]
    /// What an export declares when there is no OpenAPI 3 source to keep the version of.
    static let exportVersion = "3.0.3"

    /// Parses YAML or JSON (format .unspecified = detect: text starting with `{` after whitespace is JSON).
    static func parse(_ text: String, format: DefinitionFormat, maxBytes: Int = DocumentTree.defaultMaxBytes) throws(RPCError) -> ImportedDefinition {
        let root = try DocumentTree.parse(text, maxBytes: maxBytes)
        guard root.members != nil else {
            throw RPCError(.invalidArgument, "the definition must be a mapping of OpenAPI fields, not a list or a single value")
        }
        let (specVersion, isSwagger) = try specification(of: root)
        let detected: DefinitionFormat
        if format == .json || format == .yaml {
            detected = format
        } else {
            detected = text.first(where: { !$0.isWhitespace && $0 != "\u{FEFF}" }) == "{" ? .json : .yaml
        }
        var definition = ImportedDefinition(
            openapiVersion: specVersion, format: detected,
            title: root["info"]?["title"]?.text ?? "", version: root["info"]?["version"]?.text ?? "",
            description: root["info"]?["description"]?.text ?? "",
            tags: (root["tags"]?.elements ?? []).compactMap { $0["name"]?.text },
            resources: [], scopes: [], warnings: [])
        definition.servers = serverURLs(root, isSwagger: isSwagger)
        let scopes = importScopes(root, isSwagger: isSwagger, warnings: &definition.warnings)
        definition.scopes = scopes.scopes

        let webhooks = (root["webhooks"]?.members ?? []).map(\.key)
        guard let paths = root["paths"]?.members, !paths.isEmpty else {
            if !webhooks.isEmpty {
                throw RPCError(.invalidArgument, "the definition has webhooks (\(sample(webhooks.map { "`\($0)`" }))) but no `paths`: webhooks are calls "
                    + "the API makes to its consumers, and the gateway routes calls to the API, so there is nothing to import; describe its operations under `paths`")
            }
            throw RPCError(.invalidArgument, "the definition has no `paths`: an API needs at least one resource")
        }
        if !webhooks.isEmpty {
            definition.warnings.append("webhooks (\(sample(webhooks.map { "`\($0)`" }))) are kept in the definition and exported, but the gateway routes only `paths`")
        }
        let rootSecurity = root["security"]
        var skippedPaths: [String] = []
        var severalScopes: [String] = []
        var withoutOperations: [String] = []
        for (path, item) in paths {
            do {
                guard path.hasPrefix("/") else { throw RPCError(.invalidArgument, "it does not start with /") }
                try ApiValidation.checkUriTemplate(path, field: "path")
            } catch {
                skippedPaths.append("`\(path)`")
                continue
            }
            guard let fields = item.members else {
                throw RPCError(.invalidArgument, "path `\(path)` must be a mapping of operations")
            }
            var operations = 0
            for (key, operation) in fields {
                if let verb = operationVerbs.first(where: { $0.key == key })?.verb {
                    let imported = try resource(path: path, key: key, verb: verb, operation: operation, rootSecurity: rootSecurity,
                                                scopes: scopes, isSwagger: isSwagger)
                    if imported.requiredScopes.count > 1 {
                        severalScopes.append("\(key.uppercased()) \(path) (\(imported.requiredScopes.joined(separator: ", ")))")
                    }
                    definition.resources.append(imported.resource)
                    operations += 1
                } else if key == "$ref" {
                    definition.warnings.append("path `\(path)`: `$ref` path items are not followed, so their operations were not imported")
                } else if !pathItemFields.contains(key), !key.hasPrefix("x-") {
                    definition.warnings.append(
                        "path `\(path)`: `\(key)` is not a method the gateway routes (get, put, post, delete, options, head, patch); skipped")
                }
            }
            if operations == 0, fields.allSatisfy({ $0.key != "$ref" }) { withoutOperations.append("`\(path)`") }
        }
        if !withoutOperations.isEmpty {
            definition.warnings.append("\(withoutOperations.count) path\(withoutOperations.count == 1 ? " has" : "s have") no operations "
                + "(\(sample(withoutOperations))): kept in the definition, nothing to route")
        }
        let skipped = skippedPaths.isEmpty ? "" : "\(skippedPaths.count) path\(skippedPaths.count == 1 ? "" : "s") (\(sample(skippedPaths))) "
            + "skipped: not URI templates the gateway can route, such as /menu or /order/{orderId} (a leading /, no spaces, ? or #, balanced braces)"
        guard !definition.resources.isEmpty else {
            throw RPCError(.invalidArgument, "the definition has no operations the gateway can route" + (skipped.isEmpty ? "" : "; \(skipped)"))
        }
        if !skipped.isEmpty { definition.warnings.append(skipped + "; they are not in the API or its export") }
        if !severalScopes.isEmpty {
            definition.warnings.append("\(severalScopes.count) operation\(severalScopes.count == 1 ? " requires" : "s require") several scopes "
                + "(\(sample(severalScopes))); the gateway checks the first of each, and the definition keeps them all")
        }
        if isSwagger { definition.warnings.append(contentsOf: swaggerConversionLosses(root)) }
        return definition
    }

    /// The first few of `items`, and how many more there are.
    static func sample(_ items: [String], limit: Int = 3) -> String {
        items.count <= limit ? items.joined(separator: ", ") : items.prefix(limit).joined(separator: ", ") + " and \(items.count - limit) more"
    }

    private static func specification(of root: DocumentValue) throws(RPCError) -> (version: String, isSwagger: Bool) {
        let supported = "supported are OpenAPI 3.0 and 3.1 (`openapi: 3.1.0`) and Swagger 2.0 (`swagger: \"2.0\"`)"
        if let declared = root["openapi"] {
            guard let version = declared.text, version.hasPrefix("3.0") || version.hasPrefix("3.1") else {
                throw RPCError(.invalidArgument, "`openapi: \(declared.text ?? "…")` is not supported; \(supported)")
            }
            return (version, false)
        }
        if let declared = root["swagger"] {
            guard declared.text == "2.0" else {
                throw RPCError(.invalidArgument, "`swagger: \(declared.text ?? "…")` is not supported; \(supported)")
            }
            return ("2.0", true)
        }
        throw RPCError(.invalidArgument, "the definition declares neither `openapi` nor `swagger`; \(supported)")
    }

    /// Absolute http(s) server URLs, in the document's order, each once.
    static func serverURLs(_ root: DocumentValue, isSwagger: Bool) -> [String] {
        var urls: [String] = []
        if isSwagger {
            guard let host = root["host"]?.text, !host.isEmpty else { return [] }
            let basePath = root["basePath"]?.text ?? ""
            let schemes = (root["schemes"]?.elements ?? []).compactMap(\.text).filter { $0 == "https" || $0 == "http" }
            for scheme in schemes.isEmpty ? ["https"] : schemes { urls.append("\(scheme)://\(host)\(basePath == "/" ? "" : basePath)") }
        } else {
            for server in root["servers"]?.elements ?? [] {
                guard var url = server["url"]?.text else { continue }
                for (name, variable) in server["variables"]?.members ?? [] {
                    if let value = variable["default"]?.text { url = url.replacing("{\(name)}", with: value) }
                }
                while url.hasSuffix("/") { url.removeLast() }
                urls.append(url)
            }
        }
        var seen = Set<String>()
        return urls.filter { url in
            (try? ApiValidation.checkEndpointURL(url, field: "server")) != nil && seen.insert(url).inserted
        }
    }

    /// What an OpenAPI 3 export of a Swagger 2.0 document cannot say, so an import warns of it.
    static func swaggerConversionLosses(_ root: DocumentValue) -> [String] {
        var tabSeparated: [String] = []
        var operationSchemes: [String] = []
        for (path, item) in root["paths"]?.members ?? [] {
            for (key, operation) in item.members ?? [] {
                if operation["schemes"] != nil { operationSchemes.append("\(key.uppercased()) \(path)") }
                for parameter in operation["parameters"]?.elements ?? [] where parameter["collectionFormat"]?.text == "tsv" {
                    tabSeparated.append("\(key.uppercased()) \(path) \(parameter["name"]?.text ?? "?")")
                }
            }
        }
        var losses: [String] = []
        if !operationSchemes.isEmpty {
            losses.append("the export (OpenAPI 3) has no place for per-operation `schemes`: \(sample(operationSchemes)) lose theirs")
        }
        if !tabSeparated.isEmpty {
            losses.append("the export (OpenAPI 3) has no tab-separated parameter style: \(sample(tabSeparated)) lose `collectionFormat: tsv`")
        }
        return losses
    }

    /// Scopes in the order first met; a scope met again adds what it did not have yet.
    struct ScopeList {
        private(set) var scopes: [ApiScope] = []
        private var positions: [String: Int] = [:]

        func contains(_ key: String) -> Bool { positions[key] != nil }

        mutating func add(key: String, name: String? = nil, description: String? = nil, roles: [String] = []) {
            let index: Int
            if let known = positions[key] {
                index = known
            } else {
                index = scopes.count
                positions[key] = index
                scopes.append(ApiScope(key: key, name: key))
            }
            if let name, !name.isEmpty, scopes[index].name == key { scopes[index].name = name }
            if let description, !description.isEmpty, scopes[index].description.isEmpty { scopes[index].description = description }
            for role in roles where !scopes[index].roles.contains(role) { scopes[index].roles.append(role) }
        }
    }

    private static func importScopes(_ root: DocumentValue, isSwagger: Bool, warnings: inout [String]) -> ScopeList {
        var list = ScopeList()
        let schemes = (isSwagger ? root["securityDefinitions"] : root["components"]?["securitySchemes"])?.members ?? []
        var other: [String] = []
        for (name, scheme) in schemes {
            let type = scheme["type"]?.text ?? ""
            guard type == "oauth2" else {
                other.append("`\(name)` (\(type.isEmpty ? "no type" : type))")
                continue
            }
            let scopeMaps: [DocumentValue?] = isSwagger ? [scheme["scopes"]] : (scheme["flows"]?.members ?? []).map { $0.value["scopes"] }
            for scopeMap in scopeMaps {
                for (key, description) in scopeMap?.members ?? [] { list.add(key: key, description: description.text) }
            }
            for (key, roles) in scheme["x-scopes-bindings"]?.members ?? [] { list.add(key: key, roles: roleNames(roles)) }
        }
        if !other.isEmpty {
            warnings.append("security scheme\(other.count == 1 ? "" : "s") \(other.joined(separator: ", ")) kept in the definition, "
                + "but the gateway checks OAuth 2.0 tokens from its key managers, not \(other.count == 1 ? "this scheme" : "these schemes")")
        }
        // WSO2 2.x kept its scopes outside the security schemes.
        for entry in root["x-wso2-security"]?["apim"]?["x-wso2-scopes"]?.elements ?? [] {
            guard let key = entry["key"]?.text ?? entry["name"]?.text, !key.isEmpty else {
                warnings.append("an x-wso2-scopes entry without a key was skipped")
                continue
            }
            list.add(key: key, name: entry["name"]?.text, description: entry["description"]?.text, roles: roleNames(entry["roles"]))
        }
        return list
    }

    /// WSO2 writes roles as one comma separated string; a list is taken too.
    private static func roleNames(_ value: DocumentValue?) -> [String] {
        let parts: [Substring]
        if let elements = value?.elements {
            parts = elements.compactMap { element in element.text.map { Substring($0) } }
        } else {
            parts = (value?.text ?? "").split(separator: ",")
        }
        return parts.map(trimmed).filter { !$0.isEmpty }
    }

    private static func trimmed(_ text: Substring) -> String {
        guard let first = text.firstIndex(where: { !$0.isWhitespace }), let last = text.lastIndex(where: { !$0.isWhitespace }) else {
            return ""
        }
        return String(text[first...last])
    }

    /// The security requirements that apply to an operation: its own, else the document's.
    static func effectiveSecurity(_ operation: DocumentValue, rootSecurity: DocumentValue?) -> DocumentValue? {
        operation["security"] ?? rootSecurity
    }

    /// Every scope the requirements name, in order, each once.
    static func requiredScopes(_ security: DocumentValue?) -> [String] {
        var scopes: [String] = []
        for requirement in security?.elements ?? [] {
            for (_, list) in requirement.members ?? [] {
                for scope in (list.elements ?? []).compactMap(\.text) where !scopes.contains(scope) { scopes.append(scope) }
            }
        }
        return scopes
    }

    /// The scope an import gives the operation's resource: `x-scope`, else the first scope its security names.
    static func derivedScope(_ operation: DocumentValue, rootSecurity: DocumentValue?) -> String {
        if let declared = operation["x-scope"]?.text, !declared.isEmpty { return declared }
        return requiredScopes(effectiveSecurity(operation, rootSecurity: rootSecurity)).first ?? ""
    }

    private static func resource(path: String, key: String, verb: HttpVerb, operation: DocumentValue, rootSecurity: DocumentValue?,
                                 scopes: ScopeList, isSwagger: Bool) throws(RPCError) -> (resource: ApiResource, requiredScopes: [String]) {
        let place = "\(key.uppercased()) \(path)"
        guard operation.members != nil else { throw RPCError(.invalidArgument, "\(place): an operation must be a mapping") }
        let security = effectiveSecurity(operation, rootSecurity: rootSecurity)
        // `security: []` switches authentication off for the operation.
        var authType: ResourceAuthType = security?.elements?.isEmpty == true ? .none : .`any`
        if let declared = operation["x-auth-type"] {
            let given = declared.text?.lowercased()
            guard let match = authTypeNames.first(where: { $0.name.lowercased() == given }) else {
                let allowed = authTypeNames.map { "\"\($0.name)\"" }.joined(separator: ", ")
                throw RPCError(.invalidArgument, "\(place): `x-auth-type: \(declared.text ?? "…")` is not one of \(allowed)")
            }
            authType = match.type
        }
        var policy = (operation["x-throttling-tier"] ?? operation["x-throttling-policy"])?.text ?? ""
        if policy.lowercased() == "unlimited" { policy = "" }
        let scope = derivedScope(operation, rootSecurity: rootSecurity)
        if !scope.isEmpty, !scopes.contains(scope) {
            let home = isSwagger ? "securityDefinitions" : "components.securitySchemes"
            throw RPCError(.invalidArgument, "\(place): scope `\(scope)` is not defined; define it in an oauth2 scheme under \(home) or in x-wso2-scopes")
        }
        return (ApiResource(uriTemplate: path, verb: verb, authType: authType, throttlingPolicy: policy, scope: scope), requiredScopes(security))
    }

    /// An OpenAPI document for `api`, in `format` (.unspecified means the stored definition's format, else JSON).
    /// `stored` is the definition last imported (Swagger 2.0 or OpenAPI 3, JSON or YAML), or nil. Everything
    /// the source says beyond the API's resources is kept: an OpenAPI 3 source keeps its version (3.0 or 3.1)
    /// and every field; Swagger 2.0 is converted to OpenAPI 3.0.3.
    static func export(_ api: Api, stored: ApiDefinition?, format: DefinitionFormat) throws(RPCError)
        -> (document: String, format: DefinitionFormat, openapiVersion: String) {
        let outputFormat: DefinitionFormat
        if format == .json || format == .yaml {
            outputFormat = format
        } else {
            outputFormat = stored?.format == .yaml ? .yaml : .json
        }
        // The stored text was accepted once; if it no longer reads, the API alone still makes a document.
        var source: SourceDocument?
        if let stored, let root = try? DocumentTree.parse(stored.document, maxBytes: DocumentTree.largestMaxBytes), root.members != nil {
            source = SourceDocument(root: root, isSwagger: root["swagger"] != nil)
        }
        let version = source.flatMap { $0.isSwagger ? nil : $0.root["openapi"]?.text } ?? exportVersion

        var components = DocumentValue.object([])
        if let source {
            if source.isSwagger {
                if let definitions = source.root["definitions"] { components.set("schemas", SourceDocument.rewritingRefs(definitions)) }
                if let definitions = source.root["securityDefinitions"]?.members {
                    components.set("securitySchemes", .object(definitions.map { (key: $0.key, value: SourceDocument.securityScheme($0.value)) }))
                }
            } else if let kept = source.root["components"], kept.members != nil {
                components = kept
            }
        }
        let schemeOfScope = bindScopes(api.scopes + undeclaredScopes(api), into: &components)
        let rootSecurity = source?.root["security"]

        var paths = DocumentValue.object([])
        var placed = Set<String>()
        let resourcesByPath = Dictionary(grouping: api.resources, by: \.uriTemplate)
        for (path, item) in source?.root["paths"]?.members ?? [] {
            guard let source, let fields = item.members else { continue }
            // A path item that never had operations (only a description, servers or extensions)
            // is kept as written; one whose operations all left the API goes with them.
            let hasOperations = fields.contains { field in field.key == "$ref" || operationVerbs.contains { $0.key == field.key } }
            guard let resources = resourcesByPath[path] ?? (hasOperations ? nil : []) else { continue }
            var exported = DocumentValue.object([])
            for (key, value) in fields {
                if let verb = operationVerbs.first(where: { $0.key == key })?.verb {
                    guard let resource = resources.first(where: { $0.verb == verb }), value.members != nil else { continue }
                    exported.set(key, exportedOperation(resource, original: value, source: source, pathHasParameters: true,
                                                        rootSecurity: rootSecurity, schemeOfScope: schemeOfScope))
                    placed.insert("\(key) \(path)")
                } else if key == "parameters" {
                    if let shared = source.sharedParameters(path: path) { exported.set(key, shared) }
                } else if pathItemFields.contains(key) || key.hasPrefix("x-") {
                    exported.set(key, source.isSwagger ? SourceDocument.rewritingRefs(value) : value)
                }
            }
            paths.set(path, exported)
        }
        // Resources added since the import (or all of them, without a source) get operations of their own.
        for resource in api.resources {
            guard let key = operationVerbs.first(where: { $0.verb == resource.verb })?.key, !placed.contains("\(key) \(resource.uriTemplate)") else { continue }
            var item = paths[resource.uriTemplate] ?? .object([])
            item.set(key, exportedOperation(resource, original: nil, source: source, pathHasParameters: item["parameters"] != nil,
                                            rootSecurity: rootSecurity, schemeOfScope: schemeOfScope))
            paths.set(resource.uriTemplate, item)
        }

        var info = source?.root["info"] ?? .object([])
        if info.members == nil { info = .object([]) }
        info.set("title", .string(api.name))
        info.set("version", .string(api.version))
        if api.description.isEmpty { info.remove("description") } else { info.set("description", .string(api.description)) }

        // Document tags as written, then the API's store tags the document does not have.
        var tags = source?.root["tags"]?.elements ?? []
        let written = Set(tags.compactMap { $0["name"]?.text })
        for tag in api.tags where !written.contains(tag) { tags.append(.object([(key: "name", value: .string(tag))])) }

        var document = DocumentValue.object([(key: "openapi", value: .string(version)), (key: "info", value: info)])
        if let source, !source.isSwagger {
            // Every other field of the source, in its place: servers, security, externalDocs, webhooks, x-*…
            for (key, value) in source.root.members ?? [] where key != "openapi" && key != "info" {
                document.set(key, value)
            }
        } else if let source {
            let servers = serverURLs(source.root, isSwagger: true)
            if !servers.isEmpty { document.set("servers", .array(servers.map { .object([(key: "url", value: .string($0))]) })) }
            for (key, value) in source.root.members ?? [] where key == "security" || key == "externalDocs" || key.hasPrefix("x-") {
                document.set(key, value)
            }
        }
        if tags.isEmpty { document.remove("tags") } else { document.set("tags", .array(tags)) }
        document.set("paths", paths)
        if components.members?.isEmpty == false { document.set("components", components) } else { document.remove("components") }

        if outputFormat == .yaml {
            return (DocumentWriter.yaml(document), .yaml, version)
        }
        return (DocumentWriter.json(document), .json, version)
    }

    /// Scopes resources name that the API does not list (an export must define every scope it uses).
    private static func undeclaredScopes(_ api: Api) -> [ApiScope] {
        var missing: [ApiScope] = []
        for resource in api.resources where !resource.scope.isEmpty {
            guard !api.scopes.contains(where: { $0.key == resource.scope }), !missing.contains(where: { $0.key == resource.scope }) else { continue }
            missing.append(ApiScope(key: resource.scope, name: resource.scope))
        }
        return missing
    }

    /// Makes sure each scope is defined by an oauth2 scheme in `components.securitySchemes` (those of
    /// the source as written, else one named `default`), with its roles in that scheme's
    /// `x-scopes-bindings`; returns each scope's scheme name.
    private static func bindScopes(_ scopes: [ApiScope], into components: inout DocumentValue) -> [String: String] {
        guard !scopes.isEmpty else { return [:] }
        var schemes = components["securitySchemes"] ?? .object([])
        var home: [String: String] = [:]
        for (name, scheme) in schemes.members ?? [] where scheme["type"]?.text == "oauth2" {
            for (_, flow) in scheme["flows"]?.members ?? [] {
                for (scope, _) in flow["scopes"]?.members ?? [] where home[scope] == nil { home[scope] = name }
            }
        }
        let missing = scopes.filter { home[$0.key] == nil }
        if !missing.isEmpty {
            var name = "default"
            while schemes[name] != nil { name += "-tollgate" }
            let descriptions = DocumentValue.object(missing.map { (key: $0.key, value: DocumentValue.string($0.description)) })
            let implicitFlow = DocumentValue.object([
                (key: "authorizationUrl", value: .string("https://localhost/authorize")), (key: "scopes", value: descriptions),
            ])
            schemes.set(name, .object([(key: "type", value: .string("oauth2")), (key: "flows", value: .object([(key: "implicit", value: implicitFlow)]))]))
            for scope in missing { home[scope.key] = name }
        }
        for scope in scopes where !scope.roles.isEmpty {
            guard let name = home[scope.key], var scheme = schemes[name] else { continue }
            var bindings = scheme["x-scopes-bindings"] ?? .object([])
            bindings.set(scope.key, .string(scope.roles.joined(separator: ",")))
            scheme.set("x-scopes-bindings", bindings)
            schemes.set(name, scheme)
        }
        components.set("securitySchemes", schemes)
        return home
    }

    private static func exportedOperation(_ resource: ApiResource, original: DocumentValue?, source: SourceDocument?, pathHasParameters: Bool,
                                          rootSecurity: DocumentValue?, schemeOfScope: [String: String]) -> DocumentValue {
        var operation = DocumentValue.object([])
        if let source, let original {
            if source.isSwagger {
                for (field, value) in original.members ?? [] where !SourceDocument.convertedOperationFields.contains(field) {
                    operation.set(field, SourceDocument.rewritingRefs(value))
                }
                source.convertSwaggerOperation(original, path: resource.uriTemplate, into: &operation)
            } else {
                operation = original
            }
        } else if !pathHasParameters {
            let parameters = templateParameterNames(resource.uriTemplate).map { name in
                DocumentValue.object([
                    (key: "name", value: .string(name)), (key: "in", value: .string("path")), (key: "required", value: .bool(true)),
                    (key: "schema", value: .object([(key: "type", value: .string("string"))])),
                ])
            }
            if !parameters.isEmpty { operation.set("parameters", .array(parameters)) }
        }
        if operation["responses"] == nil {
            operation.set("responses", .object([(key: "200", value: .object([(key: "description", value: .string("OK"))]))]))
        }
        // The security the source wrote stays unless the resource now says otherwise.
        if resource.authType == ResourceAuthType.none {
            if operation["security"]?.elements?.isEmpty != true { operation.set("security", .array([])) }
        } else if operation["security"]?.elements?.isEmpty == true {
            operation.remove("security")
        }
        if resource.scope.isEmpty {
            operation.remove("x-scope")
            if let security = effectiveSecurity(operation, rootSecurity: rootSecurity), !requiredScopes(security).isEmpty {
                // Same schemes, no scopes: what the resource now requires.
                operation.set("security", .array((security.elements ?? []).map { requirement in
                    .object((requirement.members ?? []).map { (key: $0.key, value: DocumentValue.array([])) })
                }))
            }
        } else {
            if requiredScopes(effectiveSecurity(operation, rootSecurity: rootSecurity)).first != resource.scope {
                let scheme = schemeOfScope[resource.scope] ?? "default"
                operation.set("security", .array([.object([(key: scheme, value: .array([.string(resource.scope)]))])]))
            }
            operation.set("x-scope", .string(resource.scope))
        }
        operation.set("x-auth-type", .string(wso2AuthTypeName(resource.authType)))
        operation.set("x-throttling-tier", .string(resource.throttlingPolicy.isEmpty ? "Unlimited" : resource.throttlingPolicy))
        return operation
    }

    private static func wso2AuthTypeName(_ type: ResourceAuthType) -> String {
        switch type {
        case .none: return "None"
        case .application: return "Application"
        case .applicationUser: return "Application User"
        default: return "Application & Application User"
        }
    }

    /// The `{name}` segments of a URI template, each once, in order.
    private static func templateParameterNames(_ template: String) -> [String] {
        var names: [String] = []
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            let afterOpen = rest[rest.index(after: open)...]
            guard let close = afterOpen.firstIndex(of: "}") else { break }
            let name = String(afterOpen[..<close])
            if !name.isEmpty, !names.contains(name) { names.append(name) }
            rest = afterOpen[afterOpen.index(after: close)...]
        }
        return names
    }
}

/// The definition last imported, read again so an export keeps what the API's
/// resources do not hold: summaries, parameters, bodies, responses, schemas.
private struct SourceDocument {
    let root: DocumentValue
    let isSwagger: Bool

    /// Fields Swagger 2.0 keeps on a parameter or header itself and OpenAPI 3 under its `schema`.
    static let schemaFields: Set<String> = [
        "type", "format", "items", "enum", "default", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
        "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf",
    ]
    /// Swagger 2.0 operation fields an OpenAPI 3 operation says differently (``convertSwaggerOperation``)
    /// or not at all (`schemes`, which an import warns of).
    static let convertedOperationFields: Set<String> = ["parameters", "responses", "consumes", "produces", "schemes"]

    /// The parameters the source declared for every operation of `path`.
    func sharedParameters(path: String) -> DocumentValue? {
        guard let shared = root["paths"]?[path]?["parameters"]?.elements else { return nil }
        let parameters = isSwagger
            ? shared.map { resolved($0, prefix: "#/parameters/", section: "parameters") }
                .filter { $0["in"]?.text != "body" && $0["in"]?.text != "formData" }.map(Self.movingSchemaFields)
            : shared
        return parameters.isEmpty ? nil : .array(parameters)
    }

    /// A Swagger 2.0 security definition as an OpenAPI 3 security scheme: the same name,
    /// URLs, scopes and extensions, with the OAuth flow under its OpenAPI 3 name.
    static func securityScheme(_ definition: DocumentValue) -> DocumentValue {
        var scheme = DocumentValue.object([])
        let type = definition["type"]?.text ?? ""
        switch type {
        case "basic":
            scheme.set("type", .string("http"))
            scheme.set("scheme", .string("basic"))
        case "oauth2":
            scheme.set("type", .string("oauth2"))
            let flowName: String = switch definition["flow"]?.text {
            case "password": "password"
            case "application": "clientCredentials"
            case "accessCode": "authorizationCode"
            default: "implicit"
            }
            var flow = DocumentValue.object([])
            for field in ["authorizationUrl", "tokenUrl"] { if let url = definition[field] { flow.set(field, url) } }
            flow.set("scopes", definition["scopes"] ?? .object([]))
            scheme.set("flows", .object([(key: flowName, value: flow)]))
        default:
            scheme.set("type", .string(type))
        }
        for (key, value) in definition.members ?? [] where !["type", "flow", "authorizationUrl", "tokenUrl", "scopes"].contains(key) {
            scheme.set(key, value)
        }
        return scheme
    }

    /// Swagger 2.0 keeps bodies among the parameters and response schemas beside the
    /// response; OpenAPI 3 moves them under `requestBody` and `content`, one entry per media type.
    func convertSwaggerOperation(_ original: DocumentValue, path: String, into operation: inout DocumentValue) {
        let consumes = ((original["consumes"] ?? root["consumes"])?.elements ?? []).compactMap(\.text)
        let produces = ((original["produces"] ?? root["produces"])?.elements ?? []).compactMap(\.text)
        var parameters: [DocumentValue] = []
        var requestBody: DocumentValue?
        var formProperties = DocumentValue.object([])
        var formRequired: [DocumentValue] = []
        var hasFile = false
        let shared = root["paths"]?[path]?["parameters"]
        // Body and form parameters declared for the whole path belong to each operation's body.
        let sharedBodies = (shared?.elements ?? []).map { resolved($0, prefix: "#/parameters/", section: "parameters") }
            .filter { $0["in"]?.text == "body" || $0["in"]?.text == "formData" }
        for listed in sharedBodies + (original["parameters"]?.elements ?? []) {
            let parameter = resolved(listed, prefix: "#/parameters/", section: "parameters")
            switch parameter["in"]?.text ?? "" {
            case "body":
                var body = DocumentValue.object([])
                if let description = parameter["description"] { body.set("description", description) }
                if let required = parameter["required"] { body.set("required", required) }
                let schema = Self.rewritingRefs(parameter["schema"] ?? .object([]))
                let types = consumes.filter { $0 != "application/x-www-form-urlencoded" && $0 != "multipart/form-data" }
                body.set("content", .object((types.isEmpty ? ["application/json"] : types).map {
                    (key: $0, value: DocumentValue.object([(key: "schema", value: schema)]))
                }))
                for (key, value) in parameter.members ?? [] where key.hasPrefix("x-") { body.set(key, value) }
                requestBody = body
            case "formData":
                guard let name = parameter["name"]?.text else { continue }
                var schema = Self.schema(of: parameter)
                if schema["type"]?.text == "file" {
                    schema.set("type", .string("string"))
                    schema.set("format", .string("binary"))
                    hasFile = true
                }
                if let description = parameter["description"] { schema.set("description", description) }
                formProperties.set(name, schema)
                if case .bool(true)? = parameter["required"] { formRequired.append(.string(name)) }
            default:
                parameters.append(Self.movingSchemaFields(parameter))
            }
        }
        if !parameters.isEmpty { operation.set("parameters", .array(parameters)) }
        if requestBody == nil, formProperties.members?.isEmpty == false {
            var schema = DocumentValue.object([(key: "type", value: .string("object")), (key: "properties", value: formProperties)])
            if !formRequired.isEmpty { schema.set("required", .array(formRequired)) }
            var types = consumes.filter { $0 == "application/x-www-form-urlencoded" || $0 == "multipart/form-data" }
            if hasFile { types = ["multipart/form-data"] } else if types.isEmpty { types = ["application/x-www-form-urlencoded"] }
            requestBody = .object([(key: "content", value: .object(types.map { (key: $0, value: DocumentValue.object([(key: "schema", value: schema)])) }))])
        }
        if let requestBody { operation.set("requestBody", requestBody) }

        guard let responses = original["responses"]?.members else { return }
        var converted = DocumentValue.object([])
        for (code, listed) in responses {
            let response = resolved(listed, prefix: "#/responses/", section: "responses")
            var result = DocumentValue.object([(key: "description", value: response["description"] ?? .string(""))])
            var content = DocumentValue.object([])
            let examples = response["examples"]?.members ?? []
            let types = produces.isEmpty ? ["application/json"] : produces
            if let schema = response["schema"] {
                for type in types { content.set(type, .object([(key: "schema", value: Self.rewritingRefs(schema))])) }
            }
            for (type, example) in examples {
                var media = content[type] ?? .object([])
                media.set("example", example)
                content.set(type, media)
            }
            for (field, value) in response.members ?? [] {
                switch field {
                case "description", "examples", "schema": continue
                case "headers":
                    result.set("headers", .object((value.members ?? []).map { (key: $0.key, value: Self.movingSchemaFields($0.value)) }))
                default:
                    result.set(field, Self.rewritingRefs(value))
                }
            }
            if content.members?.isEmpty == false { result.set("content", content) }
            converted.set(code, result)
        }
        operation.set("responses", converted)
    }

    /// A `$ref` to the source's shared parameters or responses replaced by its target,
    /// since OpenAPI 3 keeps those elsewhere and converted ones may change shape.
    private func resolved(_ value: DocumentValue, prefix: String, section: String) -> DocumentValue {
        guard let target = value["$ref"]?.text, target.hasPrefix(prefix) else { return value }
        return root[section]?[String(target.dropFirst(prefix.count))] ?? value
    }

    /// A Swagger parameter or header with its type fields moved into `schema`, and its
    /// `collectionFormat` said as OpenAPI 3's `style` and `explode`.
    static func movingSchemaFields(_ value: DocumentValue) -> DocumentValue {
        guard let members = value.members, value["$ref"] == nil else { return rewritingRefs(value) }
        var result = DocumentValue.object([])
        for (key, member) in members where !schemaFields.contains(key) && key != "collectionFormat" {
            result.set(key, rewritingRefs(member))
        }
        if value["in"]?.text != "body" { result.set("schema", schema(of: value)) }
        if value["type"]?.text == "array" {
            let location = value["in"]?.text ?? ""
            switch value["collectionFormat"]?.text ?? "csv" {
            case "multi":
                result.set("style", .string("form"))
                result.set("explode", .bool(true))
            case "ssv": result.set("style", .string("spaceDelimited"))
            case "pipes": result.set("style", .string("pipeDelimited"))
            case "csv" where location == "query" || location == "formData":
                result.set("style", .string("form"))
                result.set("explode", .bool(false))
            default: break
            }
        }
        return result
    }

    static func schema(of parameter: DocumentValue) -> DocumentValue {
        var schema = DocumentValue.object([])
        for (key, member) in parameter.members ?? [] where schemaFields.contains(key) {
            schema.set(key, rewritingRefs(member))
        }
        if schema["type"] == nil { schema.set("type", .string("string")) }
        return schema
    }

    /// Swagger's `#/definitions/X` is OpenAPI 3's `#/components/schemas/X`.
    static func rewritingRefs(_ value: DocumentValue) -> DocumentValue {
        switch value {
        case .array(let elements):
            return .array(elements.map { rewritingRefs($0) })
        case .object(let members):
            var result: [(key: String, value: DocumentValue)] = []
            for member in members {
                if member.key == "$ref", case .string(let target) = member.value, target.hasPrefix("#/definitions/") {
                    result.append((key: "$ref", value: .string("#/components/schemas/" + String(target.dropFirst("#/definitions/".count)))))
                } else {
                    result.append((key: member.key, value: rewritingRefs(member.value)))
                }
            }
            return .object(result)
        default:
            return value
        }
    }
}
