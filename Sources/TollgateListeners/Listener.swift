public import NIOCore
import NIOConcurrencyHelpers
import NIOPosix

/// Reports what listeners do, for metrics and logs. Called on event loop
/// threads: implementations must be quick and thread-safe.
public protocol ListenerObserver: Sendable {
    func connectionOpened(listener: String)
    func connectionClosed(listener: String)
    /// A connection was refused or closed for misbehaving; `peer` is the remote address.
    func connectionFailed(listener: String, peer: String, reason: String)
}

/// Asks a connection to finish what it is doing and close (graceful drain).
/// Each kind's handler answers it its own way: RPC sends GOAWAY, HTTP closes
/// after the response in flight, a stream service is cancelled.
public struct ListenerQuiesceEvent: Sendable {
    public init() {}
}

/// Tells a connection its drain time is up: it closes now.
public struct ListenerDrainExpiredEvent: Sendable {
    public init() {}
}

/// Tells an idle connection that has authenticated nothing that it makes
/// room for a new one on a full listener: it closes now. It no longer counts
/// against the listener's limits.
public struct ListenerEvictEvent: Sendable {
    public init() {}
}

/// What a listener that tells strangers apart (``Listener/Admission``) knows
/// of one connection: whether it has authenticated anything, and whether it
/// is busy. Its connection handler keeps it up to date from the
/// connection's loop; the listener reads it when it must make room.
public final class ConnectionStanding: Sendable {
    private struct State {
        var authenticated = false
        var busy = false
        var certificateRequired: String?
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Why the connection was admitted only on condition that its TLS
    /// handshake shows a cluster certificate (its address has its fill of
    /// strangers); nil when it was admitted like any other. Its handler
    /// closes it with this reason when the handshake shows none.
    public var certificateRequired: String? { state.withLockedValue { $0.certificateRequired } }

    fileprivate func requireCertificate(_ reason: String) { state.withLockedValue { $0.certificateRequired = reason } }

    /// Something on the connection authenticated (a certificate, a call with an identity).
    public func authenticated() { state.withLockedValue { $0.authenticated = true } }

    public var isAuthenticated: Bool { state.withLockedValue { $0.authenticated } }

    /// Whether the connection has calls (streams, requests) in progress.
    public func setBusy(_ busy: Bool) { state.withLockedValue { $0.busy = busy } }

    /// A stranger doing nothing: the first to go when the listener is full.
    var isEvictable: Bool { state.withLockedValue { !$0.authenticated && !$0.busy } }
}

/// The part every kind of listener shares: binding (or adopting a socket
/// that systemd passed), admission against a connection limit, tracking
/// open connections, and graceful drain. A kind supplies only how to set
/// up each accepted connection's pipeline.
public final class Listener: Sendable {
    /// How a kind whose connections authenticate keeps strangers from
    /// filling the listener: at most `maxUnauthenticatedPerAddress`
    /// connections that have authenticated nothing per source IP address,
    /// and, when the listener is full, the longest-open idle one of them
    /// makes room for a newcomer (``ListenerEvictEvent``).
    ///
    /// Strangers never keep a certificate holder out, even one behind their
    /// address: a newcomer from an address that has its fill of strangers is
    /// admitted on condition (``ConnectionStanding/certificateRequired``),
    /// and its handler closes it right after the TLS handshake unless that
    /// showed a cluster certificate. Until then it is an idle stranger like
    /// the others: bounded by the handshake timeout, first to be evicted.
    public struct Admission: Sendable, Hashable {
        public var maxUnauthenticatedPerAddress: Int
        public init(maxUnauthenticatedPerAddress: Int) { self.maxUnauthenticatedPerAddress = maxUnauthenticatedPerAddress }
    }

    private struct Connection {
        let channel: any Channel
        let address: String
        let standing: ConnectionStanding
        /// Order of acceptance, to evict the longest-open first.
        let sequence: UInt64
    }

    private struct Connections {
        var open: [ObjectIdentifier: Connection] = [:]
        var accepted: UInt64 = 0
    }

