/// Apache Thrift's data model, protocol-neutral: what TBinaryProtocol and
/// TCompactProtocol both carry. Messages decode into these values whole
/// (unknown fields included, within ``ThriftLimits``); the typed structs of
/// a service read the field ids they know and ignore the rest, which is
/// Thrift's "skip unknown fields".

/// Thrift's wire types, by their TBinaryProtocol codes.
public enum ThriftType: UInt8, Sendable, Hashable, CaseIterable {
    case bool = 2
    case i8 = 3
    case double = 4
    case i16 = 6
    case i32 = 8
    case i64 = 10
    case string = 11
    case structure = 12
    case map = 13
    case set = 14
    case list = 15
}

/// A value of any Thrift type. `string` carries bytes: Thrift's STRING and
/// BINARY are one wire type, and UTF-8 is the typed layer's concern.
public indirect enum ThriftValue: Sendable, Hashable {
    case bool(Bool)
    case i8(Int8)
    case double(Double)
    case i16(Int16)
    case i32(Int32)
    case i64(Int64)
    case string([UInt8])
    case structure(ThriftStruct)
    case map(key: ThriftType, value: ThriftType, [ThriftMapEntry])
    case set(ThriftType, [ThriftValue])
    case list(ThriftType, [ThriftValue])

    public var type: ThriftType {
        switch self {
        case .bool: .bool
        case .i8: .i8
        case .double: .double
        case .i16: .i16
        case .i32: .i32
        case .i64: .i64
        case .string: .string
        case .structure: .structure
        case .map: .map
        case .set: .set
        case .list: .list
        }
    }

    /// A UTF-8 string value.
    public static func text(_ text: String) -> ThriftValue { .string(Array(text.utf8)) }
}

public struct ThriftMapEntry: Sendable, Hashable {
    public var key: ThriftValue
    public var value: ThriftValue
    public init(key: ThriftValue, value: ThriftValue) {
        self.key = key
        self.value = value
    }
}

public struct ThriftField: Sendable, Hashable {
    public var id: Int16
    public var value: ThriftValue
    public init(_ id: Int16, _ value: ThriftValue) {
        self.id = id
        self.value = value
    }
}

/// A struct (also an exception, and a method's `_args` and `_result`):
/// fields in the order they are written. Generated Thrift writers emit
/// ascending ids, which ``init(_:)`` keeps when built from typed structs.
public struct ThriftStruct: Sendable, Hashable {
    public var fields: [ThriftField]

    public init(_ fields: [ThriftField] = []) { self.fields = fields }

    /// The field with `id`, if present.
    public subscript(id: Int16) -> ThriftValue? {
        fields.first { $0.id == id }?.value
    }

    /// Appends `value` as field `id` unless it is nil (Thrift omits unset optionals).
    public mutating func append(_ id: Int16, _ value: ThriftValue?) {
        if let value { fields.append(ThriftField(id, value)) }
    }

    // Typed reads: nil when absent or of another type (libthrift skips a
    // field whose type differs from the IDL's).

    public func bool(_ id: Int16) -> Bool? {
        if case .bool(let value)? = self[id] { return value }
        return nil
    }

    public func i32(_ id: Int16) -> Int32? {
        if case .i32(let value)? = self[id] { return value }
        return nil
    }

    public func i64(_ id: Int16) -> Int64? {
        if case .i64(let value)? = self[id] { return value }
        return nil
    }

    /// A STRING field as UTF-8 text (invalid sequences repaired).
    public func string(_ id: Int16) -> String? {
        if case .string(let bytes)? = self[id] { return String(decoding: bytes, as: UTF8.self) }
        return nil
    }

    public func structure(_ id: Int16) -> ThriftStruct? {
        if case .structure(let value)? = self[id] { return value }
        return nil
    }

    /// A list or set field's elements.
    public func elements(_ id: Int16) -> [ThriftValue]? {
        switch self[id] {
        case .list(_, let elements)?, .set(_, let elements)?: elements
        default: nil
        }
    }

    /// A `list<string>` or `set<string>` field.
    public func strings(_ id: Int16) -> [String]? {
        elements(id)?.compactMap { if case .string(let bytes) = $0 { String(decoding: bytes, as: UTF8.self) } else { nil } }
    }

