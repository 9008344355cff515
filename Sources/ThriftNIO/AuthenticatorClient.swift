import NIOCore
import NIOHTTP1
import NIOPosix
import OpenSSLKit
import ThriftCore
import TollgateTLS

/// An `https://host:port/path` URL, as WSO2's `ServerURL` names the authenticator.
struct HTTPSLocation: Sendable, Hashable {
    let host: String
    let port: Int
    let path: String

    init?(_ url: String) {
        guard url.lowercased().hasPrefix("https://") else { return nil }
        let rest = url.dropFirst("https://".count)
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        let host: Substring, port: Int
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            port = after.hasPrefix(":") ? Int(after.dropFirst()) ?? -1 : 443
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            port = Int(authority[authority.index(after: colon)...]) ?? -1
        } else {
            host = authority
            port = 443
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        self.host = String(host)
        self.port = port
        self.path = path.isEmpty ? "/" : String(path)
    }
}

/// WSO2's `AuthenticatorService.authenticate` over HTTPS POST: one
/// TCompactProtocol call per request (as `THttpClient` sends it), on a
/// connection opened for it and closed after.
enum AuthenticatorClient {
    /// Why `authenticate` gave no session.
    enum Failure: Error {
        /// The keymanager refused the credentials (`AuthenticationException`).
        case refused(String)
        /// No answer, or not a Thrift one.
        case transport(String)
    }

    static func authenticate(at location: HTTPSLocation, username: String, password: String, tls: TLSContext, verifyHostname: Bool,
                             timeout: TimeAmount, group: any EventLoopGroup) async throws(Failure) -> String {
        let call = ThriftMessage(name: KeyValidationService.authenticate, type: .call, sequenceID: 1,
                                 body: AuthenticateArguments(userName: username, password: password).thrift)
        let body: [UInt8]
        do {
            body = try await post(ThriftProtocol.compact.encode(call), to: location, tls: tls, verifyHostname: verifyHostname, timeout: timeout, group: group)
        } catch {
            throw .transport("POST https://\(location.host):\(location.port)\(location.path): \(error)")
        }
        let reply: ThriftMessage
        do {
            let (message, _) = try ThriftProtocol.compact.decode(body)
            reply = message
        } catch {
            throw .transport("the authenticator's answer is not a TCompactProtocol message: \(error)")
        }
        if reply.type == .exception { throw .transport("\(ThriftApplicationException(thrift: reply.body))") }
        do {
            switch try ThriftResult<String>(thrift: reply.body, method: KeyValidationService.authenticate, decode: { value in
                if case .string(let bytes) = value { String(decoding: bytes, as: UTF8.self) } else { nil }
            }) {
            case .success(let session): return session
            case .declared(_, let message): throw Failure.refused(message)
            }
        } catch let failure as Failure {
            throw failure
        } catch {
            throw .transport("\(error)")
        }
    }

    /// POSTs `body` as application/x-thrift; returns the 200 response's body.
    static func post(_ body: [UInt8], to location: HTTPSLocation, tls: TLSContext, verifyHostname: Bool, timeout: TimeAmount,
                     group: any EventLoopGroup) async throws -> [UInt8] {
        let loop = group.next()
        let response = loop.makePromise(of: (status: Int, body: [UInt8]).self)
        let connecting = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(TLSHandler(context: tls, serverHostname: verifyHostname ? location.host : nil, handshakeTimeout: timeout))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(ResponseCollector(response: response))
                }
            }
            .connect(host: location.host, port: location.port)
        let channel: any Channel
        do {
            channel = try await connecting.get()
        } catch {
            // The promise must complete whatever happens (NIO checks it).
            response.fail(error)
            throw error
        }
        let timer = loop.scheduleTask(in: timeout) { response.fail(ThriftTransportError("no answer within \(timeout.nanoseconds / 1_000_000) ms")) }
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: location.path)
        head.headers.add(name: "Host", value: location.port == 443 ? location.host : "\(location.host):\(location.port)")
        head.headers.add(name: "Content-Type", value: "application/x-thrift")
        head.headers.add(name: "Accept", value: "application/x-thrift")
        head.headers.add(name: "User-Agent", value: "Tollgate/ThriftKeyValidationClient")
        head.headers.add(name: "Content-Length", value: String(body.count))
        head.headers.add(name: "Connection", value: "close")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let (status, answer) = try await response.futureResult.get()
        guard status == 200 else { throw ThriftTransportError("HTTP status \(status)") }
        return answer
    }
}

/// Gathers one HTTP response.
final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let response: EventLoopPromise<(status: Int, body: [UInt8])>
    private var status = 0
    private var body: [UInt8] = []
    /// Answers are small: a session id or a refusal.
    private let maxBody = 64 * 1024

    init(response: EventLoopPromise<(status: Int, body: [UInt8])>) { self.response = response }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
        case .body(let buffer):
            body += buffer.readableBytesView
            if body.count > maxBody {
                response.fail(ThriftTransportError("an answer over \(maxBody) bytes"))
                context.close(promise: nil)
            }
        case .end:
            response.succeed((status, body))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        response.fail(ThriftTransportError("the connection closed before the answer was complete"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        response.fail(ThriftTransportError("\(error)"))
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ResponseCollector: Sendable {}
