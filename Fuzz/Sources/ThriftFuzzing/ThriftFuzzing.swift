// Feeds arbitrary bytes to a Thrift decoder the way the keymanager's
// connection loop does: arriving in chunks, decoded again from the start of
// the unconsumed bytes each time (a truncated message waits for more). It
// must return messages or a ThriftDecodingError, never crash, hang or
// over-allocate; every message it returns must re-encode to bytes that
// decode to the same encoding, and the typed WSO2 layer must read it
// without trapping. For TBinaryProtocol, the keymanager's and the gateway's
// direct readers (no generic model) must agree with the generic decoder and
// the typed layer over it: the same length or the same error, the same
// arguments and results, and the same bytes written back.
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
            } catch {
                if wire == .binary { checkDirectRefuses(buffer[start...], limits, error) }
                if error == .truncated { break }
                return 0
            }
            if wire == .binary { checkDirect(buffer[start..<(start + length)], message, limits) }
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

/// The direct readers refuse what the generic decoder refused, alike.
private func checkDirectRefuses(_ bytes: ArraySlice<UInt8>, _ limits: ThriftLimits, _ error: ThriftDecodingError) {
    do {
        _ = try KeyValidationCall.decodeBinary(bytes, limits: limits)
        preconditionFailure("the direct call reader accepts what the generic decoder refuses")
    } catch let direct {
        precondition(direct == error, "the direct call reader refuses differently: \(direct) vs \(error)")
    }
    do {
        _ = try ThriftProtocol.binaryMessageLength(bytes, limits: limits)
        preconditionFailure("the message scanner accepts what the generic decoder refuses")
    } catch let direct {
        precondition(direct == error, "the message scanner refuses differently: \(direct) vs \(error)")
    }
}

/// The direct readers read what the generic decoder and the typed layer read.
private func checkDirect(_ bytes: ArraySlice<UInt8>, _ message: ThriftMessage, _ limits: ThriftLimits) {
    let header = ThriftMessageHeader(name: message.name, type: message.type, sequenceID: message.sequenceID)
    guard let scanned = try? ThriftProtocol.binaryMessageLength(bytes, limits: limits), let (call, length) = try? KeyValidationCall.decodeBinary(bytes, limits: limits),
          let (replyHeader, reply) = try? ThriftReply<APIKeyValidationInfoDTO>.decodeBinary(bytes, method: message.name, limits: limits) else {
        preconditionFailure("a direct reader refuses what the generic decoder read")
    }
    precondition(scanned.length == bytes.count && length == bytes.count && scanned.header == header && call.header == header && replyHeader == header,
                 "a direct reader reads another length or envelope")
    let arguments: KeyValidationCall.Arguments
    do throws(ThriftMissingFieldError) {
        switch message.name {
        case KeyValidationService.validateKey: arguments = .validateKey(try ValidateKeyArguments(thrift: message.body))
        case KeyValidationService.validateKeyforHandshake: arguments = .validateKeyforHandshake(try ValidateKeyForHandshakeArguments(thrift: message.body))
        case KeyValidationService.getAllURITemplates: arguments = .getAllURITemplates(try GetAllURITemplatesArguments(thrift: message.body))
        default: arguments = .unknownMethod
        }
    } catch {
        arguments = .missing(error)
    }
    precondition(call.arguments == arguments, "the direct call reader reads other arguments")
    if case .validateKey(let typed) = arguments {
        precondition(typed.binaryCall(sequenceID: message.sequenceID).elementsEqual(
            ThriftProtocol.binary.encode(ThriftMessage(name: message.name, type: .call, sequenceID: message.sequenceID, body: typed.thrift))),
            "the direct call writer writes other bytes")
    }
    let expected: ThriftReply<APIKeyValidationInfoDTO>
    if message.type == .exception {
        expected = .exception(ThriftApplicationException(thrift: message.body))
    } else {
        do throws(ThriftApplicationException) {
            expected = .result(try ThriftResult(thrift: message.body, method: message.name) { value -> APIKeyValidationInfoDTO? in
                if case .structure(let s) = value { APIKeyValidationInfoDTO(thrift: s) } else { nil }
            })
        } catch {
            expected = .exception(error)
        }
    }
    precondition(reply == expected, "the direct reply reader reads another result")
    if case .result(let result) = expected {
        let generic = ThriftProtocol.binary.encode(ThriftMessage(name: message.name, type: .reply, sequenceID: message.sequenceID,
                                                                 body: result.thrift { .structure($0.thrift) }))
        precondition(result.binaryReply(method: message.name, sequenceID: message.sequenceID) == generic, "the direct reply writer writes other bytes")
    }
}
