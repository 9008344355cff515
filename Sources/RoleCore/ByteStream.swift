/// Serves the connections of a raw stream listener (the Thrift
/// key-validation port): request/response protocols answered from local
/// state. The listener hands each connection's bytes to its session on the
/// connection's event loop, in order, and sends what the session answers:
/// no task and no thread hop per message. A session therefore never blocks
/// for long (a read transaction is fine; a network call is not).
public protocol ByteStreamService: Sendable {
    /// A connection opened (before its TLS handshake); throwing refuses it,
    /// and the listener closes it.
    func open(_ connection: ByteStreamConnection) throws -> any ByteStreamSession
}

/// One connection's side of a ``ByteStreamService``, called only on the
/// connection's event loop (hence not Sendable).
public protocol ByteStreamSession: AnyObject {
    /// Bytes from the peer, in order; returns the bytes to send back (empty
    /// when no message is complete yet). Throwing closes the connection.
    func received(_ bytes: [UInt8]) throws -> [UInt8]
    /// While a message has begun to arrive and is not complete: how long
    /// it may take in all, from its first bytes. nil between messages.
    var messageTimeLimit: Duration? { get }
    /// The connection closed (by either side). Called once, only for a
    /// session `open` returned.
    func closed()
}

/// What a session may know of its connection. The listener fills in the
/// peer certificate when the TLS handshake completes, before any bytes
/// reach the session.
public final class ByteStreamConnection {
    /// The peer's address, for logs.
    public let remoteAddress: String
    /// The peer certificate's `tollgate://` URIs, when it presented one.
    public var peerCertificateURIs: [String] = []

    public init(remoteAddress: String) {
        self.remoteAddress = remoteAddress
    }
}

@available(*, unavailable)
extension ByteStreamConnection: Sendable {}
