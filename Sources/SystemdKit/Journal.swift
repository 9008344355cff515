internal import CSystemd
#if canImport(Glibc)
import Glibc
#endif

/// Structured entries for the systemd journal (sd_journal_sendv(3)).
public enum Journal {
    /// Whether stderr is connected to the journal: `JOURNAL_STREAM` names
    /// the device and inode of the stream systemd gave us, and stderr is it.
    public static var stderrIsJournal: Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var info = stat()
        guard fstat(STDERR_FILENO, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }

    /// Sends one entry. Field names are upper case letters, digits and
    /// underscores (not starting with an underscore); `MESSAGE` and
    /// `PRIORITY` (0 emerg … 7 debug) are the standard ones.
    @discardableResult
    public static func send(_ fields: [(name: String, value: String)]) -> Bool {
        var strings = fields.map { "\($0.name)=\($0.value)" }
        var vectors: [iovec] = []
        vectors.reserveCapacity(strings.count)
        return strings.withUnsafeMutableBufferPointer { buffer in
            var pointers: [UnsafeMutableRawPointer?] = []
            for index in buffer.indices {
                let count = buffer[index].utf8.count
                let copy = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 1)
                buffer[index].withUTF8 { copy.copyMemory(from: $0.baseAddress!, byteCount: count) }
                pointers.append(copy)
                vectors.append(iovec(iov_base: copy, iov_len: count))
            }
            defer { for pointer in pointers { pointer?.deallocate() } }
            return vectors.withUnsafeBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) } == 0
        }
    }
}

extension ServiceNotifier {
    /// The watchdog interval systemd expects keep-alives within, if it set one.
    public static var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec))
    }

    /// A watchdog keep-alive.
    @discardableResult
    public static func watchdog() -> Bool { send(["WATCHDOG=1"]) }

    /// Reloading configuration; `READY=1` follows when done.
    @discardableResult
    public static func reloading(status: String? = nil) -> Bool {
        var timespec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &timespec)
        let usec = UInt64(timespec.tv_sec) * 1_000_000 + UInt64(timespec.tv_nsec) / 1000
        return send(["RELOADING=1", "MONOTONIC_USEC=\(usec)"] + (status.map { ["STATUS=\($0)"] } ?? []))
    }

    /// Sockets passed by socket activation (sd_listen_fds_with_names(3)),
    /// by their `FileDescriptorName=`.
    public static func listenedSockets() -> [(name: String, descriptor: Int32)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else { return [] }
        defer {
            if let names {
                for index in 0..<Int(count) { free(names[index]) }
                free(names)
            }
        }
        return (0..<Int(count)).map { index in
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            return (name, Int32(TOLLGATE_SD_LISTEN_FDS_START) + Int32(index))
        }
    }
}
