import Foundation
import LMDBKit
import Testing

/// The probe executable SwiftPM builds beside the test bundle.
func probeExecutable() throws -> URL {
    // The test runner is the .xctest binary in the build folder, beside the executables.
    let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for candidate in [directory, Bundle.main.bundleURL] {
        let url = candidate.appendingPathComponent("tollgate-storage-probe")
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw ProbeMissing(searched: directory.path)
}

struct ProbeMissing: Error, CustomStringConvertible {
    let searched: String
    var description: String { "tollgate-storage-probe not found near \(searched); build it with swift build --build-tests" }
}

/// A running probe whose "ack N" lines are collected as they arrive.
final class Probe: @unchecked Sendable {
    // @unchecked Sendable: `acked` is read and written only under `lock`.
    let process = Process()
    private let lock = NSLock()
    private var acked = -1
    private var pending = ""

    init(environment: String, prefix: String, count: Int) throws {
        process.executableURL = try probeExecutable()
        process.arguments = ["write", environment, prefix, String(count)]
        let pipe = Pipe()
        process.standardOutput = pipe
        pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            self?.consume(handle.availableData)
        }
        try process.run()
    }

    private func consume(_ data: Data) {
        lock.lock()
        defer { lock.unlock() }
        pending += String(decoding: data, as: UTF8.self)
        while let newline = pending.firstIndex(of: "\n") {
            let line = pending[..<newline]
            pending = String(pending[pending.index(after: newline)...])
            if line.hasPrefix("ack "), let n = Int(line.dropFirst(4)) { acked = n }
        }
    }

    /// The highest commit the probe has acknowledged so far.
    var lastAcknowledged: Int {
        lock.lock()
        defer { lock.unlock() }
        return acked
    }

    func waitForExit() {
        process.waitUntilExit()
        // Let the reader drain what the pipe still holds.
        Thread.sleep(forTimeInterval: 0.05)
    }
}

@Suite(.serialized) struct MultiProcessTests {
    @Test func twoProcessesWritingOneEnvironmentLoseNothing() throws {
        try withTemporaryDirectory { path in
            let a = try Probe(environment: path, prefix: "a", count: 400)
            let b = try Probe(environment: path, prefix: "b", count: 400)
            a.waitForExit()
            b.waitForExit()
            #expect(a.process.terminationStatus == 0)
            #expect(b.process.terminationStatus == 0)
            let env = try Environment(path: path)
            let db = try env.openDatabase("probe")
            let (count, missing) = try env.read { txn -> (Int, [String]) in
                var missing: [String] = []
                for prefix in ["a", "b"] {
                    for n in 0..<400 where try txn.get(bytes("\(prefix)-\(n)"), in: db) == nil {
                        missing.append("\(prefix)-\(n)")
                    }
                }
                return (try txn.count(db), missing)
            }
            #expect(missing.isEmpty)
            #expect(count == 800)
            // The 256 KiB starting map had to grow while both were writing.
            #expect(env.mapSize > 256 * 1024)
        }
    }

    @Test func acknowledgedCommitsSurviveSIGKILL() throws {
        try withTemporaryDirectory { path in
            var generator = SystemRandomNumberGenerator()
            var totalAcked = 0
            for round in 0..<20 {
                let probe = try Probe(environment: path, prefix: "r\(round)", count: 1_000_000)
                // Kill at a random point: early, mid-stream, sometimes before any ack.
                let delay = Double.random(in: 0.02...0.4, using: &generator)
                Thread.sleep(forTimeInterval: delay)
                // Read the acknowledgement count before the kill: anything acknowledged
                // so far was committed before the probe printed it.
                let acknowledged = probe.lastAcknowledged
                kill(probe.process.processIdentifier, SIGKILL)
                probe.waitForExit()
                #expect(probe.process.terminationReason == .uncaughtSignal)

                let env = try Environment(path: path)
                let db = try env.openDatabase("probe")
                let missing = try env.read { txn -> [Int] in
                    try (0...max(acknowledged, 0)).filter { n in
                        n <= acknowledged ? try txn.get(bytes("r\(round)-\(n)"), in: db) == nil : false
                    }
                }
                #expect(missing.isEmpty, "round \(round): acknowledged commits lost: \(missing.prefix(10))")
                totalAcked += acknowledged + 1
            }
            #expect(totalAcked > 0)
        }
    }
}
