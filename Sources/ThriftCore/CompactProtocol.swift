/// TCompactProtocol (apache/thrift doc/specs/thrift-compact-protocol.md):
/// zigzag varints, field ids as deltas from the previous field, bool
/// values folded into the field's type nibble, little-endian doubles, and
/// the header `0x82`, `(type << 5) | 1`, varint seqid, name.
enum CompactProtocol {
    static let protocolID: UInt8 = 0x82
    static let version: UInt8 = 1

    /// Compact type codes by wire type (BOOL's 1 is "true"; 2 means
    /// "false" in a field header and also names BOOL elsewhere).
    static func code(of type: ThriftType) -> UInt8 {
        switch type {
        case .bool: 1
        case .i8: 3
        case .i16: 4
        case .i32: 5
        case .i64: 6
        case .double: 7
        case .string: 8
        case .list: 9
        case .set: 10
        case .map: 11
        case .structure: 12
        }
    }

    static let typesByCode: [ThriftType?] = [nil, .bool, .bool, .i8, .i16, .i32, .i64, .double, .string, .list, .set, .map, .structure, nil, nil, nil]

    static func type(code: UInt8) throws(ThriftDecodingError) -> ThriftType {
        guard code < 16, let type = typesByCode[Int(code)] else { throw .malformed("compact type code \(code)") }
        return type
    }

