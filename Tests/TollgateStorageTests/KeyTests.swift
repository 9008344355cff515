import Testing
import TollgateStorage

@Suite struct KeyTests {
    @Test func byteOrderFollowsComponentOrder() {
        let strings = ["", "a", "a\u{0}", "a\u{0}b", "ab", "b", "é", "\u{0}", "zz", "a\u{1}"]
        var tuples: [(String, Int64)] = []
        for s in strings { for n: Int64 in [Int64.min, -1, 0, 1, Int64.max] { tuples.append((s, n)) } }
        let sorted = tuples.sorted { lhs, rhs in
            let l = Array(lhs.0.utf8), r = Array(rhs.0.utf8)
            return l == r ? lhs.1 < rhs.1 : l.lexicographicallyPrecedes(r)
        }
        let byKey = tuples.sorted { Key(.string($0.0), .int64($0.1)).bytes.lexicographicallyPrecedes(Key(.string($1.0), .int64($1.1)).bytes) }
        #expect(byKey.map { "\($0.0)|\($0.1)" } == sorted.map { "\($0.0)|\($0.1)" })
    }

    @Test func noStringComponentIsAPrefixOfAnother() {
        let a = Key(.string("ab"), .string("c")).bytes
        let b = Key(.string("a"), .string("bc")).bytes
        #expect(a != b)
        #expect(!a.starts(with: Key(.string("a")).bytes))
        #expect(a.starts(with: Key(.string("ab")).bytes))
    }

    @Test func unsignedIntegersSortNumerically() {
        let values: [UInt64] = [0, 1, 255, 256, 1 << 40, UInt64.max]
        let encoded = values.map { Key(.uint64($0)).bytes }
        #expect(encoded == encoded.sorted { $0.lexicographicallyPrecedes($1) })
    }

    @Test func componentsReadBackFromTheBytes() {
        for n: Int64 in [Int64.min, -1, 0, 1, 1_795_860_000_000, Int64.max] {
            for text in ["", "a", "a\u{0}", "\u{0}\u{1}", "\u{0}", "tenant.com"] {
                let key = Key(.int64(n), .string(text), .string("next")).bytes
                key.withUnsafeBytes { raw in
                    #expect(KeyBytes.int64(in: raw, at: 0) == n)
                    let end = KeyBytes.endOfString(in: raw, at: 8)
                    #expect(Array(key[8..<end]) == Key(.string(text)).bytes, "\(text.debugDescription)")
                    #expect(KeyBytes.endOfString(in: raw, at: end) == key.count)
                }
            }
        }
        // An unclosed string runs to the end.
        Key(.stringPrefix("ab")).bytes.withUnsafeBytes { #expect(KeyBytes.endOfString(in: $0, at: 0) == 2) }
    }
}
