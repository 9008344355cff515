import NIOCore
import NIOHTTP1
import NIOPosix
import TollgateListeners
import RoleCore
import TollgateTLS

/// One client connection of the proxy listener: asks the policy about each
/// request, then streams the request body to the chosen backend and the
/// response back. Reads on either side are held while the other side cannot
/// take more (back-pressure both ways), so bodies of any size pass through
/// a few buffers' worth of memory.
///
/// It answers pipelined requests in order itself, rather than through
/// NIO's pipelining handler: that handler stops reading from the end of a
/// request to the end of its response, which costs two `epoll_ctl` calls
/// per request. Here the connection keeps reading; a request that arrives
/// while another is in progress waits in `queued`, and reads stop only then.
final class ProxyServerHandler: ChannelDuplexHandler, UpstreamDelegate {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Phase {
        case idle
        /// The policy is working asynchronously (a token validation).
        case deciding
        /// Connecting to a backend candidate.
        case connecting
        /// Request and response flowing between client and backend.
        case streaming
        /// Answered locally; the rest of the request is dropped.
        case local
    }

    private let policy: any ProxyPolicy
    private let limits: ProxyListenerLimits
    private let isSecure: Bool
    private let timer: ConnectionTimer
    private let connector: UpstreamConnector
    private var context: ChannelHandlerContext?
    private var quiescing = false

    // The exchange in progress.
    private var phase = Phase.idle
    /// Bumped per exchange, so late callbacks of an earlier one are ignored.
    private var generation: UInt64 = 0
    private var head: HTTPRequestHead?
    private var plan: ForwardPlan?
    private var localFinished: (@Sendable (ProxyOutcome) -> Void)?
    /// Request parts that arrived before a backend was attached.
    private var pending: [HTTPServerRequestPart] = []
    private var requestEnded = false
    private var requestHasBody = false
    private var requestContentLength: Int?
    private var expectsContinue = false
    private var requestBytes: UInt64 = 0
    private var responseBytes: UInt64 = 0
    private var startedAt: NIODeadline = .now()
    private var backendStartedAt: NIODeadline = .now()
    private var backendNanoseconds: UInt64 = 0
    private var upstream: UpstreamConnection?
    private var upstreamKeepAlive = true
    private var target: BackendTarget?
    private var candidateIndex = 0
    private var retriedStale = false
    private var failures: [(target: BackendTarget, failure: BackendFailure)] = []
    private var responseHeadSent = false
    private var responseEnded = false
    private var responseStatus = 0
    private var keepAlive = true
    private var readHeld = false
    /// Runs deferred decisions on this connection's loop (made on the first one).
    private var loopExecutor: LoopTaskExecutor?
    private var readTimer: Scheduled<Void>?
    private var readDeadline: NIODeadline?
    private var readTimeoutTarget: BackendTarget?
    /// The peer's address as text, made once per connection rather than per request.
    private var peerAddress: String?

    /// What arrived after the request in progress: pipelined requests' parts,
    /// a parse error in them, the client's end of input. Taken in order
    /// once the exchange ends; while anything waits here, reads are held.
    private enum Pipelined {
        case part(HTTPServerRequestPart)
        case parseError
        case inputClosed
    }
    private var queued = CircularBuffer<Pipelined>()
    private var replaying = false
    /// The connection is being closed: nothing more is read or answered.
    private var closing = false
    private var isIdle: Bool {
        if case .idle = phase { return true }
        return false
    }

    init(policy: any ProxyPolicy, limits: ProxyListenerLimits, isSecure: Bool, timer: ConnectionTimer, connector: UpstreamConnector) {
        self.policy = policy
        self.limits = limits
        self.isSecure = isSecure
        self.timer = timer
        self.connector = connector
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    // MARK: Client side

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if closing { return }
        if !queued.isEmpty {
            queued.append(.part(part))
            return
        }
        if case .head = part, !isIdle {
            // A pipelined request: it waits for the exchange in progress.
            queued.append(.part(part))
            return
        }
        receive(part, context: context)
    }

