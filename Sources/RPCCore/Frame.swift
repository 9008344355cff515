/// Frame types of the Tollgate RPC protocol (docs/rpc-protocol.md).
public enum FrameType: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case settings = 0x00
    case headers = 0x01
    case message = 0x02
    case trailers = 0x03
    case cancel = 0x04
    case windowUpdate = 0x05
    case ping = 0x06
    case goAway = 0x07
    case endStream = 0x08

    /// The name docs/rpc-protocol.md uses.
    public var description: String {
        switch self {
        case .settings: "SETTINGS"
        case .headers: "HEADERS"
        case .message: "MESSAGE"
        case .trailers: "TRAILERS"
        case .cancel: "CANCEL"
        case .windowUpdate: "WINDOW_UPDATE"
        case .ping: "PING"
        case .goAway: "GOAWAY"
        case .endStream: "END_STREAM"
        }
    }

    /// Whether frames of this type belong to stream 0 (the connection).
    var isConnectionLevel: Bool {
        switch self {
        case .settings, .ping, .goAway: true
        case .headers, .message, .trailers, .cancel, .windowUpdate, .endStream: false
        }
    }
}

/// Frame flags. `0x01` means END_STREAM on HEADERS and MESSAGE, ACK on SETTINGS and PING.
public struct FrameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let endStream = FrameFlags(rawValue: 0x01)
    public static let ack = FrameFlags(rawValue: 0x01)
}

/// The 12 bytes in front of every frame.
public struct FrameHeader: Sendable, Hashable {
    public static let byteCount = 12

    public var length: UInt32
    public var type: FrameType
    public var flags: FrameFlags
    public var streamID: UInt32

    public init(length: UInt32, type: FrameType, flags: FrameFlags = [], streamID: UInt32) {
        self.length = length
        self.type = type
        self.flags = flags
        self.streamID = streamID
    }

    /// Parses and checks a header: a known type, zero reserved bytes, the
    /// right stream kind, and a length within `maxFrameSize` — all before any
    /// payload is read or allocated.
    public static func parse(_ bytes: UnsafeRawBufferPointer, maxFrameSize: Int) throws(ConnectionError) -> FrameHeader {
        precondition(bytes.count >= byteCount)
        let length = UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])
        guard let type = FrameType(rawValue: bytes[4]) else {
            throw ConnectionError(.protocolError, "unknown frame type 0x\(String(bytes[4], radix: 16))")
        }
        guard bytes[6] == 0, bytes[7] == 0 else {
            throw ConnectionError(.protocolError, "reserved header bytes are not zero")
        }
        let stream = UInt32(bytes[8]) << 24 | UInt32(bytes[9]) << 16 | UInt32(bytes[10]) << 8 | UInt32(bytes[11])
        guard Int(length) <= maxFrameSize else {
            throw ConnectionError(.frameTooLarge, "\(type) frame of \(length) bytes exceeds the \(maxFrameSize)-byte limit")
        }
        if type.isConnectionLevel != (stream == 0) {
            throw ConnectionError(.protocolError, type.isConnectionLevel ? "\(type) frame on stream \(stream)" : "\(type) frame on stream 0")
        }
        if type == .ping && length != 8 {
            throw ConnectionError(.protocolError, "PING payload must be 8 bytes, not \(length)")
        }
        if type == .windowUpdate && length != 4 {
            throw ConnectionError(.protocolError, "WINDOW_UPDATE payload must be 4 bytes, not \(length)")
        }
        if type == .settings && FrameFlags(rawValue: bytes[5]).contains(.ack) && length != 0 {
            throw ConnectionError(.protocolError, "SETTINGS ACK carries no payload")
        }
        if type == .endStream && length != 0 {
            throw ConnectionError(.protocolError, "END_STREAM frames carry no payload")
        }
        return FrameHeader(length: length, type: type, flags: FrameFlags(rawValue: bytes[5]), streamID: stream)
    }

    /// Writes the 12 header bytes at the start of `bytes`, which must hold
    /// at least that many. The one place the header layout is written: both
    /// ``Frame/bytes`` and the NIO encoder go through it.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.byteCount)
        bytes.storeBytes(of: length.bigEndian, toByteOffset: 0, as: UInt32.self)
        bytes[4] = type.rawValue
        bytes[5] = flags.rawValue
        bytes[6] = 0
        bytes[7] = 0
        bytes.storeBytes(of: streamID.bigEndian, toByteOffset: 8, as: UInt32.self)
    }

    /// Appends the 12 header bytes to `out`.
    public func write(into out: inout [UInt8]) {
        withUnsafeTemporaryAllocation(byteCount: Self.byteCount, alignment: 1) { header in
            encode(into: header)
            out.append(contentsOf: header)
        }
    }
}

