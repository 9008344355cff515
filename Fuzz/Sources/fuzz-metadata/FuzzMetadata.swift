// Decodes arbitrary bytes as the control messages that carry metadata
// (request headers, response headers, trailers) and validates the metadata:
// every outcome is a value or a thrown error, never a crash.
import RPCCore
import TollgateProto

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetadata(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    if let headers = try? RpcRequestHeaders(serializedBytes: bytes) {
        _ = try? Metadata(protoEntries: headers.metadata).validate()
        precondition((try? RpcRequestHeaders(serializedBytes: headers.serializedBytes())) == headers, "request headers do not round-trip")
    }
    if let trailers = try? RpcTrailers(serializedBytes: bytes) {
        _ = try? Metadata(protoEntries: trailers.metadata).validate()
    }
    if let response = try? RpcResponseHeaders(serializedBytes: bytes) {
        _ = try? Metadata(protoEntries: response.metadata).validate()
    }
    return 0
}
