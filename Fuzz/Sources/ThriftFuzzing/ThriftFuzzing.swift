// Feeds arbitrary bytes to a Thrift decoder the way the keymanager's
// connection loop does: arriving in chunks, decoded again from the start of
// the unconsumed bytes each time (a truncated message waits for more). It
// must return messages or a ThriftDecodingError, never crash, hang or
// over-allocate; every message it returns must re-encode to bytes that
// decode to the same encoding, and the typed WSO2 layer must read it
// without trapping.
import ThriftCore

public func fuzzThrift(_ wire: ThriftProtocol, _ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The first byte picks the chunk size, so the fuzzer explores splits too.
    let chunk = Int(bytes[0] % 32) + 1
    let limits = ThriftLimits(maxStringLength: 4096, maxContainerCount: 1000, maxDepth: 16, maxMessageSize: 64 * 1024)
    var buffer: [UInt8] = []
    var start = 0
    var index = 1
    while index < bytes.count {
        buffer += bytes[index..<min(index + chunk, bytes.count)]
        index += chunk
        while start < buffer.count {
            let message: ThriftMessage, length: Int
            do {
                (message, length) = try wire.decode(buffer[start...], limits: limits)
            } catch .truncated {
                break
            } catch {
                return 0
            }
            precondition(length > 0 && start + length <= buffer.count, "a decoded length outside the input")
            start += length
            check(message, wire, limits)
        }
    }
    return 0
}

private func check(_ message: ThriftMessage, _ wire: ThriftProtocol, _ limits: ThriftLimits) {
    let encoded = wire.encode(message)
    guard let again = try? wire.decode(encoded, limits: ThriftLimits(maxStringLength: limits.maxStringLength, maxContainerCount: limits.maxContainerCount,
                                                                      maxDepth: limits.maxDepth + 1, maxMessageSize: .max)) else {
        preconditionFailure("a decoded message does not decode once re-encoded")
    }
    precondition(again.length == encoded.count && wire.encode(again.message) == encoded, "re-encoding is not stable")
    // The typed layer reads whatever arrived.
    _ = try? ValidateKeyArguments(thrift: message.body)
    _ = try? GetAllURITemplatesArguments(thrift: message.body)
    _ = try? AuthenticateArguments(thrift: message.body)
    _ = ThriftApplicationException(thrift: message.body)
    _ = try? ThriftResult(thrift: message.body, method: message.name) { value -> APIKeyValidationInfoDTO? in
        if case .structure(let s) = value { APIKeyValidationInfoDTO(thrift: s) } else { nil }
    }.hashValue
    if let dto = message.body.structure(0).map(APIKeyValidationInfoDTO.init(thrift:)) { _ = dto.keyValidationInfo }
    _ = message.body.structures(0)?.map(URITemplateDTO.init(thrift:))
}
