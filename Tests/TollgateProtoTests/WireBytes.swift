/// Hand-written protobuf wire bytes, for messages no schema in `proto/`
/// describes: fields a newer schema would add, or strings this one refuses.
enum Wire {
    static func varint(_ value: UInt64) -> [UInt8] {
        var value = value
        var out: [UInt8] = []
        while value >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
        return out
    }

    static func tag(_ number: UInt32, _ wireType: UInt8) -> [UInt8] {
        varint(UInt64(number) << 3 | UInt64(wireType))
    }

    static func varintField(_ number: UInt32, _ value: UInt64) -> [UInt8] {
        tag(number, 0) + varint(value)
    }

    static func fixed32Field(_ number: UInt32, _ value: UInt32) -> [UInt8] {
        tag(number, 5) + withUnsafeBytes(of: value.littleEndian, Array.init)
    }

    static func fixed64Field(_ number: UInt32, _ value: UInt64) -> [UInt8] {
        tag(number, 1) + withUnsafeBytes(of: value.littleEndian, Array.init)
    }

    static func lengthDelimitedField(_ number: UInt32, _ contents: [UInt8]) -> [UInt8] {
        tag(number, 2) + varint(UInt64(contents.count)) + contents
    }

    static func stringField(_ number: UInt32, _ text: String) -> [UInt8] {
        lengthDelimitedField(number, Array(text.utf8))
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        return (0...(count - needle.count)).contains { self[$0..<$0 + needle.count].elementsEqual(needle) }
    }
}