    /// The listener's name (`cluster`, `admin`, `metrics`, or a role module's),
    /// also the name its socket carries under systemd's socket activation.
    public let name: String
    public let maxConnections: Int
    public let admission: Admission?
    private let observer: (any ListenerObserver)?
    private let configure: @Sendable (any Channel, ConnectionStanding) throws -> Void
    private let connections = NIOLockedValueBox(Connections())
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    /// - Parameter configure: adds the kind's handlers to an accepted
    ///   connection's pipeline, on its event loop.
    public convenience init(name: String, maxConnections: Int, observer: (any ListenerObserver)?,
                            configure: @escaping @Sendable (any Channel) throws -> Void) {
        self.init(name: name, maxConnections: maxConnections, admission: nil, observer: observer) { channel, _ in try configure(channel) }
    }

    /// - Parameters:
    ///   - admission: the rules for strangers, for a kind whose handlers keep
    ///     each connection's ``ConnectionStanding``; nil treats every
    ///     connection alike and never evicts.
    ///   - configure: adds the kind's handlers to an accepted connection's
    ///     pipeline, on its event loop, with the standing they keep.
    public init(name: String, maxConnections: Int, admission: Admission?, observer: (any ListenerObserver)?,
                configure: @escaping @Sendable (any Channel, ConnectionStanding) throws -> Void) {
        self.name = name
        self.maxConnections = maxConnections
        self.admission = admission
        self.observer = observer
        self.configure = configure
    }

    /// The bound address, once bound.
    public var address: SocketAddress? { channel.withLockedValue { $0?.localAddress } }

    /// Connections open now (evicted ones no longer count).
    public var openConnections: Int { connections.withLockedValue { $0.open.count } }

    /// Binds and starts accepting; returns the bound address.
    public func bind(host: String, port: Int, group: any EventLoopGroup) async throws -> SocketAddress {
        try listen(try await bootstrap(group: group).bind(host: host, port: port).get())
    }

    /// Accepts on a socket that is already bound and listening (socket
    /// activation); the listener takes ownership of the descriptor.
    public func bind(listeningSocket descriptor: CInt, group: any EventLoopGroup) async throws -> SocketAddress {
        try listen(try await bootstrap(group: group).withBoundSocket(descriptor).get())
    }

    private func listen(_ bound: any Channel) throws -> SocketAddress {
        channel.withLockedValue { $0 = bound }
        guard let address = bound.localAddress else { throw ListenerError.noAddress(name) }
        return address
    }

