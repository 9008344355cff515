/// The key-validation hot path in TBinaryProtocol without the generic value
/// model: a call's arguments are read straight into their typed struct
/// (unknown fields skipped, within the same ``ThriftLimits``), and a
/// `validateKey` reply is written straight from its DTO. The bytes are
/// those of ``ThriftProtocol/binary`` with the generic model (tested
/// against each other and the stock library's golden bytes).

/// A message's envelope.
public struct ThriftMessageHeader: Sendable, Hashable {
    public var name: String
    public var type: ThriftMessageType
    public var sequenceID: Int32

    public init(name: String, type: ThriftMessageType, sequenceID: Int32) {
        self.name = name
        self.type = type
        self.sequenceID = sequenceID
    }
}

/// A call to `APIKeyValidationService` as the keymanager reads it.
public struct KeyValidationCall: Sendable, Hashable {
    public enum Arguments: Sendable, Hashable {
        case validateKey(ValidateKeyArguments)
        case validateKeyforHandshake(ValidateKeyForHandshakeArguments)
        case getAllURITemplates(GetAllURITemplatesArguments)
        /// A method the service does not have (its arguments skipped).
        case unknownMethod
        /// A known method whose required argument is missing.
        case missing(ThriftMissingFieldError)
    }

    public var header: ThriftMessageHeader
    public var arguments: Arguments

    /// Decodes the call at the start of `bytes`, and how many bytes it took;
    /// ``ThriftDecodingError/truncated`` when they end inside it.
    public static func decodeBinary(_ bytes: ArraySlice<UInt8>, limits: ThriftLimits = ThriftLimits())
        throws(ThriftDecodingError) -> (call: KeyValidationCall, length: Int) {
        var reader = ThriftReader(bytes, limits: limits)
        let header = try BinaryProtocol.readHeader(&reader)
        var fields = StringFields()
        let arguments: Arguments
        switch header.name {
        case KeyValidationService.validateKey:
            try fields.read(&reader, ids: 8)
            arguments = fields.validateKey()
        case KeyValidationService.validateKeyforHandshake:
            try fields.read(&reader, ids: 4)
            arguments = fields.handshake()
        case KeyValidationService.getAllURITemplates:
            try fields.read(&reader, ids: 3)
            arguments = fields.uriTemplates()
        default:
            try BinaryProtocol.skip(.structure, &reader, depth: 0)
            arguments = .unknownMethod
        }
        return (KeyValidationCall(header: header, arguments: arguments), reader.consumed)
    }

    /// The string fields 1…n of an `_args` struct: the first occurrence of
    /// each id counts (as ``ThriftStruct``'s lookup), a field of another
    /// type counts as absent, everything else is skipped.
    struct StringFields {
        var values: [String?] = Array(repeating: nil, count: 9)
        var seen: UInt16 = 0

        mutating func read(_ reader: inout ThriftReader, ids: Int) throws(ThriftDecodingError) {
            try reader.checkDepth(0)
            while true {
                let code = try reader.byte()
                if code == 0 { return }
                guard let type = ThriftType(rawValue: code) else { throw .malformed("field type code \(code)") }
                let id = try reader.bigEndian(Int16.self)
                if id >= 1, Int(id) <= ids, seen & (1 << id) == 0 {
                    seen |= 1 << id
                    if type == .string {
                        values[Int(id)] = try reader.text(count: Int(try reader.bigEndian(Int32.self)))
                        continue
                    }
                }
                try BinaryProtocol.skip(type, &reader, depth: 1)
            }
        }

        func required(_ id: Int, _ name: String, in structName: String) throws(ThriftMissingFieldError) -> String {
            guard let value = values[id] else { throw ThriftMissingFieldError(field: name, structName: structName) }
            return value
        }

