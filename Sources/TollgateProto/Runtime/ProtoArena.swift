internal import CProtobufC
internal import CTollgateProto

#if canImport(Glibc)
import Glibc
#endif

/// Scratch memory for protobuf-c's view of one message.
///
/// Encoding builds protobuf-c structs whose strings, arrays and sub-messages
/// must stay valid until `pack` returns; decoding lets protobuf-c unpack into
/// it through a custom allocator. Either way the arena hands out memory by
/// bumping a pointer through a block that each thread reuses from call to
/// call, and drops everything at once when the call ends, instead of one
/// `malloc`/`free` per field.
final class ProtoArena {
    /// The block kept for the life of the arena.
    private let first: UnsafeMutableRawPointer
    /// Extra blocks for messages larger than `blockSize`, freed on reset.
    private var overflow: [UnsafeMutableRawPointer] = []
    private var cursor: UnsafeMutableRawPointer
    private var remaining: Int
    private var used = 0
    /// When set, allocations beyond this many bytes fail (decoding only).
    private var limit = Int.max
    private(set) var limitExceeded = false
    private static let blockSize = 16 * 1024

    init() {
        guard let block = malloc(Self.blockSize) else { fatalError("out of memory for a protobuf arena") }
        first = block
        cursor = block
        remaining = Self.blockSize
    }

    deinit {
        free(first)
        for block in overflow { free(block) }
    }

    /// Forgets every allocation, keeping the first block for the next call.
    private func reset() {
        for block in overflow { free(block) }
        overflow.removeAll(keepingCapacity: false)
        cursor = first
        remaining = Self.blockSize
        used = 0
        limit = Int.max
        limitExceeded = false
    }

    func allocateRaw(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        let size = max(byteCount, 1)
        let aligned = cursor.alignedUp(toMultipleOf: alignment)
        let padding = aligned - cursor
        if padding + size <= remaining {
            cursor = aligned + size
            remaining -= padding + size
            used += padding + size
            return aligned
        }
        guard used + size <= limit else {
            limitExceeded = true
            return nil
        }
        let blockBytes = max(Self.blockSize, size + alignment)
        guard let block = malloc(blockBytes) else { fatalError("out of memory for a protobuf arena") }
        overflow.append(block)
        let start = block.alignedUp(toMultipleOf: alignment)
        cursor = start + size
        remaining = blockBytes - (start - block) - size
        used += blockBytes
        return start
    }

    func allocate<T>(_ type: T.Type, count: Int = 1) -> UnsafeMutablePointer<T> {
        let raw = allocateRaw(byteCount: MemoryLayout<T>.stride * count, alignment: max(MemoryLayout<T>.alignment, 8))!
        return raw.bindMemory(to: T.self, capacity: count)
    }

    // MARK: One arena per thread

    /// Set while a call is using the arena, so a nested call takes a fresh one.
    private var busy = false

    /// Each thread's arena, owned by the thread (released when it exits).
    private static let threadKey: pthread_key_t = {
        var key = pthread_key_t()
        let status = pthread_key_create(&key) { pointer in
            if let pointer { Unmanaged<ProtoArena>.fromOpaque(pointer).release() }
        }
        precondition(status == 0, "pthread_key_create failed")
        return key
    }()

    /// Runs `body` with this thread's arena (or a fresh one if it is busy)
    /// and resets it afterwards.
    static func withScratch<Value, Failure: Error>(_ body: (ProtoArena) throws(Failure) -> Value) throws(Failure) -> Value {
        guard let stored = pthread_getspecific(threadKey) else {
            let arena = ProtoArena()
            pthread_setspecific(threadKey, Unmanaged.passRetained(arena).toOpaque())
            return try arena.use(body)
        }
        // The thread keeps its arena alive, so borrowing it needs no retain.
        let outcome = Unmanaged<ProtoArena>.fromOpaque(stored)._withUnsafeGuaranteedRef { arena in
            Result { () throws(Failure) -> Value in try (arena.busy ? ProtoArena() : arena).use(body) }
        }
        return try outcome.get()
    }

    private func use<Result, Failure: Error>(_ body: (ProtoArena) throws(Failure) -> Result) throws(Failure) -> Result {
        busy = true
        defer {
            reset()
            busy = false
        }
        return try body(self)
    }

    /// A protobuf-c allocator drawing from this arena, refusing to hand out
    /// more than `limit` bytes so a small hostile message cannot make the
    /// unpacker allocate without bound. Frees are no-ops: the arena resets.
    func unpackAllocator(limit: Int) -> ProtobufCAllocator {
        self.limit = limit
        return ProtobufCAllocator(
            alloc: { data, size in
                Unmanaged<ProtoArena>.fromOpaque(data!).takeUnretainedValue().allocateRaw(byteCount: size, alignment: 16)
            },
            free: { _, _ in },
            allocator_data: Unmanaged.passUnretained(self).toOpaque())
    }