    /// A `list<struct>` field.
    public func structures(_ id: Int16) -> [ThriftStruct]? {
        elements(id)?.compactMap { if case .structure(let value) = $0 { value } else { nil } }
    }
}

public enum ThriftMessageType: UInt8, Sendable, Hashable {
    case call = 1
    case reply = 2
    case exception = 3
    case oneway = 4
}

/// One message: the envelope and its struct (`_args`, `_result`, or a
/// ``ThriftApplicationException``).
public struct ThriftMessage: Sendable, Hashable {
    public var name: String
    public var type: ThriftMessageType
    public var sequenceID: Int32
    public var body: ThriftStruct

    public init(name: String, type: ThriftMessageType, sequenceID: Int32, body: ThriftStruct) {
        self.name = name
        self.type = type
        self.sequenceID = sequenceID
        self.body = body
    }
}

/// What a decoder refuses to allocate or recurse into, checked before it
/// allocates: a hostile length or count costs nothing.
public struct ThriftLimits: Sendable, Hashable {
    /// Longest string or binary value, in bytes.
    public var maxStringLength: Int
    /// Most elements of one list, set or map.
    public var maxContainerCount: Int
    /// Deepest nesting of structs and containers.
    public var maxDepth: Int
    /// Largest whole message, in bytes (a stream reader stops waiting for
    /// the rest of a message beyond this).
    public var maxMessageSize: Int

    public init(maxStringLength: Int = 64 * 1024, maxContainerCount: Int = 10_000, maxDepth: Int = 32, maxMessageSize: Int = 1024 * 1024) {
        self.maxStringLength = maxStringLength
        self.maxContainerCount = maxContainerCount
        self.maxDepth = maxDepth
        self.maxMessageSize = maxMessageSize
    }
}

/// Why bytes are not a Thrift message.
public enum ThriftDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The bytes end inside a message: more may complete it.
    case truncated
    /// The bytes can never be a valid message.
    case malformed(String)
    /// A length, count or depth beyond ``ThriftLimits``.
    case limitExceeded(String)

    public var description: String {
        switch self {
        case .truncated: "the message ends early"
        case .malformed(let reason): "malformed Thrift message: \(reason)"
        case .limitExceeded(let reason): "Thrift message over a limit: \(reason)"
        }
    }
}

/// The two Thrift protocols WSO2 uses: TBinaryProtocol (strict write,
/// lenient read, like libthrift's defaults) for key validation, and
/// TCompactProtocol for the authenticator.
public enum ThriftProtocol: Sendable, Hashable {
    case binary
    case compact

    public func encode(_ message: ThriftMessage) -> [UInt8] {
        var writer = ThriftWriter()
        switch self {
        case .binary: BinaryProtocol.writeMessage(message, to: &writer)
        case .compact: CompactProtocol.writeMessage(message, to: &writer)
        }
        return writer.bytes
    }

    /// Decodes the message at the start of `bytes`; returns it and how
    /// many bytes it took. Throws ``ThriftDecodingError/truncated`` when the
    /// bytes end inside it.
    public func decode(_ bytes: ArraySlice<UInt8>, limits: ThriftLimits = ThriftLimits()) throws(ThriftDecodingError) -> (message: ThriftMessage, length: Int) {
        var reader = ThriftReader(bytes, limits: limits)
        let message = switch self {
        case .binary: try BinaryProtocol.readMessage(&reader)
        case .compact: try CompactProtocol.readMessage(&reader)
        }
        return (message, reader.consumed)
    }

    public func decode(_ bytes: [UInt8], limits: ThriftLimits = ThriftLimits()) throws(ThriftDecodingError) -> (message: ThriftMessage, length: Int) {
        try decode(bytes[...], limits: limits)
    }

    /// Encodes a bare struct (no envelope), as a value inside a message.
    public func encode(_ value: ThriftStruct) -> [UInt8] {
        var writer = ThriftWriter()
        switch self {
        case .binary: BinaryProtocol.writeStruct(value, to: &writer)
        case .compact: CompactProtocol.writeStruct(value, to: &writer)
        }
        return writer.bytes
    }

