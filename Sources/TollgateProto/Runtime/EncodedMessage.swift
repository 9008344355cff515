/// A message kept as its wire bytes, say as read back from a file: sent as
/// they are, not decoded and encoded again. The bytes are taken as they
/// come; whoever wrote them encoded a `Message`, and the receiver decodes
/// them as one (checking them then).
public struct EncodedMessage<Message: ProtoMessage>: ProtoMessage {
    public static var protoName: String { Message.protoName }

    /// The message's protobuf wire bytes.
    public var bytes: [UInt8]

    public init() { bytes = [] }

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public init(serializedBytes bytes: UnsafeRawBufferPointer) throws(ProtoDecodingError) {
        self.bytes = Array(bytes)
    }

    /// Empty: fields this build does not know stay in ``bytes`` with the rest.
    public var unknownFields: ProtoUnknownFields {
        get { ProtoUnknownFields() }
        set {}
    }

    public func withSerializedBytes<Result, Failure: Error>(_ body: (UnsafeRawBufferPointer) throws(Failure) -> Result) throws -> Result {
        try bytes.withUnsafeBytes { raw throws(Failure) in try body(raw) }
    }

    public func serialize(lending body: (UnsafeRawBufferPointer) -> Void) throws(ProtoEncodingError) {
        bytes.withUnsafeBytes(body)
    }

    public func serializedBytes() throws(ProtoEncodingError) -> [UInt8] { bytes }

    public func serializedSize() throws(ProtoEncodingError) -> Int { bytes.count }
}
