import RoleCore

/// `GET /metrics` in the Prometheus text format, served on the node's
/// `metrics` HTTP listener (plain HTTP: metrics belong on loopback or a
/// management network).
struct MetricsResponder: HTTPResponder {
    let render: @Sendable () -> [UInt8]

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        guard request.method == "GET" || request.method == "HEAD" else {
            return HTTPResponse(status: 405, headers: [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")], body: Array("only GET\n".utf8))
        }
        guard request.path == "/metrics" else { return .text(404, "metrics are at /metrics") }
        return HTTPResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: render())
    }
}