    /// Decodes a bare struct; the bytes must hold exactly one.
    public func decodeStruct(_ bytes: [UInt8], limits: ThriftLimits = ThriftLimits()) throws(ThriftDecodingError) -> ThriftStruct {
        var reader = ThriftReader(bytes[...], limits: limits)
        let value = switch self {
        case .binary: try BinaryProtocol.readStruct(&reader, depth: 0)
        case .compact: try CompactProtocol.readStruct(&reader, depth: 0)
        }
        guard reader.consumed == bytes.count else { throw .malformed("\(bytes.count - reader.consumed) bytes after the struct") }
        return value
    }
}

// MARK: Bytes in and out

/// Appends big- or little-endian integers and varints.
struct ThriftWriter {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(256) }

    mutating func byte(_ value: UInt8) { bytes.append(value) }

    mutating func bigEndian<T: FixedWidthInteger>(_ value: T) {
        var big = value.bigEndian
        withUnsafeBytes(of: &big) { bytes.append(contentsOf: $0) }
    }

    mutating func littleEndian<T: FixedWidthInteger>(_ value: T) {
        var little = value.littleEndian
        withUnsafeBytes(of: &little) { bytes.append(contentsOf: $0) }
    }

    mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    mutating func append(_ other: [UInt8]) { bytes.append(contentsOf: other) }
}

/// Reads from a byte slice, never past its end: running out is
/// ``ThriftDecodingError/truncated``.
struct ThriftReader {
    let bytes: ArraySlice<UInt8>
    var position: Int
    let limits: ThriftLimits

    init(_ bytes: ArraySlice<UInt8>, limits: ThriftLimits) {
        self.bytes = bytes
        self.position = bytes.startIndex
        self.limits = limits
    }

    var consumed: Int { position - bytes.startIndex }
    var remaining: Int { bytes.endIndex - position }

    mutating func byte() throws(ThriftDecodingError) -> UInt8 {
        guard position < bytes.endIndex else { throw .truncated }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func bigEndian<T: FixedWidthInteger>(_: T.Type) throws(ThriftDecodingError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .truncated }
        var value: T = 0
        for index in position..<(position + size) { value = value << 8 | T(truncatingIfNeeded: bytes[index]) }
        position += size
        return value
    }

    mutating func littleEndian<T: FixedWidthInteger>(_: T.Type) throws(ThriftDecodingError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .truncated }
        var value: T = 0
        for index in (position..<(position + size)).reversed() { value = value << 8 | T(truncatingIfNeeded: bytes[index]) }
        position += size
        return value
    }

    /// An unsigned LEB128 varint of at most `maxBytes` bytes.
    mutating func varint(maxBytes: Int) throws(ThriftDecodingError) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<maxBytes {
            let next = try byte()
            value |= UInt64(next & 0x7f) << UInt64(7 * index)
            if next & 0x80 == 0 { return value }
        }
        throw .malformed("a varint longer than \(maxBytes) bytes")
    }

    /// `count` bytes, after checking the limit and what is there.
    mutating func bytes(count: Int) throws(ThriftDecodingError) -> [UInt8] {
        guard count >= 0 else { throw .malformed("negative length \(count)") }
        guard count <= limits.maxStringLength else { throw .limitExceeded("a string of \(count) bytes (at most \(limits.maxStringLength))") }
        guard remaining >= count else { throw .truncated }
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }

    /// Checks a container's element count before anything is allocated
    /// for it: within the limit, and each element takes at least one byte.
    func checkCount(_ count: Int, minimumElementSize: Int) throws(ThriftDecodingError) {
        guard count >= 0 else { throw .malformed("negative container size \(count)") }
        guard count <= limits.maxContainerCount else { throw .limitExceeded("a container of \(count) elements (at most \(limits.maxContainerCount))") }
        guard count * minimumElementSize <= remaining else { throw .truncated }
    }

    func checkDepth(_ depth: Int) throws(ThriftDecodingError) {
        guard depth < limits.maxDepth else { throw .limitExceeded("nesting deeper than \(limits.maxDepth)") }
    }
}

extension String {
    /// A Thrift string's bytes as text, refusing invalid UTF-8 in names.
    init(thriftName bytes: [UInt8]) throws(ThriftDecodingError) {
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .malformed("a method name that is not UTF-8") }
        self = text
    }
}