/// One whole frame.
public struct Frame: Sendable, Hashable {
    public var header: FrameHeader
    public var payload: [UInt8]

    public init(type: FrameType, flags: FrameFlags = [], streamID: UInt32, payload: [UInt8] = []) {
        self.header = FrameHeader(length: UInt32(payload.count), type: type, flags: flags, streamID: streamID)
        self.payload = payload
    }

    /// Header and payload, ready for the wire.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(FrameHeader.byteCount + payload.count)
        header.write(into: &out)
        out += payload
        return out
    }

    /// Reads the frame at the front of `bytes`: nil until all of it is there.
    /// The header is checked (``FrameHeader/parse(_:maxFrameSize:)``) as soon
    /// as its 12 bytes are present, so an oversize or malformed frame fails
    /// before its payload is waited for or allocated. The payload is copied
    /// once, straight from `bytes`; `byteCount` is how many bytes the frame
    /// took, for the caller to consume.
    ///
    /// This is the protocol's only frame parser: the NIO decoder hands it a
    /// ByteBuffer's readable bytes, ``FrameDecoder`` its own buffer.
    public static func parse(_ bytes: UnsafeRawBufferPointer, maxFrameSize: Int) throws(ConnectionError) -> (frame: Frame, byteCount: Int)? {
        guard bytes.count >= FrameHeader.byteCount else { return nil }
        let header = try FrameHeader.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<FrameHeader.byteCount]), maxFrameSize: maxFrameSize)
        let end = FrameHeader.byteCount + Int(header.length)
        guard bytes.count >= end else { return nil }
        let payload = [UInt8](unsafeUninitializedCapacity: Int(header.length)) { storage, initialized in
            UnsafeMutableRawBufferPointer(storage).copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[FrameHeader.byteCount..<end]))
            initialized = Int(header.length)
        }
        return (Frame(header: header, payload: payload), end)
    }

    /// A frame from a header that already carries the payload's length.
    init(header: FrameHeader, payload: [UInt8]) {
        self.header = header
        self.payload = payload
    }
}

/// Why a connection must end: sent to the peer in GOAWAY, then the connection closes.
public struct ConnectionError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Sendable, Hashable {
        case protocolError, frameTooLarge, idle, keepaliveTimeout
        /// The peer went beyond a memory or connection budget (docs/rpc-protocol.md §9).
        case resourceExhausted
    }

    public let reason: Reason
    public let message: String

    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(reason): \(message)" }
}

/// Splits a byte stream that arrives in arbitrary chunks into frames, for
/// callers without a ByteBuffer (tests, the fuzzer): it only buffers, and
/// leaves the parsing to ``Frame/parse(_:maxFrameSize:)``, as the NIO decoder
/// does.
public struct FrameDecoder: Sendable {
    public var maxFrameSize: Int
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maxFrameSize: Int) {
        self.maxFrameSize = maxFrameSize
    }

    /// Bytes received and not yet returned as frames.
    public var bufferedByteCount: Int { buffer.count - start }

    public mutating func append<Bytes: Sequence<UInt8>>(_ bytes: Bytes) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, or nil until more bytes arrive.
    public mutating func next() throws(ConnectionError) -> Frame? {
        let (start, limit) = (self.start, maxFrameSize)
        let parsed = buffer.withUnsafeBytes { raw in
            Result { () throws(ConnectionError) -> (frame: Frame, byteCount: Int)? in
                try Frame.parse(UnsafeRawBufferPointer(rebasing: raw[start...]), maxFrameSize: limit)
            }
        }
        guard let (frame, byteCount) = try parsed.get() else { return nil }
        self.start += byteCount
        // Reclaim consumed space once it is most of the buffer.
        if self.start > 64 * 1024 && self.start * 2 > buffer.count {
            buffer.removeFirst(self.start)
            self.start = 0
        }
        return frame
    }
}
