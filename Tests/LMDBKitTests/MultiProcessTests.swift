import Foundation
import LMDBKit
import TestSupport
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
final class Probe: Sendable {
    let process: Process
    private let output: PipeReader
    /// Set by the process's termination handler.
    private let exited = Watched(false)

    init(environment: String, prefix: String, count: Int) throws {
        process = Process()
        process.executableURL = try probeExecutable()
        process.arguments = ["write", environment, prefix, String(count)]
        let pipe = Pipe()
        process.standardOutput = pipe
        let exited = self.exited
        process.terminationHandler = { _ in exited.update { $0 = true } }
        try process.run()
        output = PipeReader(pipe)
    }

    /// The highest commit acknowledged in the output read so far (-1: none).
    static func lastAcknowledged(in text: String) -> Int {
        // Only whole lines: the last may still be arriving.
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        return lines.last { $0.hasPrefix("ack ") }.flatMap { Int($0.dropFirst(4)) } ?? -1
    }

    /// The highest commit the probe has acknowledged so far.
    var lastAcknowledged: Int { Self.lastAcknowledged(in: output.text) }

    /// Blocks until the probe has acknowledged commit `n` (or has ended).
    func waitForAcknowledgement(of n: Int) throws {
        try output.output.waitBlocking(for: "the probe to acknowledge commit \(n)") { $0.ended || Self.lastAcknowledged(in: $0.text) >= n }
    }

    /// Blocks until the probe has exited and everything it wrote has been read.
    func waitForExit() throws {
        try exited.waitBlocking(for: "the probe to exit", timeout: .seconds(120)) { $0 }
        try output.output.waitBlocking(for: "the end of the probe's output") { $0.ended }
    }
}

@Suite(.serialized) struct MultiProcessTests {
    @Test func twoProcessesWritingOneEnvironmentLoseNothing() throws {
        try withTemporaryDirectory { path in
            let a = try Probe(environment: path, prefix: "a", count: 400)
            let b = try Probe(environment: path, prefix: "b", count: 400)
            try a.waitForExit()
            try b.waitForExit()
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
            var roundsWithAcks = 0
            for round in 0..<20 {
                let probe = try Probe(environment: path, prefix: "r\(round)", count: 1_000_000)
                // Kill at a random point: early, mid-stream, sometimes before
                // any ack. Every fourth round starts its delay at once (it may
                // kill before the first commit); the others once the probe
                // has acknowledged one, so that on a slow machine too most
                // rounds check commits rather than an empty database.
                if round % 4 != 0 { try probe.waitForAcknowledgement(of: 0) }
                // The sleep is the test: a random point in the probe's writing.
                let delay = Double.random(in: 0.02...0.4, using: &generator)
                Thread.sleep(forTimeInterval: delay)
                // Read the acknowledgement count before the kill: anything acknowledged
                // so far was committed before the probe printed it.
                let acknowledged = probe.lastAcknowledged
                kill(probe.process.processIdentifier, SIGKILL)
                try probe.waitForExit()
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
                if acknowledged >= 0 { roundsWithAcks += 1 }
            }
            #expect(totalAcked > 0)
            #expect(roundsWithAcks >= 15, "only \(roundsWithAcks) of 20 rounds had acknowledged commits to check")
        }
    }
}
