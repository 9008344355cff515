public import TollgateProto

/// Ordered call metadata: keys may repeat and order is kept. Keys are
/// lower-case; keys ending in `-bin` carry bytes, all others text.
public struct Metadata: Hashable, Sendable, Sequence, ExpressibleByDictionaryLiteral {
    public typealias Key = String
    public typealias Value = String

    public enum EntryValue: Hashable, Sendable {
        case text(String)
        case binary([UInt8])

        var byteCount: Int {
            switch self {
            case .text(let text): text.utf8.count
            case .binary(let bytes): bytes.count
            }
        }
    }

    public struct Entry: Hashable, Sendable {
        public let key: String
        public let value: EntryValue
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    public init(dictionaryLiteral elements: (String, String)...) {
        for (key, value) in elements { add(key, value) }
    }

    public mutating func add(_ key: String, _ value: String) {
        entries.append(Entry(key: key.lowercased(), value: .text(value)))
    }

    public mutating func add(_ key: String, binary: [UInt8]) {
        entries.append(Entry(key: key.lowercased(), value: .binary(binary)))
    }

    /// Replaces every value of `key` with one.
    public mutating func set(_ key: String, _ value: String) {
        let key = key.lowercased()
        entries.removeAll { $0.key == key }
        add(key, value)
    }

    /// The first text value of `key`.
    public subscript(_ key: String) -> String? {
        let key = key.lowercased()
        for entry in entries where entry.key == key {
            if case .text(let text) = entry.value { return text }
        }
        return nil
    }

    /// Every value of `key`, in order (a binary value decoded as UTF-8).
    public func values(for key: String) -> [String] {
        let key = key.lowercased()
        return entries.filter { $0.key == key }.map { entry in
            switch entry.value {
            case .text(let text): text
            case .binary(let bytes): String(decoding: bytes, as: UTF8.self)
            }
        }
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    /// Key and value bytes together: what `max_metadata_size` limits.
    public var byteCount: Int { entries.reduce(0) { $0 + $1.key.utf8.count + $1.value.byteCount } }

    public func makeIterator() -> IndexingIterator<[Entry]> { entries.makeIterator() }

    /// Checks the key and value rules of docs/rpc-protocol.md.
    public func validate() throws(RPCError) {
        for entry in entries {
            guard !entry.key.isEmpty, entry.key.utf8.allSatisfy(Self.isKeyByte) else {
                throw RPCError(.invalidArgument, "metadata key '\(entry.key)' is not lower-case ASCII letters, digits, '-', '_' or '.'")
            }
            switch entry.value {
            case .binary:
                guard entry.key.hasSuffix("-bin") else {
                    throw RPCError(.invalidArgument, "metadata key '\(entry.key)' carries bytes but does not end in -bin")
                }
            case .text(let text):
                guard !entry.key.hasSuffix("-bin") else {
                    throw RPCError(.invalidArgument, "metadata key '\(entry.key)' ends in -bin but carries text")
                }
                guard text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
                    throw RPCError(.invalidArgument, "metadata value of '\(entry.key)' is not printable ASCII")
                }
            }
        }
    }

    private static func isKeyByte(_ byte: UInt8) -> Bool {
        (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2D || byte == 0x5F || byte == 0x2E
    }
}

extension Metadata {
    /// Metadata from the entries of a HEADERS or TRAILERS message. An entry
    /// with no value is an empty text value.
    public init(protoEntries: [RpcMetadataEntry]) {
        self.init()
        for entry in protoEntries {
            switch entry.value {
            case .binary(let bytes)?: entries.append(Entry(key: entry.key, value: .binary(bytes)))
            case .text(let text)?: entries.append(Entry(key: entry.key, value: .text(text)))
            case nil: entries.append(Entry(key: entry.key, value: .text("")))
            }
        }
    }

    /// The entries as protocol messages, in order.
    public var protoEntries: [RpcMetadataEntry] {
        entries.map { entry in
            switch entry.value {
            case .text(let text): RpcMetadataEntry(key: entry.key, value: .text(text))
            case .binary(let bytes): RpcMetadataEntry(key: entry.key, value: .binary(bytes))
            }
        }
    }
}
