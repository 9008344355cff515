/// One connection of a raw stream listener, as role logic sees it: bytes in,
/// bytes out, with back-pressure (a read waits for bytes; a write waits
/// while the peer is slow). The Thrift key-validation port is served this way.
public protocol ByteStream: Sendable {
    /// The next bytes received; nil once the peer closed its side.
    func read() async throws -> [UInt8]?
    /// Sends bytes; returns once they are handed to the connection.
    func write(_ bytes: [UInt8]) async throws
    /// The peer's address, for logs.
    var remoteAddress: String { get }
    /// The peer certificate's `tollgate://` URIs, when it presented one.
    var peerCertificateURIs: [String] { get }
}

/// Serves connections of a raw stream listener: one call per connection,
/// which owns it until it returns (the listener then closes it). Only that
/// call's task reads from the connection.
public protocol ByteStreamService: Sendable {
    func serve(_ connection: any ByteStream) async throws
}