    static func zigzag(_ value: Int64) -> UInt64 { UInt64(bitPattern: (value << 1) ^ (value >> 63)) }
    static func unzigzag(_ value: UInt64) -> Int64 { Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1) }

    // MARK: Writing

    static func writeMessage(_ message: ThriftMessage, to writer: inout ThriftWriter) {
        writer.byte(protocolID)
        writer.byte(version | message.type.rawValue << 5)
        writer.varint(UInt64(UInt32(bitPattern: message.sequenceID)))
        writeString(Array(message.name.utf8), to: &writer)
        writeStruct(message.body, to: &writer)
    }

    static func writeString(_ bytes: [UInt8], to writer: inout ThriftWriter) {
        writer.varint(UInt64(bytes.count))
        writer.append(bytes)
    }

    static func writeStruct(_ value: ThriftStruct, to writer: inout ThriftWriter) {
        var last: Int16 = 0
        for field in value.fields {
            let typeCode: UInt8 = if case .bool(let flag) = field.value { flag ? 1 : 2 } else { code(of: field.value.type) }
            let delta = Int(field.id) - Int(last)
            if delta > 0 && delta <= 15 {
                writer.byte(UInt8(delta) << 4 | typeCode)
            } else {
                writer.byte(typeCode)
                writer.varint(UInt64(UInt32(truncatingIfNeeded: zigzag(Int64(field.id)))))
            }
            last = field.id
            if case .bool = field.value { continue }
            writeValue(field.value, to: &writer)
        }
        writer.byte(0)  // STOP
    }

    static func writeValue(_ value: ThriftValue, to writer: inout ThriftWriter) {
        switch value {
        case .bool(let value): writer.byte(value ? 1 : 2)
        case .i8(let value): writer.byte(UInt8(bitPattern: value))
        case .i16(let value): writer.varint(zigzag(Int64(value)))
        case .i32(let value): writer.varint(zigzag(Int64(value)))
        case .i64(let value): writer.varint(zigzag(value))
        case .double(let value): writer.littleEndian(value.bitPattern)
        case .string(let bytes): writeString(bytes, to: &writer)
        case .structure(let value): writeStruct(value, to: &writer)
        case .map(let key, let valueType, let entries):
            if entries.isEmpty {
                writer.byte(0)
            } else {
                writer.varint(UInt64(entries.count))
                writer.byte(code(of: key) << 4 | code(of: valueType))
            }
            for entry in entries {
                writeValue(entry.key, to: &writer)
                writeValue(entry.value, to: &writer)
            }
        case .set(let element, let elements), .list(let element, let elements):
            if elements.count < 15 {
                writer.byte(UInt8(elements.count) << 4 | code(of: element))
            } else {
                writer.byte(0xf0 | code(of: element))
                writer.varint(UInt64(elements.count))
            }
            for element in elements { writeValue(element, to: &writer) }
        }
    }

    // MARK: Reading

    static func readMessage(_ reader: inout ThriftReader) throws(ThriftDecodingError) -> ThriftMessage {
        let id = try reader.byte()
        guard id == protocolID else { throw .malformed("protocol id 0x\(String(id, radix: 16)) (TCompactProtocol is 0x82)") }
        let versionAndType = try reader.byte()
        guard versionAndType & 0x1f == version else { throw .malformed("compact protocol version \(versionAndType & 0x1f)") }
        guard let type = ThriftMessageType(rawValue: versionAndType >> 5) else { throw .malformed("message type \(versionAndType >> 5)") }
        let sequenceID = Int32(bitPattern: UInt32(truncatingIfNeeded: try reader.varint(maxBytes: 5)))
        let name = try String(thriftName: try readBytes(&reader))
        let body = try readStruct(&reader, depth: 0)
        return ThriftMessage(name: name, type: type, sequenceID: sequenceID, body: body)
    }

    static func readBytes(_ reader: inout ThriftReader) throws(ThriftDecodingError) -> [UInt8] {
        let length = try reader.varint(maxBytes: 5)
        guard length <= UInt64(reader.limits.maxStringLength) else {
            throw .limitExceeded("a string of \(length) bytes (at most \(reader.limits.maxStringLength))")
        }
        return try reader.bytes(count: Int(length))
    }

    static func readSize(_ reader: inout ThriftReader) throws(ThriftDecodingError) -> Int {
        let size = try reader.varint(maxBytes: 5)
        guard size <= UInt64(Int32.max) else { throw .malformed("container size \(size)") }
        return Int(size)
    }

    static func readStruct(_ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) -> ThriftStruct {
        try reader.checkDepth(depth)
        var fields: [ThriftField] = []
        var last: Int16 = 0
        while true {
            let header = try reader.byte()
            let typeCode = header & 0x0f
            if typeCode == 0 { return ThriftStruct(fields) }
            let delta = header >> 4
            let id: Int16
            if delta == 0 {
                id = Int16(truncatingIfNeeded: unzigzag(try reader.varint(maxBytes: 5) & 0xffff_ffff))
            } else {
                id = last &+ Int16(delta)
            }
            last = id
            let type = try type(code: typeCode)
            if type == .bool {
                fields.append(ThriftField(id, .bool(typeCode == 1)))
            } else {
                fields.append(ThriftField(id, try readValue(type, &reader, depth: depth + 1)))
            }
        }
    }

    static func readValue(_ type: ThriftType, _ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) -> ThriftValue {
        switch type {
        case .bool: return .bool(try reader.byte() == 1)
        case .i8: return .i8(Int8(bitPattern: try reader.byte()))
        case .i16: return .i16(Int16(truncatingIfNeeded: unzigzag(try reader.varint(maxBytes: 5) & 0xffff_ffff)))
        case .i32: return .i32(Int32(truncatingIfNeeded: unzigzag(try reader.varint(maxBytes: 5) & 0xffff_ffff)))
        case .i64: return .i64(unzigzag(try reader.varint(maxBytes: 10)))
        case .double: return .double(Double(bitPattern: try reader.littleEndian(UInt64.self)))
        case .string: return .string(try readBytes(&reader))
        case .structure: return .structure(try readStruct(&reader, depth: depth))
        case .map:
            try reader.checkDepth(depth)
            let count = try readSize(&reader)
            if count == 0 { return .map(key: .string, value: .string, []) }
            let types = try reader.byte()
            let key = try self.type(code: types >> 4), value = try self.type(code: types & 0x0f)
            try reader.checkCount(count, minimumElementSize: minimumSize(of: key) + minimumSize(of: value))
            var entries: [ThriftMapEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let k = try readValue(key, &reader, depth: depth + 1)
                entries.append(ThriftMapEntry(key: k, value: try readValue(value, &reader, depth: depth + 1)))
            }
            return .map(key: key, value: value, entries)
        case .set, .list:
            try reader.checkDepth(depth)
            let header = try reader.byte()
            let count = header >> 4 == 15 ? try readSize(&reader) : Int(header >> 4)
            let element = try self.type(code: header & 0x0f)
            try reader.checkCount(count, minimumElementSize: minimumSize(of: element))
            var elements: [ThriftValue] = []
            elements.reserveCapacity(count)
            for _ in 0..<count { elements.append(try readValue(element, &reader, depth: depth + 1)) }
            return type == .set ? .set(element, elements) : .list(element, elements)
        }
    }

    static func minimumSize(of type: ThriftType) -> Int { type == .double ? 8 : 1 }
}