    private func bootstrap(group: any EventLoopGroup) -> ServerBootstrap {
        let connections = self.connections, observer = self.observer, configure = self.configure
        let limit = maxConnections, name = self.name, admission = self.admission
        return ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let id = ObjectIdentifier(channel)
                    let address = channel.remoteAddress?.ipAddress ?? "unknown"
                    let standing = ConnectionStanding()
                    let decision = connections.withLockedValue { state in
                        Self.admit(channel, address: address, standing: standing, limit: limit, admission: admission, into: &state)
                    }
                    // Refused: closed before TLS or parsing costs anything.
                    if case .refused(let error) = decision {
                        observer?.connectionFailed(listener: name, peer: channel.remoteAddress?.description ?? "unknown", reason: error.description)
                        throw error
                    }
                    if case .admitted(evicting: let victim?) = decision {
                        observer?.connectionFailed(listener: name, peer: victim.remoteAddress?.description ?? "unknown",
                                                   reason: "evicted: idle and unauthenticated on a full listener")
                        victim.pipeline.fireUserInboundEventTriggered(ListenerEvictEvent())
                    }
                    observer?.connectionOpened(listener: name)
                    channel.closeFuture.whenComplete { _ in
                        _ = connections.withLockedValue { $0.open.removeValue(forKey: id) }
                        observer?.connectionClosed(listener: name)
                    }
                    try configure(channel, standing)
                }
            }
    }

    private enum Decision {
        case admitted(evicting: (any Channel)?)
        case refused(ListenerError)
    }

    /// Admission of one accepted connection, under the connections' lock.
    private static func admit(_ channel: any Channel, address: String, standing: ConnectionStanding, limit: Int, admission: Admission?,
                              into state: inout Connections) -> Decision {
        var victim: (any Channel)?
        if let admission {
            let strangers = state.open.values.filter { $0.address == address && !$0.standing.isAuthenticated }.count
            if strangers >= admission.maxUnauthenticatedPerAddress {
                standing.requireCertificate(ListenerError.tooManyFromAddress(address, admission.maxUnauthenticatedPerAddress).description
                                            + "; only a cluster certificate admits another")
            }
        }
        if state.open.count >= limit {
            // Full: only an idle stranger may make room, the longest-open one.
            guard admission != nil,
                  let evicted = state.open.filter({ $0.value.standing.isEvictable }).min(by: { $0.value.sequence < $1.value.sequence }) else {
                return .refused(.tooManyConnections(limit))
            }
            state.open[evicted.key] = nil
            victim = evicted.value.channel
        }
        state.accepted += 1
        state.open[ObjectIdentifier(channel)] = Connection(channel: channel, address: address, standing: standing, sequence: state.accepted)
        return .admitted(evicting: victim)
    }

    /// Stops accepting, asks every connection to finish (``ListenerQuiesceEvent``),
    /// waits up to `drainTimeout` for them to close, then tells the rest
    /// their time is up (``ListenerDrainExpiredEvent``) and waits for them.
    public func shutdown(drainTimeout: Duration) async {
        if let bound = channel.withLockedValue({ $0 }) { try? await bound.close() }
        let open = connections.withLockedValue { $0.open.values.map(\.channel) }
        for connection in open { connection.pipeline.fireUserInboundEventTriggered(ListenerQuiesceEvent()) }
        let deadline = ContinuousClock.now + drainTimeout
        for connection in open {
            // Each closeFuture is awaited with the time left, not polled.
            let remaining = deadline - ContinuousClock.now
            if remaining > .zero {
                let timeout = connection.eventLoop.scheduleTask(in: TimeAmount(remaining)) {
                    connection.pipeline.fireUserInboundEventTriggered(ListenerDrainExpiredEvent())
                }
                try? await connection.closeFuture.get()
                timeout.cancel()
            } else if connection.isActive {
                connection.pipeline.fireUserInboundEventTriggered(ListenerDrainExpiredEvent())
                try? await connection.closeFuture.get()
            }
        }
    }
}

public enum ListenerError: Error, Hashable, Sendable, CustomStringConvertible {
    case tooManyConnections(Int)
    case tooManyFromAddress(String, Int)
    case noAddress(String)

    public var description: String {
        switch self {
        case .tooManyConnections(let limit): "more than \(limit) connections"
        case .tooManyFromAddress(let address, let limit): "more than \(limit) unauthenticated connections from \(address)"
        case .noAddress(let name): "listener \(name): the bound socket has no address"
        }
    }
}

/// Closes a connection that stays idle for `timeout`; every kind of
/// listener marks activity with `arm`. The deadline moves with activity
/// while one timer per connection waits for it (re-armed when it fires
/// early), instead of a timer scheduled and cancelled per read and write.
/// Confined to the connection's loop.
final class IdleTimeout {
    let timeout: TimeAmount
    private var lastActivity = NIODeadline.now()
    private var scheduled: Scheduled<Void>?

    init(_ timeout: TimeAmount) { self.timeout = timeout }

    func arm(_ context: ChannelHandlerContext) {
        lastActivity = .now()
        if scheduled == nil { wait(until: lastActivity + timeout, channel: context.channel) }
    }

    func cancel() {
        scheduled?.cancel()
        scheduled = nil
    }

    private func wait(until deadline: NIODeadline, channel: any Channel) {
        let this = NIOLoopBound(self, eventLoop: channel.eventLoop)
        scheduled = channel.eventLoop.scheduleTask(deadline: deadline) {
            let idle = this.value
            idle.scheduled = nil
            let due = idle.lastActivity + idle.timeout
            if due <= .now() {
                channel.close(promise: nil)
            } else {
                idle.wait(until: due, channel: channel)
            }
        }
    }
}

@available(*, unavailable)
extension IdleTimeout: Sendable {}