    /// A NUL-terminated copy of `string` for field `field` of `messageType`.
    ///
    /// protobuf-c measures strings with `strlen`, so a string containing
    /// U+0000 would be cut there without a word; it is refused instead.
    func cString(_ string: String, field: String, in messageType: String) throws(ProtoEncodingError) -> UnsafeMutablePointer<CChar> {
        var string = string
        let out = string.withUTF8 { utf8 -> UnsafeMutablePointer<CChar>? in
            if let base = utf8.baseAddress, memchr(base, 0, utf8.count) != nil { return nil }
            let out = allocate(CChar.self, count: utf8.count + 1)
            if let base = utf8.baseAddress {
                UnsafeMutableRawPointer(out).copyMemory(from: base, byteCount: utf8.count)
            }
            out[utf8.count] = 0
            return out
        }
        guard let out else {
            throw ProtoEncodingError(messageType: messageType, reason: .nulInString(field: field))
        }
        return out
    }

    func cStrings(_ strings: [String], field: String, in messageType: String) throws(ProtoEncodingError) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? {
        if strings.isEmpty { return nil }
        let out = allocate(UnsafeMutablePointer<CChar>?.self, count: strings.count)
        for (index, string) in strings.enumerated() { out[index] = try cString(string, field: field, in: messageType) }
        return out
    }

    func binary(_ bytes: [UInt8]) -> ProtobufCBinaryData {
        if bytes.isEmpty { return ProtobufCBinaryData(len: 0, data: nil) }
        let out = allocate(UInt8.self, count: bytes.count)
        bytes.withUnsafeBufferPointer { out.initialize(from: $0.baseAddress!, count: bytes.count) }
        return ProtobufCBinaryData(len: bytes.count, data: out)
    }

    func binaries(_ values: [[UInt8]]) -> UnsafeMutablePointer<ProtobufCBinaryData>? {
        if values.isEmpty { return nil }
        let out = allocate(ProtobufCBinaryData.self, count: values.count)
        for (index, value) in values.enumerated() { out[index] = binary(value) }
        return out
    }

    /// A copy of a repeated scalar field whose Swift and C layouts are the same.
    func scalars<T>(_ values: [T]) -> UnsafeMutablePointer<T>? {
        if values.isEmpty { return nil }
        let out = allocate(T.self, count: values.count)
        values.withUnsafeBufferPointer { out.initialize(from: $0.baseAddress!, count: values.count) }
        return out
    }

    /// A converted copy of a repeated field (bools and enums change representation).
    func mapped<T, C>(_ values: [T], _ transform: (T) -> C) -> UnsafeMutablePointer<C>? {
        if values.isEmpty { return nil }
        let out = allocate(C.self, count: values.count)
        for (index, value) in values.enumerated() { (out + index).initialize(to: transform(value)) }
        return out
    }

    /// An array of pointers to sub-messages built by `make`.
    func messages<T, C, Failure: Error>(_ values: [T], _ make: (T) throws(Failure) -> UnsafeMutablePointer<C>) throws(Failure) -> UnsafeMutablePointer<UnsafeMutablePointer<C>?>? {
        if values.isEmpty { return nil }
        let out = allocate(UnsafeMutablePointer<C>?.self, count: values.count)
        for (index, value) in values.enumerated() { out[index] = try make(value) }
        return out
    }
}

/// Helpers the generated code uses to read protobuf-c's unpacked structs.
enum ProtoDecode {
    static func string(_ pointer: UnsafePointer<CChar>?, field: String, in messageType: String) throws(ProtoDecodingError) -> String {
        guard let pointer else { return "" }
        if pointer.pointee == 0 { return "" }
        guard let string = String(validatingCString: pointer) else {
            throw ProtoDecodingError(messageType: messageType, reason: .invalidUTF8(field: field))
        }
        return string
    }

    static func strings(_ pointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, count: Int, field: String, in messageType: String) throws(ProtoDecodingError) -> [String] {
        guard let pointer, count > 0 else { return [] }
        var out: [String] = []
        out.reserveCapacity(count)
        for index in 0..<count {
            out.append(try string(pointer[index], field: field, in: messageType))
        }
        return out
    }

    static func binary(_ data: ProtobufCBinaryData) -> [UInt8] {
        guard data.len > 0, let bytes = data.data else { return [] }
        return Array(UnsafeBufferPointer(start: bytes, count: data.len))
    }

    static func binaries(_ pointer: UnsafeMutablePointer<ProtobufCBinaryData>?, count: Int) -> [[UInt8]] {
        guard let pointer, count > 0 else { return [] }
        return (0..<count).map { binary(pointer[$0]) }
    }

