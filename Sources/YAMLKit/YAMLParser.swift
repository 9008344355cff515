import CYAML

/// A place in the input, counted from 1 as editors do.
public struct YAMLMark: Sendable, Hashable, CustomStringConvertible {
    public let line: Int
    public let column: Int

    init(_ mark: yaml_mark_t) {
        line = Int(mark.line) + 1
        column = Int(mark.column) + 1
    }

    public var description: String { "line \(line), column \(column)" }
}

/// A scalar as written: its text, whether it was quoted or a block, and its explicit tag.
public struct YAMLScalar: Sendable, Hashable {
    public enum Style: Sendable, Hashable {
        /// Unquoted: its meaning (string, number, boolean, null) depends on its spelling.
        case plain
        case singleQuoted
        case doubleQuoted
        /// `|` or `>`.
        case block
    }

    public let value: String
    public let style: Style
    /// The resolved tag when one was written (`!!str` is `tag:yaml.org,2002:str`), else nil.
    public let tag: String?
    public let mark: YAMLMark

    public static let stringTag = "tag:yaml.org,2002:str"

    /// Whether the author made this a string explicitly: quoted, a block, or tagged `!!str`.
    public var isExplicitString: Bool { style != .plain || tag == Self.stringTag }
}

/// One node of a YAML document. Aliases are already replaced by the node
/// they name (shared, not copied, so expanding them is up to the reader).
public indirect enum YAMLNode: Sendable {
    case scalar(YAMLScalar)
    case sequence([YAMLNode], YAMLMark)
    case mapping([(key: YAMLNode, value: YAMLNode)], YAMLMark)

    public var mark: YAMLMark {
        switch self {
        case .scalar(let scalar): scalar.mark
        case .sequence(_, let mark), .mapping(_, let mark): mark
        }
    }
}

/// Why a document could not be read.
public struct YAMLError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public let mark: YAMLMark?

    public var description: String { mark.map { "\(message) at \($0)" } ?? message }
}

/// Reads YAML 1.1 (and so JSON) with libyaml's event parser into ``YAMLNode``.
public enum YAMLParser {
    /// The first document of `text`; nil when the text holds none.
    ///
    /// - Parameter maxDepth: deepest nesting accepted. The tree is built
    ///   without recursion, but reading and freeing it recurse, so hostile
    ///   input must not nest without bound.
    public static func parse(_ text: String, maxDepth: Int = 64) throws(YAMLError) -> YAMLNode? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { throw YAMLError(message: "libyaml could not start a parser (out of memory)", mark: nil) }
        defer { yaml_parser_delete(&parser) }
        let bytes = Array(text.utf8)
        return try bytes.withUnsafeBufferPointer { (buffer) throws(YAMLError) -> YAMLNode? in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var builder = TreeBuilder(maxDepth: maxDepth)
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { throw Self.error(of: parser) }
                defer { yaml_event_delete(&event) }
                if try builder.take(event) { return builder.root }
            }
        }
    }

    static func error(of parser: yaml_parser_t) -> YAMLError {
        let problem = parser.problem.map { String(cString: $0) } ?? "malformed input"
        let context = parser.context.map { " (\(String(cString: $0)))" } ?? ""
        return YAMLError(message: problem + context, mark: YAMLMark(parser.problem_mark))
    }
}

/// Builds the tree from parser events with an explicit stack.
struct TreeBuilder {
    enum Open {
        case sequence([YAMLNode], anchor: String?, mark: YAMLMark)
        case mapping([(key: YAMLNode, value: YAMLNode)], pendingKey: YAMLNode?, anchor: String?, mark: YAMLMark)
    }

    let maxDepth: Int
    var stack: [Open] = []
    var anchors: [String: YAMLNode] = [:]
    var root: YAMLNode?

    init(maxDepth: Int) { self.maxDepth = maxDepth }

    static func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        pointer.map { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
    }

    /// Takes one event; returns true when the first document is complete.
    mutating func take(_ event: yaml_event_t) throws(YAMLError) -> Bool {
        let mark = YAMLMark(event.start_mark)
        switch event.type {
        case YAML_STREAM_START_EVENT, YAML_DOCUMENT_START_EVENT, YAML_NO_EVENT:
            return false
        case YAML_DOCUMENT_END_EVENT, YAML_STREAM_END_EVENT:
            // Only the first document is read.
            return true
        case YAML_SCALAR_EVENT:
            let data = event.data.scalar
            let value = data.value.map { pointer in
                String(decoding: UnsafeBufferPointer(start: pointer, count: data.length), as: UTF8.self)
            } ?? ""
            let style: YAMLScalar.Style = switch data.style {
            case YAML_SINGLE_QUOTED_SCALAR_STYLE: .singleQuoted
            case YAML_DOUBLE_QUOTED_SCALAR_STYLE: .doubleQuoted
            case YAML_LITERAL_SCALAR_STYLE, YAML_FOLDED_SCALAR_STYLE: .block
            default: .plain
            }
            let node = YAMLNode.scalar(YAMLScalar(value: value, style: style, tag: Self.string(data.tag), mark: mark))
            if let anchor = Self.string(data.anchor) { anchors[anchor] = node }
            return try add(node)
        case YAML_ALIAS_EVENT:
            let name = Self.string(event.data.alias.anchor) ?? ""
            guard let node = anchors[name] else { throw YAMLError(message: "alias *\(name) names no anchor", mark: mark) }
            return try add(node)
        case YAML_SEQUENCE_START_EVENT:
            try open(.sequence([], anchor: Self.string(event.data.sequence_start.anchor), mark: mark), at: mark)
            return false
        case YAML_MAPPING_START_EVENT:
            try open(.mapping([], pendingKey: nil, anchor: Self.string(event.data.mapping_start.anchor), mark: mark), at: mark)
            return false
        case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
            guard let closed = stack.popLast() else { throw YAMLError(message: "a collection ends that never began", mark: mark) }
            let node: YAMLNode
            let anchor: String?
            switch closed {
            case .sequence(let items, let name, let start):
                node = .sequence(items, start)
                anchor = name
            case .mapping(let members, _, let name, let start):
                node = .mapping(members, start)
                anchor = name
            }
            if let anchor { anchors[anchor] = node }
            return try add(node)
        default:
            throw YAMLError(message: "unexpected parser event \(event.type.rawValue)", mark: mark)
        }
    }

    mutating func open(_ collection: Open, at mark: YAMLMark) throws(YAMLError) {
        guard stack.count < maxDepth else { throw YAMLError(message: "the document nests deeper than \(maxDepth) levels", mark: mark) }
        stack.append(collection)
    }

    /// Places a finished node in the collection being built, or makes it the root.
    mutating func add(_ node: YAMLNode) throws(YAMLError) -> Bool {
        guard let top = stack.popLast() else {
            root = node
            return false
        }
        switch top {
        case .sequence(var items, let anchor, let mark):
            items.append(node)
            stack.append(.sequence(items, anchor: anchor, mark: mark))
        case .mapping(var members, let pendingKey, let anchor, let mark):
            if let key = pendingKey {
                members.append((key: key, value: node))
                stack.append(.mapping(members, pendingKey: nil, anchor: anchor, mark: mark))
            } else {
                stack.append(.mapping(members, pendingKey: node, anchor: anchor, mark: mark))
            }
        }
        return false
    }
}
