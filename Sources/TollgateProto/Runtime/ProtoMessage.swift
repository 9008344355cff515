/// A protobuf message as a Swift value.
///
/// Every conforming type is generated from `proto/` by
/// `tools/protoc-gen-tollgate-swift`; encoding and decoding run through
/// protobuf-c's `pack`/`unpack`, so the bytes are standard protobuf that any
/// implementation reads. No C pointer survives a call.
public protocol ProtoMessage: Sendable, Hashable {
    /// The fully qualified protobuf name, e.g. `tollgate.v1.Api`.
    static var protoName: String { get }

    /// A message with every field at its default (unset) value.
    init()

    /// Decodes a message from protobuf wire bytes.
    ///
    /// - Throws: ``ProtoDecodingError`` naming the message type when the bytes
    ///   are truncated, malformed, larger than ``ProtoLimits/maxMessageBytes``
    ///   or carry a string that is not valid UTF-8.
    init(serializedBytes bytes: UnsafeRawBufferPointer) throws(ProtoDecodingError)

    /// Fields on the wire this build does not know (written by a newer
    /// schema), kept from decoding so that re-encoding loses nothing.
    /// Sub-messages keep their own.
    var unknownFields: ProtoUnknownFields { get set }

    /// Encodes the message and lends its wire bytes to `body`, without an
    /// intermediate array: the bytes live in scratch memory that is reused
    /// once `body` returns, so copy out what must outlive the call.
    ///
    /// - Throws: ``ProtoEncodingError`` when a string field holds U+0000
    ///   (nothing reaches `body` then), or whatever `body` throws.
    func withSerializedBytes<Result, Failure: Error>(_ body: (UnsafeRawBufferPointer) throws(Failure) -> Result) throws -> Result

    /// Lends the wire bytes to `body`, like ``withSerializedBytes(_:)``, but
    /// through a concrete (non-generic) requirement: called on an
    /// `any ProtoMessage`, as the RPC transport does for every response, it
    /// runs each type's specialized code instead of generic code paying for
    /// metadata and boxing at run time.
    func serialize(lending body: (UnsafeRawBufferPointer) -> Void) throws(ProtoEncodingError)

    /// The protobuf wire bytes of this message.
    ///
    /// - Throws: ``ProtoEncodingError`` when a string field holds U+0000,
    ///   which protobuf-c's NUL-terminated strings cannot carry.
    func serializedBytes() throws(ProtoEncodingError) -> [UInt8]

    /// How many bytes ``serializedBytes()`` would return, without packing them.
    func serializedSize() throws(ProtoEncodingError) -> Int
}

extension ProtoMessage {
    /// Decodes a message from protobuf wire bytes held in any contiguous collection.
    @inlinable
    public init<Bytes: Collection<UInt8>>(serializedBytes bytes: Bytes) throws(ProtoDecodingError) {
        let decoded = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(ProtoDecodingError) -> Self in try Self(serializedBytes: UnsafeRawBufferPointer(buffer)) }
        } ?? Array(bytes).withUnsafeBytes { raw in
            Result { () throws(ProtoDecodingError) -> Self in try Self(serializedBytes: raw) }
        }
        self = try decoded.get()
    }
}

/// Limits applied before protobuf-c allocates anything for a message.
public enum ProtoLimits {
    /// The largest encoded message accepted by `init(serializedBytes:)`:
    /// 16 MiB, far above any record or RPC message Tollgate produces. Transports
    /// enforce their own, usually smaller, frame limit before this is reached.
    public static let maxMessageBytes = 16 * 1024 * 1024

    /// How deep the check for U+0000 in decoded strings follows nested
    /// messages before giving up on the bytes as malformed. protobuf-c has
    /// no limit of its own; this is protobuf's usual recursion limit, far
    /// beyond the deepest nesting `proto/` declares.
    public static let maxNestingDepth = 100

    /// How many bytes of unpacked structs one wire byte may cost. Real
    /// messages stay far below it; a hostile run of empty repeated
    /// sub-messages (two wire bytes, a struct and a pointer each) would not.
    public static let unpackExpansion = 64
}

/// Why bytes could not be decoded as a given message type.
public struct ProtoDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// protobuf-c rejected the bytes: truncated, a bad tag, wire type or length.
        case malformed
        /// The buffer is larger than ``ProtoLimits/maxMessageBytes``.
        case tooLarge(size: Int, limit: Int)
        /// Unpacking would need more memory than ``ProtoLimits/unpackExpansion`` allows.
        case unpackedTooLarge(limit: Int)
        /// A string field holds bytes that are not UTF-8.
        case invalidUTF8(field: String)
        /// A string field holds a 0 byte (U+0000). protobuf-c would cut the
        /// string there, so the bytes are refused rather than read short.
        case nulInString(field: String)
    }

    /// The fully qualified protobuf name of the message being decoded.
    public let messageType: String
    public let reason: Reason

    public init(messageType: String, reason: Reason) {
        self.messageType = messageType
        self.reason = reason
    }

    public var description: String {
        switch reason {
        case .malformed:
            return "cannot decode \(messageType): the bytes are truncated or not valid protobuf"
        case .tooLarge(let size, let limit):
            return "cannot decode \(messageType): \(size) bytes exceed the \(limit)-byte message limit"
        case .unpackedTooLarge(let limit):
            return "cannot decode \(messageType): unpacking would take more than \(limit) bytes of memory"
        case .invalidUTF8(let field):
            return "cannot decode \(messageType): field '\(field)' is not valid UTF-8"
        case .nulInString(let field):
            return "cannot decode \(messageType): string field '\(field)' contains U+0000, which Tollgate's strings cannot hold"
        }
    }
}

/// Why a message could not be encoded.
public struct ProtoEncodingError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// A string field (or an element of a repeated one) contains U+0000.
        /// protobuf-c measures strings with `strlen`, so encoding it would
        /// silently cut the string there; it is refused instead.
        case nulInString(field: String)
    }

    /// The fully qualified protobuf name of the message holding the field:
    /// the innermost one when the field is in a sub-message.
    public let messageType: String
    public let reason: Reason

    public init(messageType: String, reason: Reason) {
        self.messageType = messageType
        self.reason = reason
    }

    public var description: String {
        switch reason {
        case .nulInString(let field):
            return "cannot encode \(messageType): string field '\(field)' contains U+0000, which protobuf strings here cannot carry"
        }
    }
}

/// A proto enum as a Swift enum: the named values plus `unrecognized` for
/// numbers this build does not know, so proto3's open enums round-trip.
public protocol ProtoEnum: Hashable, Sendable, CaseIterable, RawRepresentable where RawValue == Int32 {
    /// The value's name as written in the `.proto` file, or its number when unrecognized.
    var protoName: String { get }
}

/// One RPC method of a service declared in `proto/`.
public struct ProtoMethod: Hashable, Sendable, CustomStringConvertible {
    /// Fully qualified service name, e.g. `tollgate.v1.PublisherService`.
    public let service: String
    /// Method name as declared, e.g. `CreateApi`.
    public let name: String
    public let inputType: String
    public let outputType: String
    public let clientStreaming: Bool
    public let serverStreaming: Bool

    public init(service: String, name: String, inputType: String, outputType: String, clientStreaming: Bool, serverStreaming: Bool) {
        self.service = service
        self.name = name
        self.inputType = inputType
        self.outputType = outputType
        self.clientStreaming = clientStreaming
        self.serverStreaming = serverStreaming
    }

    /// `/<service>/<method>`, the name a call carries on the wire.
    public var path: String { "/\(service)/\(name)" }

    public var description: String { path }
}
