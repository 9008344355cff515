import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves `GET /metrics` in the Prometheus text format over plain HTTP/1.1
/// (metrics listeners belong on loopback or a management network).
final class MetricsServer: Sendable {
    private let render: @Sendable () -> [UInt8]
    private let channel: any Channel

    var address: SocketAddress? { channel.localAddress }

    private init(render: @escaping @Sendable () -> [UInt8], channel: any Channel) {
        self.render = render
        self.channel = channel
    }

    static func start(host: String, port: Int, group: any EventLoopGroup, render: @escaping @Sendable () -> [UInt8]) async throws -> MetricsServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(render: render))
                }
            }
            .bind(host: host, port: port).get()
        return MetricsServer(render: render, channel: channel)
    }

    func close() async {
        try? await channel.close()
    }
}

private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let render: @Sendable () -> [UInt8]
    private var request: HTTPRequestHead?

    init(render: @escaping @Sendable () -> [UInt8]) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            let (status, contentType, body): (HTTPResponseStatus, String, [UInt8])
            if head.method != .GET && head.method != .HEAD {
                (status, contentType, body) = (.methodNotAllowed, "text/plain", Array("only GET\n".utf8))
            } else if head.uri.split(separator: "?").first != "/metrics" {
                (status, contentType, body) = (.notFound, "text/plain", Array("metrics are at /metrics\n".utf8))
            } else {
                (status, contentType, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", render())
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: String(body.count))
            if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            if head.method != .HEAD {
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
            }
            if head.isKeepAlive {
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            } else {
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
