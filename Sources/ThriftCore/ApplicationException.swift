/// Thrift's `TApplicationException`: what a server sends as an EXCEPTION
/// message for a failure the IDL does not declare (unknown method, bad
/// arguments), and what a client raises for a reply it cannot use.
public struct ThriftApplicationException: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Int32, Sendable, Hashable {
        case unknown = 0
        case unknownMethod = 1
        case invalidMessageType = 2
        case wrongMethodName = 3
        case badSequenceID = 4
        case missingResult = 5
        case internalError = 6
        case protocolError = 7
        case invalidTransform = 8
        case invalidProtocol = 9
        case unsupportedClientType = 10
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// `{1: string message, 2: i32 type}`.
    public var thrift: ThriftStruct {
        ThriftStruct([ThriftField(1, .text(message)), ThriftField(2, .i32(kind.rawValue))])
    }

    public init(thrift: ThriftStruct) {
        self.message = thrift.string(1) ?? ""
        self.kind = thrift.i32(2).flatMap(Kind.init(rawValue:)) ?? .unknown
    }

    /// The EXCEPTION message answering call `name`, `sequenceID`.
    public func message(name: String, sequenceID: Int32) -> ThriftMessage {
        ThriftMessage(name: name, type: .exception, sequenceID: sequenceID, body: thrift)
    }

    public var description: String { "TApplicationException \(kind) (\(kind.rawValue)): \(message)" }
}

/// A required argument or field is missing: libthrift's
/// `TProtocolException`, answered by a server as PROTOCOL_ERROR.
public struct ThriftMissingFieldError: Error, Sendable, Hashable, CustomStringConvertible {
    public let field: String
    public let structName: String

    public init(field: String, structName: String) {
        self.field = field
        self.structName = structName
    }

    /// libthrift's wording.
    public var description: String { "Required field '\(field)' was not present! Struct: \(structName)" }
}

extension ThriftStruct {
    /// A required STRING field, or the error libthrift's `validate()` raises.
    public func requiredString(_ id: Int16, _ name: String, in structName: String) throws(ThriftMissingFieldError) -> String {
        guard let value = string(id) else { throw ThriftMissingFieldError(field: name, structName: structName) }
        return value
    }
}
