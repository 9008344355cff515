public import Foundation

/// What a child process has written to a pipe so far, read on a thread of
/// its own as it arrives, so a test waits for the line it needs (or for the
/// end of the output) instead of sleeping and hoping the line is there.
public final class PipeReader: Sendable {
    public struct Output: Sendable, CustomStringConvertible {
        public var text = ""
        /// The writing end is closed: every process holding it has exited.
        public var ended = false
        public var description: String { text + (ended ? "\n[end of output]" : "") }
    }

    public let output = Watched(Output())

    /// Starts reading `pipe`; the parent's copy of its writing end must be
    /// closed (as `Process.run()` does) for the end to be seen.
    public init(_ pipe: Pipe) {
        let handle = pipe.fileHandleForReading
        let output = self.output
        // A plain thread, not a task: the read blocks until the child writes.
        Thread.detachNewThread {
            var bytes: [UInt8] = []
            while true {
                let data = handle.availableData
                guard !data.isEmpty else { break }
                bytes += data
                // Decoded whole each time, so a character split across reads stays intact.
                let text = String(decoding: bytes, as: UTF8.self)
                output.update { $0.text = text }
            }
            output.update { $0.ended = true }
        }
    }

    public var text: String { output.current.text }

    /// Suspends until the output contains `line` or ends; whether it contains it.
    public func contains(_ line: String, timeout: Duration = .seconds(30)) async -> Bool {
        let seen = try? await output.wait(for: "\"\(line)\" in the output", timeout: timeout) { $0.text.contains(line) || $0.ended }
        return seen?.text.contains(line) ?? false
    }

    /// Suspends until the output has ended; all of it.
    public func end(timeout: Duration = .seconds(60), fileID: String = #fileID, line: Int = #line) async throws -> String {
        try await output.wait(for: "the end of the output", timeout: timeout, fileID: fileID, line: line) { $0.ended }.text
    }
}
