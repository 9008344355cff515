public import Foundation

/// Runs a command-line peer (curl, openssl, python) to completion and
/// returns its exit status and everything it printed. Waits on the
/// process's termination, not on time; `timeout` only stops a peer that
/// hangs, so a broken server fails the test instead of stalling it.
public func runTool(_ executable: String, _ arguments: [String], input: Data? = nil, timeout: Duration = .seconds(30)) async throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let output = Pipe()
    let stdin = Pipe()
    process.standardOutput = output
    process.standardError = output
    process.standardInput = stdin
    // Output is read on a thread of its own (a blocking read must never
    // hold a thread of the cooperative pool, which the server under test
    // needs), and as it arrives, so a large output cannot block the peer.
    let (outputRead, outputDone) = AsyncStream<Data>.makeStream()
    let readerThread = Thread {
        outputDone.yield(output.fileHandleForReading.readDataToEndOfFile())
        outputDone.finish()
    }
    readerThread.start()
    let (ended, finished) = AsyncStream<Void>.makeStream()
    process.terminationHandler = { _ in finished.finish() }
    do {
        try process.run()
    } catch {
        // Ends the reader thread, which waits for the pipe's last writer.
        try? output.fileHandleForWriting.close()
        throw error
    }
    if let input { stdin.fileHandleForWriting.write(input) }
    try? stdin.fileHandleForWriting.close()
    let watchdog = Task {
        try await Task.sleep(for: timeout)
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
    for await _ in ended {}
    var data = Data()
    for await chunk in outputRead { data.append(chunk) }
    watchdog.cancel()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

