/// The life of one call's stream, as a plain value: which frames each side
/// may send or receive next. Transports consult it for every frame; a frame
/// it refuses is a stream error (the stream is cancelled), never a crash.
public struct StreamState: Sendable, Hashable {
    public enum Role: Sendable, Hashable { case client, server }

    /// The client's half: request messages until END_STREAM.
    public enum RequestHalf: Sendable, Hashable { case open, closed }
    /// The server's half: optional headers, messages, then trailers.
    public enum ResponseHalf: Sendable, Hashable { case idle, headersSent, streaming, closed }

    public let role: Role
    public private(set) var requests: RequestHalf = .open
    public private(set) var responses: ResponseHalf = .idle
    public private(set) var cancelled = false

    public init(role: Role) { self.role = role }

    /// Both halves are done: the stream can be forgotten.
    public var isClosed: Bool { cancelled || responses == .closed }

    /// What a received frame means for the application.
    public enum Event: Sendable, Hashable {
        case requestMessage(isLast: Bool)
        case requestsEnded
        case responseHeaders
        case responseMessage
        case trailers
        case cancelled
        case windowUpdate
        /// A frame that may race with the stream's end (after CANCEL or TRAILERS): drop it.
        case ignored
    }

    /// A frame that breaks the stream's rules.
    public struct Violation: Error, Hashable, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Applies a frame received from the peer.
    public mutating func receive(_ type: FrameType, flags: FrameFlags) throws(Violation) -> Event {
        if isClosed { return .ignored }
        switch (role, type) {
        case (_, .cancel):
            cancelled = true
            return .cancelled
        case (_, .windowUpdate):
            return .windowUpdate
        case (.server, .message):
            guard requests == .open else { throw Violation(message: "request message after the client ended its stream") }
            let last = flags.contains(.endStream)
            if last { requests = .closed }
            return .requestMessage(isLast: last)
        case (.server, .endStream):
            guard requests == .open else { throw Violation(message: "END_STREAM twice") }
            requests = .closed
            return .requestsEnded
        case (.client, .headers):
            guard responses == .idle else { throw Violation(message: "response headers after the response started") }
            responses = .headersSent
            return .responseHeaders
        case (.client, .message):
            responses = .streaming
            return .responseMessage
        case (.client, .trailers):
            responses = .closed
            return .trailers
        default:
            throw Violation(message: "\(type) frame is not allowed from the \(role == .server ? "client" : "server") here")
        }
    }

    /// Checks and records a frame this side is about to send.
    public mutating func send(_ type: FrameType, flags: FrameFlags = []) throws(Violation) {
        guard !isClosed else { throw Violation(message: "the stream is closed") }
        switch (role, type) {
        case (_, .cancel):
            cancelled = true
        case (_, .windowUpdate):
            break
        case (.client, .headers):
            // Opening the stream; END_STREAM here means no request messages.
            if flags.contains(.endStream) { requests = .closed }
        case (.client, .message):
            guard requests == .open else { throw Violation(message: "request message after END_STREAM") }
            if flags.contains(.endStream) { requests = .closed }
        case (.client, .endStream):
            guard requests == .open else { throw Violation(message: "END_STREAM twice") }
            requests = .closed
        case (.server, .headers):
            guard responses == .idle else { throw Violation(message: "response headers sent twice or after a message") }
            responses = .headersSent
        case (.server, .message):
            responses = .streaming
        case (.server, .trailers):
            responses = .closed
        default:
            throw Violation(message: "\(type) frame cannot be sent by the \(role)")
        }
    }
}
