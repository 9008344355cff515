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
}

/// A parsed definition: JSON's data model with mapping order kept, so an
/// export lists paths, operations and schemas the way their author wrote them.
indirect enum DocumentValue: Sendable {
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
    static let maxBytes = 2 << 20
    static let maxDepth = 64
    /// Aliases are expanded into copies, so a small document could otherwise grow without bound.
    static let maxValues = 1_000_000

    static func parse(_ text: String) throws(RPCError) -> DocumentValue {
        guard text.utf8.count <= maxBytes else {
            throw RPCError(.invalidArgument, "the definition is \(text.utf8.count) bytes; at most 2 MiB is accepted")
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

    /// Parses YAML or JSON (format .unspecified = detect: text starting with `{` after whitespace is JSON).
    static func parse(_ text: String, format: DefinitionFormat) throws(RPCError) -> ImportedDefinition {
        let root = try DocumentTree.parse(text)
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
        if root["servers"] != nil || root["host"] != nil || root["basePath"] != nil {
            definition.warnings.append("servers, host and basePath are ignored: the gateway routes to the endpoints configured on the API")
        }
        let scopes = importScopes(root, isSwagger: isSwagger, warnings: &definition.warnings)
        definition.scopes = scopes.scopes

        guard let paths = root["paths"]?.members, !paths.isEmpty else {
            throw RPCError(.invalidArgument, "the definition has no `paths`: an API needs at least one resource")
        }
        for (path, item) in paths {
            guard path.hasPrefix("/") else { throw RPCError(.invalidArgument, "path `\(path)` must start with `/`") }
            guard let fields = item.members else {
                throw RPCError(.invalidArgument, "path `\(path)` must be a mapping of operations")
            }
            var operations = 0
            for (key, operation) in fields {
                if let verb = operationVerbs.first(where: { $0.key == key })?.verb {
                    let imported = try resource(path: path, key: key, verb: verb, operation: operation, scopes: scopes, isSwagger: isSwagger)
                    definition.resources.append(imported)
                    operations += 1
                } else if key == "$ref" {
                    definition.warnings.append("path `\(path)`: `$ref` path items are not followed, so their operations were not imported")
                } else if !pathItemFields.contains(key), !key.hasPrefix("x-") {
                    definition.warnings.append(
                        "path `\(path)`: `\(key)` is not a method the gateway routes (get, put, post, delete, options, head, patch); skipped")
                }
            }
            if operations == 0, fields.allSatisfy({ $0.key != "$ref" }) {
                definition.warnings.append("path `\(path)` has no operations")
            }
        }
        guard !definition.resources.isEmpty else {
            throw RPCError(.invalidArgument, "the definition has no operations the gateway can route")
        }
        return definition
    }

    private static func specification(of root: DocumentValue) throws(RPCError) -> (version: String, isSwagger: Bool) {
        let supported = "supported are OpenAPI 3.x (`openapi: 3.0.3`) and Swagger 2.0 (`swagger: \"2.0\"`)"
        if let declared = root["openapi"] {
            guard let version = declared.text, version.hasPrefix("3.") else {
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
        for (name, scheme) in schemes {
            let type = scheme["type"]?.text ?? ""
            guard type == "oauth2" else {
                warnings.append("security scheme `\(name)` (\(type.isEmpty ? "no type" : type)) is not imported: the gateway checks OAuth 2.0 tokens")
                continue
            }
            let scopeMaps: [DocumentValue?] = isSwagger ? [scheme["scopes"]] : (scheme["flows"]?.members ?? []).map { $0.value["scopes"] }
            for scopeMap in scopeMaps {
                for (key, description) in scopeMap?.members ?? [] { list.add(key: key, description: description.text) }
            }
            for (key, roles) in scheme["x-scopes-bindings"]?.members ?? [] { list.add(key: key, roles: roleNames(roles)) }
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

    private static func resource(path: String, key: String, verb: HttpVerb, operation: DocumentValue,
                                 scopes: ScopeList, isSwagger: Bool) throws(RPCError) -> ApiResource {
        let place = "\(key.uppercased()) \(path)"
        guard operation.members != nil else { throw RPCError(.invalidArgument, "\(place): an operation must be a mapping") }
        // `security: []` switches authentication off for the operation.
        var authType: ResourceAuthType = operation["security"]?.elements?.isEmpty == true ? .none : .`any`
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
        var scope = operation["x-scope"]?.text ?? ""
        if scope.isEmpty, let requirement = operation["security"]?.elements?.first?.members {
            scope = requirement.lazy.compactMap { $0.value.elements?.first?.text }.first ?? ""
        }
        if !scope.isEmpty, !scopes.contains(scope) {
            let home = isSwagger ? "securityDefinitions" : "components.securitySchemes"
            throw RPCError(.invalidArgument, "\(place): scope `\(scope)` is not defined; define it in an oauth2 scheme under \(home) or in x-wso2-scopes")
        }
        return ApiResource(uriTemplate: path, verb: verb, authType: authType, throttlingPolicy: policy, scope: scope)
    }

    /// An OpenAPI 3.0.3 document for `api`, in `format` (.unspecified means the stored definition's format, else JSON).
    /// `stored` is the definition last imported (may be Swagger 2.0 or OAS 3, JSON or YAML), or nil.
    static func export(_ api: Api, stored: ApiDefinition?, format: DefinitionFormat) throws(RPCError) -> (document: String, format: DefinitionFormat) {
        let outputFormat: DefinitionFormat
        if format == .json || format == .yaml {
            outputFormat = format
        } else {
            outputFormat = stored?.format == .yaml ? .yaml : .json
        }
        // The stored text was accepted once; if it no longer reads, the API alone still makes a document.
        var source: SourceDocument?
        if let stored, let root = try? DocumentTree.parse(stored.document) {
            source = SourceDocument(root: root, isSwagger: root["swagger"] != nil)
        }

        var paths = DocumentValue.object([])
        for resource in api.resources {
            guard let key = operationVerbs.first(where: { $0.verb == resource.verb })?.key else { continue }
            var item: DocumentValue = paths[resource.uriTemplate] ?? source?.sharedParameters(path: resource.uriTemplate) ?? .object([])
            item.set(key, exportedOperation(resource, key: key, source: source, pathHasParameters: item["parameters"] != nil))
            paths.set(resource.uriTemplate, item)
        }

        var components = DocumentValue.object([])
        if let source {
            if source.isSwagger {
                if let definitions = source.root["definitions"] { components.set("schemas", SourceDocument.rewritingRefs(definitions)) }
            } else {
                for field in ["schemas", "responses", "parameters", "examples", "requestBodies", "headers", "links", "callbacks"] {
                    if let value = source.root["components"]?[field] { components.set(field, value) }
                }
            }
        }
        // Every scope an operation names must be defined, or the export would not import again.
        var scopes = api.scopes
        for resource in api.resources where !resource.scope.isEmpty && !scopes.contains(where: { $0.key == resource.scope }) {
            scopes.append(ApiScope(key: resource.scope, name: resource.scope))
        }
        if !scopes.isEmpty {
            let descriptions = DocumentValue.object(scopes.map { (key: $0.key, value: DocumentValue.string($0.description)) })
            let bindings = DocumentValue.object(scopes.map { (key: $0.key, value: DocumentValue.string($0.roles.joined(separator: ","))) })
            let implicitFlow = DocumentValue.object([
                (key: "authorizationUrl", value: .string("https://localhost/authorize")), (key: "scopes", value: descriptions),
            ])
            let scheme = DocumentValue.object([
                (key: "type", value: .string("oauth2")),
                (key: "flows", value: .object([(key: "implicit", value: implicitFlow)])),
                (key: "x-scopes-bindings", value: bindings),
            ])
            components.set("securitySchemes", .object([(key: "default", value: scheme)]))
        }

        var info = DocumentValue.object([(key: "title", value: .string(api.name)), (key: "version", value: .string(api.version))])
        if !api.description.isEmpty { info.set("description", .string(api.description)) }
        var document = DocumentValue.object([(key: "openapi", value: .string("3.0.3")), (key: "info", value: info)])
        if !api.tags.isEmpty {
            document.set("tags", .array(api.tags.map { DocumentValue.object([(key: "name", value: .string($0))]) }))
        }
        document.set("paths", paths)
        if components.members?.isEmpty == false { document.set("components", components) }

        if outputFormat == .yaml {
            let text = DocumentWriter.yaml(document)
            return (text, .yaml)
        }
        return (DocumentWriter.json(document), .json)
    }

    private static func exportedOperation(_ resource: ApiResource, key: String, source: SourceDocument?,
                                          pathHasParameters: Bool) -> DocumentValue {
        var operation = DocumentValue.object([])
        if let source, let original = source.root["paths"]?[resource.uriTemplate]?[key], original.members != nil {
            for field in ["summary", "description", "operationId", "tags", "externalDocs", "deprecated"] {
                if let value = original[field] { operation.set(field, value) }
            }
            if source.isSwagger {
                source.convertSwaggerOperation(original, into: &operation)
            } else {
                for field in ["parameters", "requestBody", "responses"] {
                    if let value = original[field] { operation.set(field, value) }
                }
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
        if resource.authType == ResourceAuthType.none {
            operation.set("security", .array([]))
        } else if !resource.scope.isEmpty {
            operation.set("security", .array([.object([(key: "default", value: .array([.string(resource.scope)]))])]))
        }
        operation.set("x-auth-type", .string(wso2AuthTypeName(resource.authType)))
        operation.set("x-throttling-tier", .string(resource.throttlingPolicy.isEmpty ? "Unlimited" : resource.throttlingPolicy))
        if !resource.scope.isEmpty { operation.set("x-scope", .string(resource.scope)) }
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

    /// A path item holding only the parameters the source declared for every operation of `path`.
    func sharedParameters(path: String) -> DocumentValue? {
        guard let shared = root["paths"]?[path]?["parameters"]?.elements else { return nil }
        let parameters = isSwagger
            ? shared.map { resolved($0, prefix: "#/parameters/", section: "parameters") }
                .filter { $0["in"]?.text != "body" && $0["in"]?.text != "formData" }.map(Self.movingSchemaFields)
            : shared
        return parameters.isEmpty ? nil : .object([(key: "parameters", value: .array(parameters))])
    }

    /// Swagger 2.0 keeps bodies among the parameters and response schemas beside the
    /// response; OpenAPI 3 moves them under `requestBody` and `content`.
    func convertSwaggerOperation(_ original: DocumentValue, into operation: inout DocumentValue) {
        let consumes = (original["consumes"] ?? root["consumes"])?.elements?.first?.text
        let produces = (original["produces"] ?? root["produces"])?.elements?.first?.text ?? "application/json"
        var parameters: [DocumentValue] = []
        var requestBody: DocumentValue?
        var formProperties = DocumentValue.object([])
        var formRequired: [DocumentValue] = []
        var multipart = consumes == "multipart/form-data"
        for listed in original["parameters"]?.elements ?? [] {
            let parameter = resolved(listed, prefix: "#/parameters/", section: "parameters")
            switch parameter["in"]?.text ?? "" {
            case "body":
                var body = DocumentValue.object([])
                if let description = parameter["description"] { body.set("description", description) }
                if let required = parameter["required"] { body.set("required", required) }
                let schema = Self.rewritingRefs(parameter["schema"] ?? .object([]))
                body.set("content", .object([(key: consumes ?? "application/json", value: .object([(key: "schema", value: schema)]))]))
                requestBody = body
            case "formData":
                guard let name = parameter["name"]?.text else { continue }
                var schema = Self.schema(of: parameter)
                if schema["type"]?.text == "file" {
                    schema.set("type", .string("string"))
                    schema.set("format", .string("binary"))
                    multipart = true
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
            let mediaType = multipart ? "multipart/form-data" : "application/x-www-form-urlencoded"
            requestBody = .object([(key: "content", value: .object([(key: mediaType, value: .object([(key: "schema", value: schema)]))]))])
        }
        if let requestBody { operation.set("requestBody", requestBody) }

        guard let responses = original["responses"]?.members else { return }
        var converted = DocumentValue.object([])
        for (code, listed) in responses {
            let response = resolved(listed, prefix: "#/responses/", section: "responses")
            var result = DocumentValue.object([(key: "description", value: response["description"] ?? .string(""))])
            for (field, value) in response.members ?? [] {
                switch field {
                case "description", "examples": continue
                case "schema":
                    let content = DocumentValue.object([(key: "schema", value: Self.rewritingRefs(value))])
                    result.set("content", .object([(key: produces, value: content)]))
                case "headers":
                    result.set("headers", .object((value.members ?? []).map { (key: $0.key, value: Self.movingSchemaFields($0.value)) }))
                default:
                    result.set(field, Self.rewritingRefs(value))
                }
            }
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

    /// A Swagger parameter or header with its type fields moved into `schema`.
    static func movingSchemaFields(_ value: DocumentValue) -> DocumentValue {
        guard let members = value.members, value["$ref"] == nil else { return rewritingRefs(value) }
        var result = DocumentValue.object([])
        for (key, member) in members where !schemaFields.contains(key) && key != "collectionFormat" {
            result.set(key, rewritingRefs(member))
        }
        if value["in"]?.text != "body" { result.set("schema", schema(of: value)) }
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
