internal import CProtobufC
internal import CTollgateProto

/// Fields of a message that this build's schema does not declare, exactly as
/// they arrived, in wire order.
///
/// A node running an older schema that reads a record written by a newer one
/// (in a shared LMDB environment, or from a peer) keeps the newer fields here
/// and writes them back when it re-encodes the message, after its own known
/// fields. Empty unless decoding found some; an empty value allocates nothing.
public struct ProtoUnknownFields: RandomAccessCollection, Hashable, Sendable {
    /// How a field's value is laid out on the wire.
    public enum WireType: UInt8, Hashable, Sendable {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    /// One unknown field occurrence.
    public struct Field: Hashable, Sendable {
        /// The field number.
        public let number: UInt32
        public let wireType: WireType
        /// The value's bytes as they followed the tag on the wire: the varint
        /// itself, 8 or 4 little-endian bytes, or for a length-delimited
        /// field the length varint followed by the contents.
        public let bytes: [UInt8]
    }

    private var fields: [Field]

    /// No unknown fields.
    public init() {
        fields = []
    }

    public var startIndex: Int { fields.startIndex }
    public var endIndex: Int { fields.endIndex }
    public subscript(position: Int) -> Field { fields[position] }

    /// Drops every unknown field, so the next encoding writes only known ones.
    public mutating func removeAll() {
        fields = []
    }
}

// MARK: protobuf-c's view

extension ProtoUnknownFields {
    /// Copies the unknown fields protobuf-c's `unpack` kept on `message`.
    @inline(__always)
    init(_ message: ProtobufCMessage, in messageType: String) throws(ProtoDecodingError) {
        self.init()
        if message.n_unknown_fields == 0 { return }
        try copy(message, in: messageType)
    }

    private mutating func copy(_ message: ProtobufCMessage, in messageType: String) throws(ProtoDecodingError) {
        guard let unknown = message.unknown_fields else {
            throw ProtoDecodingError(messageType: messageType, reason: .malformed)
        }
        fields.reserveCapacity(Int(message.n_unknown_fields))
        for index in 0..<Int(message.n_unknown_fields) {
            let field = unknown[index]
            // protobuf-c refuses groups (wire types 3 and 4) while unpacking,
            // so any other value means the struct is not what unpack makes.
            guard let wireType = WireType(rawValue: UInt8(truncatingIfNeeded: field.wire_type.rawValue)),
                  field.len == 0 || field.data != nil else {
                throw ProtoDecodingError(messageType: messageType, reason: .malformed)
            }
            let bytes = field.len == 0 ? [] : Array(UnsafeBufferPointer(start: field.data, count: field.len))
            fields.append(Field(number: field.tag, wireType: wireType, bytes: bytes))
        }
    }
}

extension ProtoArena {
    /// Hands `unknownFields` to protobuf-c on a message being built, which
    /// `pack` writes after the known fields.
    @inline(__always)
    func attach(_ unknownFields: ProtoUnknownFields, to message: inout ProtobufCMessage) {
        if unknownFields.isEmpty { return }
        attachNonEmpty(unknownFields, to: &message)
    }

    private func attachNonEmpty(_ unknownFields: ProtoUnknownFields, to message: inout ProtobufCMessage) {
        let out = allocate(ProtobufCMessageUnknownField.self, count: unknownFields.count)
        for (index, field) in unknownFields.enumerated() {
            let data = allocate(UInt8.self, count: field.bytes.count)
            field.bytes.withUnsafeBufferPointer { bytes in
                if let base = bytes.baseAddress { data.initialize(from: base, count: bytes.count) }
            }
            (out + index).initialize(to: ProtobufCMessageUnknownField(
                tag: field.number, wire_type: ProtobufCWireType(rawValue: UInt32(field.wireType.rawValue)),
                len: field.bytes.count, data: data))
        }
        message.n_unknown_fields = UInt32(unknownFields.count)
        message.unknown_fields = out
    }
}
