/// TBinaryProtocol (apache/thrift doc/specs/thrift-binary-protocol.md):
/// big-endian fixed-width values, i32-length strings, and the strict
/// message header `0x8001000m`. Writes are strict; reads accept the old
/// header too (libthrift's strictRead=false, what WSO2's server uses).
enum BinaryProtocol {
    static let version1: UInt32 = 0x8001_0000
    static let versionMask: UInt32 = 0xffff_0000

    /// Fewest bytes one value of a type takes, to bound container counts.
    static func minimumSize(of type: ThriftType) -> Int {
        switch type {
        case .bool, .i8, .structure: 1
        case .i16: 2
        case .i32, .string: 4
        case .i64, .double: 8
        case .map: 6
        case .set, .list: 5
        }
    }

    // MARK: Writing

    static func writeMessage(_ message: ThriftMessage, to writer: inout ThriftWriter) {
        writer.bigEndian(version1 | UInt32(message.type.rawValue))
        writeString(Array(message.name.utf8), to: &writer)
        writer.bigEndian(message.sequenceID)
        writeStruct(message.body, to: &writer)
    }

    static func writeStruct(_ value: ThriftStruct, to writer: inout ThriftWriter) {
        for field in value.fields {
            writer.byte(field.value.type.rawValue)
            writer.bigEndian(field.id)
            writeValue(field.value, to: &writer)
        }
        writer.byte(0)  // STOP
    }

    static func writeString(_ bytes: [UInt8], to writer: inout ThriftWriter) {
        writer.bigEndian(Int32(truncatingIfNeeded: bytes.count))
        writer.append(bytes)
    }

    static func writeValue(_ value: ThriftValue, to writer: inout ThriftWriter) {
        switch value {
        case .bool(let value): writer.byte(value ? 1 : 0)
        case .i8(let value): writer.byte(UInt8(bitPattern: value))
        case .i16(let value): writer.bigEndian(value)
        case .i32(let value): writer.bigEndian(value)
        case .i64(let value): writer.bigEndian(value)
        case .double(let value): writer.bigEndian(value.bitPattern)
        case .string(let bytes): writeString(bytes, to: &writer)
        case .structure(let value): writeStruct(value, to: &writer)
        case .map(let key, let valueType, let entries):
            writer.byte(key.rawValue)
            writer.byte(valueType.rawValue)
            writer.bigEndian(Int32(truncatingIfNeeded: entries.count))
            for entry in entries {
                writeValue(entry.key, to: &writer)
                writeValue(entry.value, to: &writer)
            }
        case .set(let element, let elements), .list(let element, let elements):
            writer.byte(element.rawValue)
            writer.bigEndian(Int32(truncatingIfNeeded: elements.count))
            for element in elements { writeValue(element, to: &writer) }
        }
    }

    // MARK: Reading

    static func readMessage(_ reader: inout ThriftReader) throws(ThriftDecodingError) -> ThriftMessage {
        let header = try readHeader(&reader)
        let body = try readStruct(&reader, depth: 0)
        return ThriftMessage(name: header.name, type: header.type, sequenceID: header.sequenceID, body: body)
    }

    /// The envelope: the strict header, or the old one (name length first).
    static func readHeader(_ reader: inout ThriftReader) throws(ThriftDecodingError) -> ThriftMessageHeader {
        let first = try reader.bigEndian(Int32.self)
        let name: String, typeCode: UInt8
        if first < 0 {
            let header = UInt32(bitPattern: first)
            guard header & versionMask == version1 else {
                throw .malformed("bad protocol version 0x\(String(header & versionMask, radix: 16)) (TBinaryProtocol is 0x80010000)")
            }
            typeCode = UInt8(header & 0xff)
            name = try String(thriftName: try reader.bytes(count: Int(try reader.bigEndian(Int32.self))))
        } else {
            // The old, non-strict header: the name's length comes first.
            name = try String(thriftName: try reader.bytes(count: Int(first)))
            typeCode = try reader.byte()
        }
        guard let type = ThriftMessageType(rawValue: typeCode) else { throw .malformed("message type \(typeCode)") }
        return ThriftMessageHeader(name: name, type: type, sequenceID: try reader.bigEndian(Int32.self))
    }

    static func readType(_ reader: inout ThriftReader) throws(ThriftDecodingError) -> ThriftType {
        let code = try reader.byte()
        guard let type = ThriftType(rawValue: code) else { throw .malformed("type code \(code)") }
        return type
    }

    static func readStruct(_ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) -> ThriftStruct {
        try reader.checkDepth(depth)
        var fields: [ThriftField] = []
        while true {
            let code = try reader.byte()
            if code == 0 { return ThriftStruct(fields) }
            guard let type = ThriftType(rawValue: code) else { throw .malformed("field type code \(code)") }
            let id = try reader.bigEndian(Int16.self)
            fields.append(ThriftField(id, try readValue(type, &reader, depth: depth + 1)))
        }
    }

    static func readValue(_ type: ThriftType, _ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) -> ThriftValue {
        switch type {
        case .bool: return .bool(try reader.byte() == 1)
        case .i8: return .i8(Int8(bitPattern: try reader.byte()))
        case .i16: return .i16(try reader.bigEndian(Int16.self))
        case .i32: return .i32(try reader.bigEndian(Int32.self))
        case .i64: return .i64(try reader.bigEndian(Int64.self))
        case .double: return .double(Double(bitPattern: try reader.bigEndian(UInt64.self)))
        case .string: return .string(try reader.bytes(count: Int(try reader.bigEndian(Int32.self))))
        case .structure: return .structure(try readStruct(&reader, depth: depth))
        case .map:
            try reader.checkDepth(depth)
            let keyCode = try reader.byte(), valueCode = try reader.byte()
            let count = Int(try reader.bigEndian(Int32.self))
            // An empty map may carry any type codes (some writers send 0).
            if count == 0 {
                return .map(key: ThriftType(rawValue: keyCode) ?? .string, value: ThriftType(rawValue: valueCode) ?? .string, [])
            }
            guard let key = ThriftType(rawValue: keyCode), let value = ThriftType(rawValue: valueCode) else {
                throw .malformed("map of type codes \(keyCode) and \(valueCode)")
            }
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
            let elementCode = try reader.byte()
            let count = Int(try reader.bigEndian(Int32.self))
            let element: ThriftType
            if let known = ThriftType(rawValue: elementCode) {
                element = known
            } else if count == 0 {
                element = .string
            } else {
                throw .malformed("container of type code \(elementCode)")
            }
            try reader.checkCount(count, minimumElementSize: minimumSize(of: element))
            var elements: [ThriftValue] = []
            elements.reserveCapacity(count)
            for _ in 0..<count { elements.append(try readValue(element, &reader, depth: depth + 1)) }
            return type == .set ? .set(element, elements) : .list(element, elements)
        }
    }
}
