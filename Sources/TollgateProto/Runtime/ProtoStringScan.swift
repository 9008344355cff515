internal import CProtobufC
internal import CTollgateProto

#if canImport(Glibc)
import Glibc
#endif

/// Finds U+0000 in the string fields of wire bytes.
///
/// protobuf-c unpacks a string into a NUL-terminated copy and keeps no
/// length, so after `unpack` a string holding a 0 byte cannot be told from
/// a shorter one. The check therefore runs on the wire bytes: it walks the
/// tags with the message's descriptor, looks for a 0 byte in each string
/// field's contents and follows sub-message fields whose type has strings.
/// It allocates nothing and recurses at most ``ProtoLimits/maxNestingDepth``
/// levels.
enum ProtoStringScan {
    /// Throws ``ProtoDecodingError/Reason/nulInString(field:)`` when a string
    /// field of `bytes`, a message of type `descriptor`, holds a 0 byte.
    /// `bytes` must be a message protobuf-c has already unpacked.
    static func refuseNUL(in bytes: UnsafeRawBufferPointer, descriptor: UnsafePointer<ProtobufCMessageDescriptor>, messageType: String) throws(ProtoDecodingError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        // Varints never end in a 0 byte except the value 0 itself, which
        // proto3 omits unless a field has presence, so most messages have no
        // 0 byte anywhere and need no walk.
        guard memchr(base, 0, bytes.count) != nil else { return }
        let walked = scan(base.assumingMemoryBound(to: UInt8.self), count: bytes.count, descriptor: descriptor, depth: 0)
        switch walked {
        case .clean:
            return
        case .nul(let message, let field):
            throw ProtoDecodingError(messageType: String(cString: message.pointee.name),
                                     reason: .nulInString(field: String(cString: field.pointee.name)))
        case .malformed:
            throw ProtoDecodingError(messageType: messageType, reason: .malformed)
        }
    }

    private enum Outcome {
        case clean
        case nul(message: UnsafePointer<ProtobufCMessageDescriptor>, field: UnsafePointer<ProtobufCFieldDescriptor>)
        case malformed
    }

    private static func scan(_ start: UnsafePointer<UInt8>, count: Int, descriptor: UnsafePointer<ProtobufCMessageDescriptor>, depth: Int) -> Outcome {
        var offset = 0
        while offset < count {
            guard let key = varint(start, count: count, offset: &offset), key >> 3 != 0, key >> 3 <= UInt64(UInt32.max) else {
                return .malformed
            }
            switch key & 7 {
            case 0:
                guard varint(start, count: count, offset: &offset) != nil else { return .malformed }
            case 1:
                offset += 8
            case 5:
                offset += 4
            case 2:
                guard let length = varint(start, count: count, offset: &offset), length <= UInt64(count - offset) else {
                    return .malformed
                }
                let contents = start + offset
                offset += Int(length)
                guard let field = protobuf_c_message_descriptor_get_field(descriptor, UInt32(key >> 3)) else {
                    continue  // unknown: kept as it is, never read as a string
                }
                switch field.pointee.type {
                case PROTOBUF_C_TYPE_STRING:
                    if memchr(contents, 0, Int(length)) != nil {
                        return .nul(message: descriptor, field: field)
                    }
                case PROTOBUF_C_TYPE_MESSAGE:
                    let sub = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
                    if stringFreeDescriptors.contains(UInt(bitPattern: sub)) { continue }
                    guard depth < ProtoLimits.maxNestingDepth else { return .malformed }
                    let inner = scan(contents, count: Int(length), descriptor: sub, depth: depth + 1)
                    if case .clean = inner { continue }
                    return inner
                default:
                    continue  // bytes, or a packed repeated scalar
                }
            default:
                return .malformed
            }
        }
        return offset == count ? .clean : .malformed
    }

    /// Reads a varint of at most 10 bytes at `offset`, moving past it.
    @inline(__always)
    private static func varint(_ start: UnsafePointer<UInt8>, count: Int, offset: inout Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while offset < count && shift < 70 {
            let byte = start[offset]
            offset += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }
}
