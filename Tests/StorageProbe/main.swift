// tollgate-storage-probe: a child process for the storage tests.
//
//   tollgate-storage-probe write <env-dir> <key-prefix> <count> [value-bytes]
//
// Commits `count` records, one write transaction each, into the `probe`
// database of the environment, and after each commit returns prints
// "ack <n>" on stdout. The tests kill it at random points (SIGKILL) and check
// that every acknowledged record survived, and run two at once to check that
// concurrent writers from separate processes lose nothing. The environment
// starts with a small map so that writers also grow it under each other.
import LMDBKit

#if canImport(Glibc)
import Glibc
#endif

/// Writes straight to a file descriptor: no stdio buffer can hold back an
/// acknowledgement when the process is killed.
func emit(_ line: String, to fd: Int32) {
    var line = line + "\n"
    line.withUTF8 { bytes in _ = write(fd, bytes.baseAddress, bytes.count) }
}

func fail(_ message: String) -> Never {
    emit("tollgate-storage-probe: \(message)", to: STDERR_FILENO)
    exit(2)
}

let arguments = CommandLine.arguments
guard arguments.count >= 5, arguments[1] == "write", let count = Int(arguments[4]) else {
    fail("usage: tollgate-storage-probe write <env-dir> <key-prefix> <count> [value-bytes]")
}
let valueSize = arguments.count > 5 ? Int(arguments[5]) ?? 64 : 64

do {
    let environment = try Environment(path: arguments[2], options: .init(mapSize: 256 * 1024))
    let database = try environment.openDatabase("probe")
    let prefix = arguments[3]
    for n in 0..<count {
        var value = Array("\(prefix)-\(n)|".utf8)
        value += [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: max(0, valueSize - value.count))
        try environment.write { txn in
            try txn.put(value, forKey: Array("\(prefix)-\(String(n))".utf8), in: database)
        }
        emit("ack \(n)", to: STDOUT_FILENO)
    }
} catch {
    fail("\(error)")
}
