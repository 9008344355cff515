import Foundation
import LMDBKit
import TollgateStorage

/// A fresh data directory, removed when the test ends.
func withDataDirectory<Result>(_ body: (String) throws -> Result) throws -> Result {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-storage-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

/// Every byte of every LMDB file under `directory`.
func allDatabaseBytes(under directory: String) throws -> [UInt8] {
    var bytes: [UInt8] = []
    let enumerator = FileManager.default.enumerator(atPath: directory)
    while let file = enumerator?.nextObject() as? String {
        if file.hasSuffix(".mdb") {
            bytes += try [UInt8](Data(contentsOf: URL(fileURLWithPath: directory + "/" + file)))
        }
    }
    return bytes
}

extension Array where Element == UInt8 {
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        let first = needle[0]
        var index = 0
        while index <= count - needle.count {
            if self[index] == first && self[index..<index + needle.count].elementsEqual(needle) { return true }
            index += 1
        }
        return false
    }
}