        func validateKey() -> Arguments {
            let name = "validateKey_args"
            do throws(ThriftMissingFieldError) {
                return .validateKey(ValidateKeyArguments(
                    context: try required(1, "context", in: name), version: try required(2, "version", in: name),
                    accessToken: try required(3, "accessToken", in: name), sessionId: try required(4, "sessionId", in: name),
                    requiredAuthenticationLevel: try required(5, "requiredAuthenticationLevel", in: name), clientDomain: values[6],
                    matchingResource: try required(7, "matchingResource", in: name), httpVerb: try required(8, "httpVerb", in: name)))
            } catch {
                return .missing(error)
            }
        }

        func handshake() -> Arguments {
            let name = "validateKeyforHandshake_args"
            do throws(ThriftMissingFieldError) {
                return .validateKeyforHandshake(ValidateKeyForHandshakeArguments(
                    context: try required(1, "context", in: name), version: try required(2, "version", in: name),
                    accessToken: try required(3, "accessToken", in: name), sessionId: try required(4, "sessionId", in: name)))
            } catch {
                return .missing(error)
            }
        }

        func uriTemplates() -> Arguments {
            let name = "getAllURITemplates_args"
            do throws(ThriftMissingFieldError) {
                return .getAllURITemplates(GetAllURITemplatesArguments(
                    context: try required(1, "context", in: name), apiVersion: try required(2, "apiVersion", in: name),
                    sessionId: try required(3, "sessionId", in: name)))
            } catch {
                return .missing(error)
            }
        }
    }
}

extension ThriftResult where Success == APIKeyValidationInfoDTO {
    /// The whole REPLY message of `method` (`validateKey` or
    /// `validateKeyforHandshake`) in TBinaryProtocol, written straight from
    /// the DTO: the bytes ``ThriftProtocol/encode(_:)`` gives for
    /// `thrift { .structure($0.thrift) }`.
    public func binaryReply(method: String, sequenceID: Int32) -> [UInt8] {
        var writer = ThriftWriter()
        writer.bigEndian(BinaryProtocol.version1 | UInt32(ThriftMessageType.reply.rawValue))
        writer.text(method)
        writer.bigEndian(sequenceID)
        switch self {
        case .success(let dto):
            writer.fieldHeader(.structure, 0)
            dto.writeBinary(to: &writer)
        case .declared(let id, let message):
            writer.fieldHeader(.structure, id)
            writer.fieldHeader(.string, 1)
            writer.text(message)
            writer.byte(0)
        }
        writer.byte(0)
        return writer.bytes
    }
}

extension APIKeyValidationInfoDTO {
    /// The struct in TBinaryProtocol, fields in id order, unset ones omitted.
    func writeBinary(to writer: inout ThriftWriter) {
        func bool(_ id: Int16, _ value: Bool?) {
            guard let value else { return }
            writer.fieldHeader(.bool, id)
            writer.byte(value ? 1 : 0)
        }
        func text(_ id: Int16, _ value: String?) {
            guard let value else { return }
            writer.fieldHeader(.string, id)
            writer.text(value)
        }
        func i32(_ id: Int16, _ value: Int32?) {
            guard let value else { return }
            writer.fieldHeader(.i32, id)
            writer.bigEndian(value)
        }
        func i64(_ id: Int16, _ value: Int64?) {
            guard let value else { return }
            writer.fieldHeader(.i64, id)
            writer.bigEndian(value)
        }
        func strings(_ id: Int16, _ container: ThriftType, _ values: [String]?) {
            guard let values else { return }
            writer.fieldHeader(container, id)
            writer.byte(ThriftType.string.rawValue)
            writer.bigEndian(Int32(truncatingIfNeeded: values.count))
            for value in values { writer.text(value) }
        }
        bool(1, authorized)
        text(2, subscriber)
        text(3, tier)
        text(4, type)
        text(5, endUserToken)
        text(6, endUserName)
        text(7, applicationName)
        i32(8, validationStatus)
        text(9, applicationId)
        text(10, applicationTier)
        text(11, apiName)
        text(12, consumerKey)
        text(13, apiPublisher)
        strings(14, .list, authorizedDomains)
        strings(15, .set, scopes)
        i64(16, validityPeriod)
        i64(17, issuedTime)
        bool(18, isContentAware)
        text(19, apiTier)
        strings(20, .list, throttlingDataList)
        i32(21, spikeArrestLimit)
        text(22, subscriberTenantDomain)
        text(23, spikeArrestUnit)
        bool(24, stopOnQuotaReach)
        writer.byte(0)
    }
}