    static func scalars<T>(_ pointer: UnsafeMutablePointer<T>?, count: Int) -> [T] {
        guard let pointer, count > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: pointer, count: count))
    }

    static func mapped<C, T>(_ pointer: UnsafeMutablePointer<C>?, count: Int, _ transform: (C) -> T) -> [T] {
        guard let pointer, count > 0 else { return [] }
        return (0..<count).map { transform(pointer[$0]) }
    }

    static func messages<C, T>(_ pointer: UnsafeMutablePointer<UnsafeMutablePointer<C>?>?, count: Int, in messageType: String, _ make: (UnsafePointer<C>) throws(ProtoDecodingError) -> T) throws(ProtoDecodingError) -> [T] {
        guard let pointer, count > 0 else { return [] }
        var out: [T] = []
        out.reserveCapacity(count)
        for index in 0..<count {
            guard let element = pointer[index] else {
                throw ProtoDecodingError(messageType: messageType, reason: .malformed)
            }
            out.append(try make(element))
        }
        return out
    }

    /// Runs protobuf-c's `unpack` for one message type after the size check,
    /// with protobuf-c allocating from the thread's arena, checks the wire
    /// bytes for U+0000 in strings when the type has string fields at any
    /// depth (`hasStrings`, decided by the generator), and converts the
    /// result before the arena is reset.
    @inline(__always)
    static func unpack<C, T>(
        _ bytes: UnsafeRawBufferPointer,
        messageType: String,
        descriptor: UnsafePointer<ProtobufCMessageDescriptor>,
        hasStrings: Bool,
        convert: (UnsafePointer<C>) throws(ProtoDecodingError) -> T
    ) throws(ProtoDecodingError) -> T {
        guard bytes.count <= ProtoLimits.maxMessageBytes else {
            throw ProtoDecodingError(messageType: messageType, reason: .tooLarge(size: bytes.count, limit: ProtoLimits.maxMessageBytes))
        }
        return try ProtoArena.withScratch { (arena) throws(ProtoDecodingError) -> T in
            // Unpacked structs are larger than their wire form; allow a
            // generous multiple, but not unbounded growth.
            let limit = max(1 << 20, bytes.count * ProtoLimits.unpackExpansion)
            var allocator = arena.unpackAllocator(limit: limit)
            // protobuf-c reads nothing for an empty message, but wants a pointer.
            var empty: UInt8 = 0
            let message: UnsafeMutablePointer<ProtobufCMessage>? = withUnsafePointer(to: &empty) { emptyPointer in
                let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? emptyPointer
                return protobuf_c_message_unpack(descriptor, &allocator, bytes.count, base)
            }
            guard let message else {
                if arena.limitExceeded {
                    throw ProtoDecodingError(messageType: messageType, reason: .unpackedTooLarge(limit: limit))
                }
                throw ProtoDecodingError(messageType: messageType, reason: .malformed)
            }
            // After unpack accepted the bytes, so a malformed message is
            // reported as such, not as whatever the scan trips over first.
            if hasStrings {
                try ProtoStringScan.refuseNUL(in: bytes, descriptor: descriptor, messageType: messageType)
            }
            // Every protobuf-c message struct starts with its ProtobufCMessage base.
            return try convert(UnsafeRawPointer(message).assumingMemoryBound(to: C.self))
        }
    }
}

/// Helpers the generated code uses to encode: protobuf-c's struct is built
/// by `build` in the thread's arena, then measured or packed there.
enum ProtoEncode {
    /// Packs the message `build` makes into arena memory and lends the bytes
    /// to `body`. A failure to build comes back as the result's error, one
    /// from `body` is thrown, so callers can keep both errors typed.
    @inline(__always)
    static func withPacked<C, Value, BuildFailure: Error, Failure: Error>(
        _ build: (ProtoArena) throws(BuildFailure) -> UnsafeMutablePointer<C>,
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Value
    ) throws(Failure) -> Result<Value, BuildFailure> {
        try ProtoArena.withScratch { (arena) throws(Failure) -> Result<Value, BuildFailure> in
            let message: UnsafeMutablePointer<C>
            do throws(BuildFailure) {
                message = try build(arena)
            } catch {
                return .failure(error)
            }
            // Every protobuf-c message struct starts with its ProtobufCMessage base.
            let base = UnsafeRawPointer(message).assumingMemoryBound(to: ProtobufCMessage.self)
            let count = protobuf_c_message_get_packed_size(base)
            if count == 0 { return .success(try body(UnsafeRawBufferPointer(start: nil, count: 0))) }
            let out = arena.allocate(UInt8.self, count: count)
            let packed = protobuf_c_message_pack(base, out)
            return .success(try body(UnsafeRawBufferPointer(start: out, count: packed)))
        }
    }

    /// The packed size of the message `build` makes, without packing it.
    @inline(__always)
    static func packedSize<C, BuildFailure: Error>(
        _ build: (ProtoArena) throws(BuildFailure) -> UnsafeMutablePointer<C>
    ) throws(BuildFailure) -> Int {
        try ProtoArena.withScratch { (arena) throws(BuildFailure) -> Int in
            let message = try build(arena)
            return protobuf_c_message_get_packed_size(UnsafeRawPointer(message).assumingMemoryBound(to: ProtobufCMessage.self))
        }
    }
}
