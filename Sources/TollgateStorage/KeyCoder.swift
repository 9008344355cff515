/// Builds keys whose byte order is the order of their components, so
/// composite keys (tenant, name, version, …) sort and prefix-scan correctly.
///
/// Strings and byte strings are written with 0x00 escaped as 0x00 0xFF and
/// closed by 0x00 0x01: no encoding is a prefix of another, and shorter
/// strings sort first. Integers are fixed-width big-endian; signed ones have
/// their sign bit flipped so negative numbers sort before positive ones.
public struct Key: Hashable, Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public init(_ components: KeyComponent...) {
        for component in components { append(component) }
    }

    public mutating func append(_ component: KeyComponent) {
        switch component {
        case .string(let string):
            appendEscaped(string.utf8)
        case .bytes(let raw):
            appendEscaped(raw)
        case .uint64(let value):
            appendBigEndian(value)
        case .int64(let value):
            appendBigEndian(UInt64(bitPattern: value) ^ (1 << 63))
        case .stringPrefix(let string):
            appendEscaped(string.utf8, closed: false)
        }
    }

    public func appending(_ component: KeyComponent) -> Key {
        var copy = self
        copy.append(component)
        return copy
    }

    private mutating func appendEscaped<Bytes: Sequence<UInt8>>(_ raw: Bytes, closed: Bool = true) {
        for byte in raw {
            bytes.append(byte)
            if byte == 0 { bytes.append(0xFF) }
        }
        if closed {
            bytes.append(0x00)
            bytes.append(0x01)
        }
    }

    private mutating func appendBigEndian(_ value: UInt64) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Reads components back out of encoded key bytes, where a scan must judge
/// a key without decoding its record (the encoding is ``Key``'s).
public enum KeyBytes {
    /// The signed integer component at `offset` (8 bytes).
    public static func int64(in key: UnsafeRawBufferPointer, at offset: Int) -> Int64 {
        var value: UInt64 = 0
        for byte in key[offset..<offset + 8] { value = value << 8 | UInt64(byte) }
        return Int64(bitPattern: value ^ (1 << 63))
    }

    /// The offset just past the string component starting at `offset`
    /// (past its closing 0x00 0x01), or `key.count` if it is not closed.
    public static func endOfString(in key: UnsafeRawBufferPointer, at offset: Int) -> Int {
        var position = offset
        while position + 1 < key.count {
            if key[position] == 0 {
                if key[position + 1] == 1 { return position + 2 }
                position += 2  // an escaped 0x00
            } else {
                position += 1
            }
        }
        return key.count
    }
}

/// One component of a ``Key``.
public enum KeyComponent: Hashable, Sendable {
    case string(String)
    case bytes([UInt8])
    case uint64(UInt64)
    case int64(Int64)
    /// The start of a string, left open: as the last component of a prefix
    /// it matches every string component that begins with it.
    case stringPrefix(String)
}
