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
//
//   tollgate-storage-probe outbox <data-dir> <key-prefix> <count> [crash]
//
// Writes across two environments through an `Outbox`: each round commits a
// mark in `outsource` together with an outbox entry, prints "ack <n>", then
// delivers the entry (which adds one to a counter in `outtarget`) and prints
// "delivered <n>". With `crash`, the process exits right after the first
// "ack", between the two commits, as a kill there would leave it.
import LMDBKit
import TestSupport
import TollgateStorage

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
if arguments.count >= 5, arguments[1] == "outbox", let count = Int(arguments[4]) {
    do {
        let pair = try OutboxPair(dataDirectory: arguments[2])
        for n in 0..<count {
            let mark = OutboxPair.key(arguments[3], n)
            try await pair.source.write { [pair] txn in
                try txn.put([1], forKey: mark, in: pair.marks)
                try pair.outbox.enqueue(kind: OutboxPair.kind, operation: mark, in: &txn)
            }
            emit("ack \(n)", to: STDOUT_FILENO)
            if arguments.count > 5 && arguments[5] == "crash" { _exit(9) }
            try await pair.outbox.deliver()
            emit("delivered \(n)", to: STDOUT_FILENO)
        }
    } catch {
        fail("\(error)")
    }
    exit(0)
}
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
