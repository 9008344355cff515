import Foundation
import Testing

/// Runs Tests/Interop/proto_peer.py, Python's protobuf library acting as an
/// independent implementation of Tollgate's messages.
struct PythonPeer {
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    let python: String
    let script = repositoryRoot.appendingPathComponent("Tests/Interop/proto_peer.py").path
    let protoDirectory = repositoryRoot.appendingPathComponent("proto").path

    init() throws {
        let python = ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"]
            ?? PythonPeer.repositoryRoot.appendingPathComponent(".venv/bin/python").path
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw PeerError(message: "no Python with the protobuf package at \(python): run `make test`, which creates .venv")
        }
        self.python = python
    }

    /// Runs a peer command; returns its standard output, throwing with its output when it fails.
    @discardableResult
    func run(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw PeerError(message: "proto_peer.py \(arguments.first ?? "") failed (\(process.terminationStatus)):\n\(text)")
        }
        return text
    }
}

struct PeerError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

func temporaryDirectory(_ label: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