extension ThriftWriter {
    mutating func fieldHeader(_ type: ThriftType, _ id: Int16) {
        byte(type.rawValue)
        bigEndian(id)
    }

    /// A TBinaryProtocol string: i32 length, UTF-8 bytes.
    mutating func text(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            bigEndian(Int32(truncatingIfNeeded: utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }
}

extension ThriftReader {
    /// `count` bytes as UTF-8 text (invalid sequences repaired, as
    /// ``ThriftStruct/string(_:)`` reads them), without an intermediate array.
    mutating func text(count: Int) throws(ThriftDecodingError) -> String {
        guard count >= 0 else { throw .malformed("negative length \(count)") }
        guard count <= limits.maxStringLength else { throw .limitExceeded("a string of \(count) bytes (at most \(limits.maxStringLength))") }
        guard remaining >= count else { throw .truncated }
        defer { position += count }
        return String(decoding: bytes[position..<(position + count)], as: UTF8.self)
    }

    /// Passes over `count` bytes of a string, with the checks of ``bytes(count:)``.
    mutating func skipBytes(count: Int) throws(ThriftDecodingError) {
        guard count >= 0 else { throw .malformed("negative length \(count)") }
        guard count <= limits.maxStringLength else { throw .limitExceeded("a string of \(count) bytes (at most \(limits.maxStringLength))") }
        guard remaining >= count else { throw .truncated }
        position += count
    }
}

extension BinaryProtocol {
    /// Passes over a value, refusing exactly what ``readValue(_:_:depth:)``
    /// refuses, without building it.
    static func skip(_ type: ThriftType, _ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) {
        switch type {
        case .bool, .i8: _ = try reader.byte()
        case .i16: _ = try reader.bigEndian(Int16.self)
        case .i32: _ = try reader.bigEndian(Int32.self)
        case .i64, .double: _ = try reader.bigEndian(Int64.self)
        case .string: try reader.skipBytes(count: Int(try reader.bigEndian(Int32.self)))
        case .structure:
            try reader.checkDepth(depth)
            while true {
                let code = try reader.byte()
                if code == 0 { return }
                guard let field = ThriftType(rawValue: code) else { throw .malformed("field type code \(code)") }
                _ = try reader.bigEndian(Int16.self)
                try skip(field, &reader, depth: depth + 1)
            }
        case .map:
            try reader.checkDepth(depth)
            let keyCode = try reader.byte(), valueCode = try reader.byte()
            let count = Int(try reader.bigEndian(Int32.self))
            if count == 0 { return }
            guard let key = ThriftType(rawValue: keyCode), let value = ThriftType(rawValue: valueCode) else {
                throw .malformed("map of type codes \(keyCode) and \(valueCode)")
            }
            try reader.checkCount(count, minimumElementSize: minimumSize(of: key) + minimumSize(of: value))
            for _ in 0..<count {
                try skip(key, &reader, depth: depth + 1)
                try skip(value, &reader, depth: depth + 1)
            }
        case .set, .list:
            try reader.checkDepth(depth)
            let elementCode = try reader.byte()
            let count = Int(try reader.bigEndian(Int32.self))
            guard let element = ThriftType(rawValue: elementCode) else {
                if count == 0 { return }
                throw .malformed("container of type code \(elementCode)")
            }
            try reader.checkCount(count, minimumElementSize: minimumSize(of: element))
            for _ in 0..<count { try skip(element, &reader, depth: depth + 1) }
        }
    }
}

// MARK: The gateway's side

/// A reply as a Thrift client reads it: the method's `_result`, or the
/// server's `TApplicationException`.
public enum ThriftReply<Success: Sendable & Hashable>: Sendable, Hashable {
    case result(ThriftResult<Success>)
    case exception(ThriftApplicationException)
}

extension ThriftProtocol {
    /// How many bytes the TBinaryProtocol message at the start of `bytes`
    /// takes, and its envelope, checked as ``decode(_:limits:)`` checks it
    /// but without building it. Only ``binary`` is supported.
    public static func binaryMessageLength(_ bytes: ArraySlice<UInt8>, limits: ThriftLimits = ThriftLimits())
        throws(ThriftDecodingError) -> (header: ThriftMessageHeader, length: Int) {
        var reader = ThriftReader(bytes, limits: limits)
        let header = try BinaryProtocol.readHeader(&reader)
        try BinaryProtocol.skip(.structure, &reader, depth: 0)
        return (header, reader.consumed)
    }
}

extension ValidateKeyArguments {
    /// The whole `validateKey` CALL message in TBinaryProtocol, as
    /// ``ThriftProtocol/encode(_:)`` writes it for ``thrift``.
    public func binaryCall(sequenceID: Int32) -> [UInt8] {
        var writer = ThriftWriter()
        writer.bigEndian(BinaryProtocol.version1 | UInt32(ThriftMessageType.call.rawValue))
        writer.text(KeyValidationService.validateKey)
        writer.bigEndian(sequenceID)
        writer.stringField(1, context)
        writer.stringField(2, version)
        writer.stringField(3, accessToken)
        writer.stringField(4, sessionId)
        writer.stringField(5, requiredAuthenticationLevel)
        if let clientDomain { writer.stringField(6, clientDomain) }
        writer.stringField(7, matchingResource)
        writer.stringField(8, httpVerb)
        writer.byte(0)
        return writer.bytes
    }
}

extension ThriftWriter {
    mutating func stringField(_ id: Int16, _ value: String) {
        fieldHeader(.string, id)
        text(value)
    }
}

extension ThriftReply where Success == APIKeyValidationInfoDTO {
    /// A `validateKey` (or `validateKeyforHandshake`) reply read straight
    /// from TBinaryProtocol: what ``ThriftResult/init(thrift:method:decode:)``
    /// reads from the generic model, without building it.
    public static func decodeBinary(_ bytes: ArraySlice<UInt8>, method: String, limits: ThriftLimits = ThriftLimits())
        throws(ThriftDecodingError) -> (header: ThriftMessageHeader, reply: ThriftReply<Success>) {
        var reader = ThriftReader(bytes, limits: limits)
        let header = try BinaryProtocol.readHeader(&reader)
        if header.type == .exception {
            return (header, .exception(ThriftApplicationException(thrift: try BinaryProtocol.readStruct(&reader, depth: 0))))
        }
        try reader.checkDepth(0)
        var success: APIKeyValidationInfoDTO?
        var declared: (id: Int16, message: String)?
        var seenSuccess = false
        while true {
            let code = try reader.byte()
            if code == 0 { break }
            guard let type = ThriftType(rawValue: code) else { throw .malformed("field type code \(code)") }
            let id = try reader.bigEndian(Int16.self)
            if id == 0, !seenSuccess {
                seenSuccess = true
                if type == .structure {
                    success = try BinaryProtocol.readKeyValidationInfo(&reader, depth: 1)
                    continue
                }
            } else if id != 0, declared == nil, type == .structure {
                declared = (id, try BinaryProtocol.readExceptionMessage(&reader, depth: 1))
                continue
            }
            try BinaryProtocol.skip(type, &reader, depth: 1)
        }
        if let success { return (header, .result(.success(success))) }
        if let declared { return (header, .result(.declared(id: declared.id, message: declared.message))) }
        return (header, .exception(ThriftApplicationException(.missingResult, "\(method) failed: unknown result")))
    }
}

extension BinaryProtocol {
    /// A declared exception's `message` (field 1), "" when absent.
    static func readExceptionMessage(_ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) -> String {
        try reader.checkDepth(depth)
        var message: String?
        var seen = false
        while true {
            let code = try reader.byte()
            if code == 0 { return message ?? "" }
            guard let type = ThriftType(rawValue: code) else { throw .malformed("field type code \(code)") }
            let id = try reader.bigEndian(Int16.self)
            if id == 1, !seen {
                seen = true
                if type == .string {
                    message = try reader.text(count: Int(try reader.bigEndian(Int32.self)))
                    continue
                }
            }
            try skip(type, &reader, depth: depth + 1)
        }
    }

    /// `APIKeyValidationInfoDTO` as ``APIKeyValidationInfoDTO/init(thrift:)``
    /// reads it: the first occurrence of each id, a field of another type
    /// absent, lists and sets alike for the string collections.
    static func readKeyValidationInfo(_ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) -> APIKeyValidationInfoDTO {
        try reader.checkDepth(depth)
        var dto = APIKeyValidationInfoDTO()
        var seen: UInt32 = 0
        while true {
            let code = try reader.byte()
            if code == 0 { return dto }
            guard let type = ThriftType(rawValue: code) else { throw .malformed("field type code \(code)") }
            let id = try reader.bigEndian(Int16.self)
            guard (1...24).contains(id), seen & (1 << UInt32(id)) == 0 else {
                try skip(type, &reader, depth: depth + 1)
                continue
            }
            seen |= 1 << UInt32(id)
            switch (id, type) {
            case (1, .bool): dto.authorized = try reader.byte() == 1
            case (18, .bool): dto.isContentAware = try reader.byte() == 1
            case (24, .bool): dto.stopOnQuotaReach = try reader.byte() == 1
            case (8, .i32): dto.validationStatus = try reader.bigEndian(Int32.self)
            case (21, .i32): dto.spikeArrestLimit = try reader.bigEndian(Int32.self)
            case (16, .i64): dto.validityPeriod = try reader.bigEndian(Int64.self)
            case (17, .i64): dto.issuedTime = try reader.bigEndian(Int64.self)
            case (14, .list), (14, .set): dto.authorizedDomains = try readStrings(&reader, depth: depth + 1)
            case (15, .list), (15, .set): dto.scopes = try readStrings(&reader, depth: depth + 1)
            case (20, .list), (20, .set): dto.throttlingDataList = try readStrings(&reader, depth: depth + 1)
            case (_, .string):
                let text = try reader.text(count: Int(try reader.bigEndian(Int32.self)))
                switch id {
                case 2: dto.subscriber = text
                case 3: dto.tier = text
                case 4: dto.type = text
                case 5: dto.endUserToken = text
                case 6: dto.endUserName = text
                case 7: dto.applicationName = text
                case 9: dto.applicationId = text
                case 10: dto.applicationTier = text
                case 11: dto.apiName = text
                case 12: dto.consumerKey = text
                case 13: dto.apiPublisher = text
                case 19: dto.apiTier = text
                case 22: dto.subscriberTenantDomain = text
                case 23: dto.spikeArrestUnit = text
                default: break  // a string where the IDL has another type: absent
                }
            default:
                try skip(type, &reader, depth: depth + 1)
            }
        }
    }

    /// A `list<string>` or `set<string>`; elements of another type are dropped.
    static func readStrings(_ reader: inout ThriftReader, depth: Int) throws(ThriftDecodingError) -> [String] {
        try reader.checkDepth(depth)
        let elementCode = try reader.byte()
        let count = Int(try reader.bigEndian(Int32.self))
        guard let element = ThriftType(rawValue: elementCode) else {
            if count == 0 { return [] }
            throw .malformed("container of type code \(elementCode)")
        }
        try reader.checkCount(count, minimumElementSize: minimumSize(of: element))
        guard element == .string else {
            for _ in 0..<count { try skip(element, &reader, depth: depth + 1) }
            return []
        }
        var strings: [String] = []
        strings.reserveCapacity(count)
        for _ in 0..<count { strings.append(try reader.text(count: Int(try reader.bigEndian(Int32.self)))) }
        return strings
    }
}