    private func receive(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            begin(head, context: context)
        case .body(let buffer):
            requestBytes += UInt64(buffer.readableBytes)
            if let max = plan?.maxRequestBodyBytes, requestBytes > UInt64(max) {
                bodyTooLarge(max)
                return
            }
            switch phase {
            case .deciding, .connecting: pending.append(part)
            case .streaming: upstream?.channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
            case .local, .idle: break
            }
        case .end:
            requestEnded = true
            switch phase {
            case .deciding, .connecting:
                pending.append(part)
            case .streaming:
                guard let upstream else { return }
                upstream.channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                if responseEnded {
                    complete()
                } else if !responseHeadSent, let target {
                    armReadTimer(target)
                }
            case .local:
                if responseEnded { complete() }
            case .idle:
                break
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .streaming = phase { upstream?.channel.flush() }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        let mayRead = switch phase {
        case .idle, .local: true
        case .streaming: upstream?.channel.isWritable ?? true
        case .deciding, .connecting: false
        }
        if mayRead && queued.isEmpty { context.read() } else { readHeld = true }
    }

    private func resumeClientReads() {
        guard readHeld, queued.isEmpty, !closing, let context else { return }
        readHeld = false
        context.read()
    }

    /// Takes what waited behind the exchange that just ended, in order:
    /// the next request (whose local answer may end it at once, and so on),
    /// a parse error, or the end of the client's input.
    private func replayQueued() {
        guard !replaying, let context else { return }
        replaying = true
        defer { replaying = false }
        while !closing, let next = queued.first {
            switch next {
            case .part(.head), .parseError, .inputClosed:
                // These wait for the exchange in progress to end.
                guard isIdle else { return }
            case .part:
                break
            }
            queued.removeFirst()
            switch next {
            case .part(let part): receive(part, context: context)
            case .parseError: answerParseError(context: context)
            case .inputClosed: clientInputClosed(context: context)
            }
        }
    }

    /// A malformed request: 400 unless a response is under way (which
    /// cannot be interrupted cleanly), then the connection closes.
    private func answerParseError(context: ChannelHandlerContext) {
        if !responseHeadSent || responseEnded {
            let head = HTTPResponseHead(version: .http1_1, status: .badRequest,
                                        headers: HTTPHeaders([("Connection", "close"), ("Content-Length", "0")]))
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        close(context: context)
    }

    /// No request follows: the connection closes once what was written has gone out.
    private func clientInputClosed(context: ChannelHandlerContext) {
        if isIdle {
            stopTakingInput()
            timer.closeAfterWrites()
        } else {
            // The exchange in progress is the last: its end closes the connection.
            keepAlive = false
        }
    }

    private func close(context: ChannelHandlerContext) {
        stopTakingInput()
        context.close(promise: nil)
    }

    /// The connection is closing: what is queued, and anything read from now, is dropped.
    private func stopTakingInput() {
        closing = true
        queued.removeAll()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { upstream?.handler.resume() }
        context.fireChannelWritabilityChanged()
    }

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        timer.headReceived()
        generation &+= 1
        self.head = head
        startedAt = .now()
        keepAlive = head.isKeepAlive && !quiescing

        // One pass over the fields: the copy role logic gets, the head's
        // size, and the few fields framing depends on (this runs per request).
        var fields: [(name: String, value: String)] = []
        fields.reserveCapacity(head.headers.count)
        var headBytes = head.uri.utf8.count
        var contentLength: Int?
        var sawContentLength = false
        var chunked = false
        var expectsContinue = false
        var host: String?
        for (name, value) in head.headers {
            fields.append((name, value))
            headBytes += name.utf8.count + value.utf8.count + 4
            switch name.utf8.count {
            case 4 where host == nil && name.caseInsensitiveEquals("host"):
                host = value
            case 6 where name.caseInsensitiveEquals("expect"):
                expectsContinue = expectsContinue || value.caseInsensitiveEquals("100-continue")
            case 14 where !sawContentLength && name.caseInsensitiveEquals("content-length"):
                // The first field only, as `HTTPHeaders.first(name:)` reads it.
                sawContentLength = true
                contentLength = Int(value)
            case 17 where name.caseInsensitiveEquals("transfer-encoding"):
                chunked = chunked || value.lowercased().contains("chunked")
            default:
                break
            }
        }
        requestContentLength = contentLength
        requestHasBody = chunked || (contentLength ?? 0) > 0
        self.expectsContinue = expectsContinue

        if head.uri.utf8.count > limits.maxURIBytes {
            respondLocally(status: 414, "the request URI is longer than \(limits.maxURIBytes) bytes")
            return
        }
        if head.headers.count > limits.maxHeaderCount {
            respondLocally(status: 431, "the request has more than \(limits.maxHeaderCount) header fields")
            return
        }
        if headBytes > limits.maxHeaderBytes {
            respondLocally(status: 431, "the request head is larger than \(limits.maxHeaderBytes) bytes")
            return
        }
        let request = ProxyRequestHead(method: head.method.rawValue, uri: head.uri, versionMajor: head.version.major,
                                       versionMinor: head.version.minor, headers: fields,
                                       clientAddress: clientAddress(context), isSecure: isSecure, host: host)
        decide(policy.decide(request))
    }

    private func clientAddress(_ context: ChannelHandlerContext) -> String {
        if let peerAddress { return peerAddress }
        let address = context.channel.remoteAddress?.ipAddress ?? ""
        peerAddress = address
        return address
    }

    private func decide(_ decision: ProxyDecision) {
        switch decision {
        case .respond(let response, let finished):
            localFinished = finished
            respondLocally(response)
        case .forward(let plan):
            forward(plan)
        case .deferred(let work):
            phase = .deciding
            guard let context else { return }
            let loop = context.eventLoop
            let bound = NIOLoopBound(self, eventLoop: loop)
            let generation = self.generation
            // On this connection's loop: a validation over a pooled connection
            // on the same loop then costs no thread hop either way.
            if loopExecutor == nil { loopExecutor = LoopTaskExecutor(eventLoop: loop) }
            Task(executorPreference: loopExecutor!) {
                let next = await work()
                loop.execute {
                    let handler = bound.value
                    guard handler.generation == generation, case .deciding = handler.phase, handler.context?.channel.isActive == true else {
                        return
                    }
                    handler.decide(next)
                }
            }
        }
    }

    // MARK: Local answers

    private func respondLocally(status: Int, _ message: String) {
        respondLocally(HTTPResponse.text(status, message))
    }

    private func respondLocally(_ response: HTTPResponse) {
        guard let context, let head else { return }
        phase = .local
        cancelReadTimer()
        // A client waiting for 100-continue, or mid-body, would leave the
        // rest of its body on the connection: close after answering.
        if !requestEnded && requestHasBody { keepAlive = false }
        var headers = HTTPHeaders(response.headers)
        headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        responseStatus = response.status
        responseHeadSent = true
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: response.status),
                                                             headers: headers))), promise: nil)
        if head.method != .HEAD && !response.body.isEmpty {
            responseBytes = UInt64(response.body.count)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))), promise: nil)
        }
        responseEnded = true
        writeEnd()
        if requestEnded || !keepAlive { complete() }
    }

    private func bodyTooLarge(_ max: Int) {
        if responseHeadSent {
            abort()
        } else {
            closeUpstream()
            keepAlive = false
            respondLocally(status: 413, "the request body is larger than \(max) bytes")
        }
    }

    // MARK: Forwarding

    private func forward(_ plan: ForwardPlan) {
        self.plan = plan
        if let max = plan.maxRequestBodyBytes, let length = requestContentLength, length > max {
            keepAlive = false
            respondLocally(status: 413, "the request body is larger than \(max) bytes")
            return
        }
        phase = .connecting
        candidateIndex = 0
        connectNext()
    }

    private func connectNext() {
        guard let context, let plan else { return }
        guard candidateIndex < plan.candidates.count else {
            respondLocally(plan.unavailable(failures))
            return
        }
        let target = plan.candidates[candidateIndex]
        if let idle = connector.takeIdle(target, on: context.eventLoop) {
            attach(idle, to: target)
            return
        }
        let generation = self.generation
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        connector.connect(target, key: UpstreamKey(target), on: context.eventLoop).whenComplete { result in
            let handler = bound.value
            guard handler.generation == generation, case .connecting = handler.phase, handler.context?.channel.isActive == true else {
                if case .success(let connection) = result { connection.channel.close(promise: nil) }
                return
            }
            switch result {
            case .success(let connection):
                handler.attach(connection, to: target)
            case .failure(let error):
                handler.failures.append((target, Self.classify(error)))
                handler.candidateIndex += 1
                handler.connectNext()
            }
        }
    }

    private func attach(_ connection: UpstreamConnection, to target: BackendTarget) {
        guard let context, let head, let plan else { return }
        upstream = connection
        self.target = target
        upstreamKeepAlive = true
        connection.handler.delegate = self
        phase = .streaming
        backendStartedAt = .now()

        var headers = HTTPHeaders(plan.headers)
        if !headers.contains(name: "host") {
            let standard = target.port == (target.isSecure ? 443 : 80)
            let host = target.host.contains(":") ? "[\(target.host)]" : target.host
            headers.add(name: "Host", value: standard ? host : "\(host):\(target.port)")
        }
        if let length = requestContentLength {
            headers.replaceOrAdd(name: "Content-Length", value: String(length))
        } else if requestHasBody {
            headers.replaceOrAdd(name: "Transfer-Encoding", value: "chunked")
        } else if !Self.bodylessMethods.contains(head.method) {
            headers.replaceOrAdd(name: "Content-Length", value: "0")
        }
        var uri = target.basePath + plan.path
        if uri.isEmpty || uri.first == "?" { uri = "/" + uri }
        let upstreamHead = HTTPRequestHead(version: .http1_1, method: head.method, uri: uri, headers: headers)
        connection.channel.write(HTTPClientRequestPart.head(upstreamHead), promise: nil)
        if expectsContinue && requestHasBody && !requestEnded {
            // The backend gets no Expect; the client may send its body now.
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        for part in pending {
            switch part {
            case .body(let buffer): connection.channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
            case .end: connection.channel.write(HTTPClientRequestPart.end(nil), promise: nil)
            case .head: break
            }
        }
        pending.removeAll()
        connection.channel.flush()
        if requestEnded { armReadTimer(target) }
        if connection.channel.isWritable { resumeClientReads() }
    }

    private static let bodylessMethods: [HTTPMethod] = [.GET, .HEAD, .DELETE, .OPTIONS, .TRACE, .CONNECT]

    // MARK: Backend side

    func upstreamReceived(_ part: HTTPClientResponsePart) {
        // The plan is read in place, not bound: a copy of it is a retain and release of each of its fields, for every part of every response.
        guard let context, let head, plan != nil else { return }
        switch part {
        case .head(let response):
            // Interim answers (100 Continue) are the backend's to us, not the client's.
            if response.status.code >= 100 && response.status.code < 200 && response.status != .switchingProtocols { return }
            backendNanoseconds = NIODeadline.now().uptimeNanoseconds &- backendStartedAt.uptimeNanoseconds
            upstreamKeepAlive = response.isKeepAlive
            if let target { armReadTimer(target) }
            var headers = HopByHop.strip(response.headers)
            for (name, value) in plan?.responseHeaders ?? [] { headers.add(name: name, value: value) }
            let bodyless = head.method == .HEAD || response.status.code == 204 || response.status.code == 304
            if !bodyless && !headers.contains(name: "content-length") && head.version.minor == 0 {
                // An HTTP/1.0 client cannot take chunks: the body ends with the connection.
                keepAlive = false
            }
            if !keepAlive {
                headers.replaceOrAdd(name: "Connection", value: "close")
            } else if head.version.minor == 0 {
                headers.replaceOrAdd(name: "Connection", value: "keep-alive")
            }
            responseStatus = Int(response.status.code)
            responseHeadSent = true
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))), promise: nil)
        case .body(let buffer):
            guard responseHeadSent else { return }
            responseBytes += UInt64(buffer.readableBytes)
            if let target { armReadTimer(target) }
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            if !context.channel.isWritable { upstream?.handler.pause() }
        case .end:
            guard responseHeadSent else { return }
            cancelReadTimer()
            responseEnded = true
            writeEnd()
            if requestEnded {
                complete()
            } else {
                // The backend answered before the request ended: neither
                // connection can be reused.
                upstreamKeepAlive = false
                keepAlive = false
                complete()
            }
        }
    }

    func upstreamReadComplete() {
        context?.flush()
    }

    func upstreamWritabilityChanged(_ writable: Bool) {
        if writable { resumeClientReads() }
    }

    func upstreamClosed(error: (any Error)?) {
        guard case .streaming = phase, let closed = upstream else { return }
        upstream = nil
        cancelReadTimer()
        if responseEnded { return }
        guard let target else { return }
        if !responseHeadSent {
            // A pooled connection the backend closed while idle: try a new
            // one once, when nothing of the body has gone out yet.
            if closed.reused && !retriedStale && requestBytes == 0, let context {
                retriedStale = true
                phase = .connecting
                pending.removeAll()
                if requestEnded { pending.append(.end(nil)) }
                let generation = self.generation
                let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
                connector.connect(target, key: UpstreamKey(target), on: context.eventLoop).whenComplete { result in
                    let handler = bound.value
                    guard handler.generation == generation, case .connecting = handler.phase, handler.context?.channel.isActive == true else {
                        if case .success(let connection) = result { connection.channel.close(promise: nil) }
                        return
                    }
                    switch result {
                    case .success(let connection): handler.attach(connection, to: target)
                    case .failure(let error):
                        // The endpoint is down: on to the next candidate, as for any connect failure.
                        handler.failures.append((target, Self.classify(error)))
                        handler.candidateIndex += 1
                        handler.connectNext()
                    }
                }
                return
            }
            failures.append((target, error.map(Self.classify) ?? .connectionClosed))
            keepAlive = keepAlive && requestEnded
            respondLocally(plan?.unavailable(failures) ?? .text(502, "bad gateway"))
        } else {
            failures.append((target, .connectionClosed))
            abort()
        }
    }

    /// Moves the backend deadline; a timer is scheduled only when none is
    /// pending (re-arming per body part would schedule and cancel a task each
    /// time). When it fires early it waits out the rest.
    private func armReadTimer(_ target: BackendTarget) {
        readDeadline = .now() + .milliseconds(max(1, target.readTimeoutMs))
        readTimeoutTarget = target
        if readTimer == nil, let deadline = readDeadline { scheduleReadTimer(at: deadline) }
    }

    private func scheduleReadTimer(at deadline: NIODeadline) {
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        readTimer = context.eventLoop.scheduleTask(deadline: deadline) {
            let handler = bound.value
            handler.readTimer = nil
            guard let deadline = handler.readDeadline, let target = handler.readTimeoutTarget else { return }
            if NIODeadline.now() < deadline {
                handler.scheduleReadTimer(at: deadline)
            } else if case .streaming = handler.phase {
                handler.readDeadline = nil
                handler.backendTimedOut(target)
            }
        }
    }

    private func cancelReadTimer() {
        readDeadline = nil
    }

    private func backendTimedOut(_ target: BackendTarget) {
        failures.append((target, .readTimeout))
        closeUpstream()
        if responseHeadSent {
            abort()
        } else {
            respondLocally(plan?.unavailable(failures) ?? .text(504, "gateway timeout"))
        }
    }

    // MARK: Ending

    private func writeEnd() {
        guard let context else { return }
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            stopTakingInput()
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// The exchange is over on both sides: report it, give the backend
    /// connection back, and get ready for the next request.
    private func complete() {
        cancelReadTimer()
        if let upstream {
            self.upstream = nil
            if upstreamKeepAlive && requestEnded && responseEnded {
                connector.release(upstream)
            } else {
                upstream.handler.delegate = nil
                upstream.channel.close(promise: nil)
            }
        }
        report()
        reset()
        if keepAlive && !quiescing {
            timer.exchangeFinished()
            replayQueued()
            resumeClientReads()
        }
    }

    /// The response cannot be finished (the backend failed mid-body, or the
    /// client went away): close both connections.
    private func abort() {
        closeUpstream()
        keepAlive = false
        report()
        reset()
        guard let context else { return }
        close(context: context)
    }

    private func closeUpstream() {
        guard let upstream else { return }
        self.upstream = nil
        upstream.handler.delegate = nil
        upstream.channel.close(promise: nil)
    }

    private func report() {
        let outcome = ProxyOutcome(status: responseStatus, requestBodyBytes: requestBytes, responseBodyBytes: responseBytes,
                                   totalNanoseconds: NIODeadline.now().uptimeNanoseconds &- startedAt.uptimeNanoseconds,
                                   backendNanoseconds: backendNanoseconds, target: responseHeadSent && failures.isEmpty ? target : nil,
                                   failures: failures)
        if let localFinished {
            localFinished(outcome)
        } else if let plan {
            plan.finished(outcome)
        }
    }

    private func reset() {
        phase = .idle
        generation &+= 1
        head = nil
        plan = nil
        localFinished = nil
        pending.removeAll()
        requestEnded = false
        requestHasBody = false
        requestContentLength = nil
        expectsContinue = false
        requestBytes = 0
        responseBytes = 0
        backendNanoseconds = 0
        target = nil
        candidateIndex = 0
        retriedStale = false
        failures.removeAll()
        responseHeadSent = false
        responseEnded = false
        responseStatus = 0
    }

    static func classify(_ error: any Error) -> BackendFailure {
        if let channelError = error as? ChannelError, case .connectTimeout = channelError { return .connectTimeout }
        if error is TLSHandlerError { return .tlsHandshake }
        let text = String(describing: error)
        if text.contains("connectTimeout") || text.contains("timed out") { return .connectTimeout }
        if text.contains("TLS") || text.contains("certificate") { return .tlsHandshake }
        if error is NIOConnectionError || text.contains("refused") { return .connectRefused }
        return .connectionClosed
    }

    // MARK: Connection events

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ListenerQuiesceEvent:
            quiescing = true
            keepAlive = false
            if case .idle = phase { context.close(promise: nil) }
        case is ListenerDrainExpiredEvent:
            context.close(promise: nil)
        case ChannelEvent.inputClosed:
            // The client half-closed its connection (the channel allows it, so
            // a request sent before the client's FIN is still answered).
            if queued.isEmpty {
                clientInputClosed(context: context)
            } else {
                queued.append(.inputClosed)
            }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelReadTimer()
        readTimer?.cancel()
        readTimer = nil
        if head != nil {
            // The client went away mid-exchange.
            closeUpstream()
            keepAlive = false
            report()
            reset()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError, !closing else {
            close(context: context)
            return
        }
        if !queued.isEmpty || (!isIdle && requestEnded) {
            // The malformed bytes came after a request still being answered:
            // that answer goes out first.
            queued.append(.parseError)
            return
        }
        answerParseError(context: context)
    }
}

@available(*, unavailable)
extension ProxyServerHandler: Sendable {}
