import NIOCore
import NIOPosix
import RPCCore

#if canImport(Glibc)
import Glibc
#endif

/// One readable line for a failed connection, for logs, peer status and
/// `tollctl`, instead of the nested dump a NIO error prints as.
public enum ConnectionErrorText {
    public static func describe(_ error: any Error) -> String {
        if let status = error as? RPCError { return status.message.isEmpty ? "\(status.code)" : status.message }
        if let failure = error as? NIOConnectionError {
            var reasons: [String] = []
            for attempt in failure.connectionErrors {
                let reason = describe(attempt.error)
                if !reasons.contains(reason) { reasons.append(reason) }
            }
            if !reasons.isEmpty { return reasons.joined(separator: "; ") }
            if failure.dnsAError != nil || failure.dnsAAAAError != nil { return "cannot resolve host name \(failure.host)" }
            return "no address of \(failure.host) answered on port \(failure.port)"
        }
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() }
        if let channel = error as? ChannelError {
            switch channel {
            case .connectTimeout(let limit): return "no answer within \(limit.nanoseconds / 1_000_000) ms"
            case .ioOnClosedChannel, .alreadyClosed, .eof, .outputClosed, .inputClosed: return "the connection was closed"
            default: break
            }
        }
        let text = "\(error)"
        let line = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? text
        return line.count > 240 ? String(line.prefix(240)) + "…" : line
    }
}
