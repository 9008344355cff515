import NIOConcurrencyHelpers

/// The bytes a node holds for requests it has not handed to a handler yet
/// (docs/rpc-protocol.md §9, "Memory budgets"): frames still arriving,
/// single requests waiting for their half-close, streamed requests a handler
/// has not read. One gauge is shared by every RPC listener of a node, so
/// the cap is node-wide; it also keeps, per source address, what the
/// connections that have not authenticated anything hold.
public final class RequestBufferGauge: Sendable {
    /// Bytes all connections together may hold.
    public let limit: Int
    /// Bytes the unauthenticated connections of one source address may hold together.
    public let unauthenticatedLimitPerAddress: Int

    private struct State {
        var total = 0
        var unauthenticated: [String: Int] = [:]
    }
    private let state = NIOLockedValueBox(State())

    public init(limit: Int, unauthenticatedLimitPerAddress: Int) {
        self.limit = limit
        self.unauthenticatedLimitPerAddress = unauthenticatedLimitPerAddress
    }

    /// Bytes held now, node-wide.
    public var bufferedBytes: Int { state.withLockedValue { $0.total } }

    /// Bytes the unauthenticated connections from `address` hold now.
    public func unauthenticatedBytes(from address: String) -> Int {
        state.withLockedValue { $0.unauthenticated[address] ?? 0 }
    }

    /// Takes `count` bytes, or says which cap refuses them (and takes nothing).
    /// `address` is given while the connection has authenticated nothing.
    func reserve(_ count: Int, unauthenticatedFrom address: String?) -> String? {
        state.withLockedValue { state in
            guard state.total + count <= limit else {
                return "the node holds \(state.total) bytes of unfinished requests, its limit is \(limit)"
            }
            if let address {
                let held = state.unauthenticated[address] ?? 0
                guard held + count <= unauthenticatedLimitPerAddress else {
                    return "unauthenticated connections from \(address) hold \(held) bytes of unfinished requests, the limit is \(unauthenticatedLimitPerAddress)"
                }
                state.unauthenticated[address] = held + count
            }
            state.total += count
            return nil
        }
    }

    func release(_ count: Int, unauthenticatedFrom address: String?) {
        guard count > 0 else { return }
        state.withLockedValue { state in
            state.total -= count
            if let address {
                let left = (state.unauthenticated[address] ?? 0) - count
                state.unauthenticated[address] = left > 0 ? left : nil
            }
        }
    }
}

/// One server connection's share of the ``RequestBufferGauge``, and its
/// tighter limits until it has authenticated something: a peer certificate
/// from the cluster CA, or a call admitted with an identity. Shared by the
/// connection's frame decoder (frames still arriving) and its connection
/// handler (requests held for calls); both run on the channel's loop.
final class ConnectionBudget {
    let gauge: RequestBufferGauge
    let limits: RPCLimits
    /// The peer's IP address, which the per-address caps count by.
    let address: String
    private(set) var isAuthenticated = false
    /// Bytes this connection holds now, all reserved in the gauge.
    private(set) var bufferedBytes = 0
    /// The reservation for the frame the decoder is still receiving.
    private var partialFrame = 0
    private var isClosed = false

    init(gauge: RequestBufferGauge, limits: RPCLimits, address: String) {
        self.gauge = gauge
        self.limits = limits
        self.address = address
    }

    /// The largest frame payload accepted now.
    var frameLimit: Int { isAuthenticated ? limits.maxFrameSize : min(limits.unauthenticatedMaxFrameSize, limits.maxFrameSize) }

    /// Streams that may be open at once now.
    var streamLimit: Int {
        isAuthenticated ? limits.maxConcurrentStreams : min(limits.unauthenticatedMaxConcurrentStreams, limits.maxConcurrentStreams)
    }

    private var connectionLimit: Int { isAuthenticated ? limits.maxBufferedBytesPerConnection : limits.unauthenticatedMaxBufferedBytes }

    /// Takes `count` bytes for this connection, or says why not.
    func reserve(_ count: Int) -> String? {
        guard !isClosed else { return "the connection is closed" }
        guard bufferedBytes + count <= connectionLimit else {
            return "the connection holds \(bufferedBytes) bytes of unfinished requests, its limit is \(connectionLimit)"
                + (isAuthenticated ? "" : " before it authenticates")
        }
        if let refusal = gauge.reserve(count, unauthenticatedFrom: isAuthenticated ? nil : address) { return refusal }
        bufferedBytes += count
        return nil
    }

    func release(_ count: Int) {
        guard !isClosed, count > 0 else { return }
        bufferedBytes -= count
        gauge.release(count, unauthenticatedFrom: isAuthenticated ? nil : address)
    }

    /// The decoder has the header of a frame of `length` bytes whose payload
    /// is still arriving: reserves it once, before the bytes are buffered.
    func reservePartialFrame(_ length: Int) -> String? {
        guard partialFrame == 0, length > 0 else { return nil }
        if let refusal = reserve(length) { return refusal }
        partialFrame = length
        return nil
    }

    /// The frame being received is complete: its payload now belongs to the
    /// connection handler, which reserves what it keeps.
    func partialFrameArrived() {
        release(partialFrame)
        partialFrame = 0
    }

    /// Something on the connection authenticated: the full limits apply, and
    /// what it holds no longer counts against its address.
    func authenticate() {
        guard !isAuthenticated, !isClosed else { return }
        gauge.authenticated(bufferedBytes, from: address)
        isAuthenticated = true
    }

    /// The connection is gone: everything it held goes back.
    func close() {
        guard !isClosed else { return }
        gauge.release(bufferedBytes, unauthenticatedFrom: isAuthenticated ? nil : address)
        bufferedBytes = 0
        partialFrame = 0
        isClosed = true
    }
}

extension RequestBufferGauge {
    /// `count` bytes held by a connection that has just authenticated stay
    /// in the node's total but leave its address's unauthenticated share.
    fileprivate func authenticated(_ count: Int, from address: String) {
        guard count > 0 else { return }
        state.withLockedValue { state in
            let left = (state.unauthenticated[address] ?? 0) - count
            state.unauthenticated[address] = left > 0 ? left : nil
        }
    }
}
