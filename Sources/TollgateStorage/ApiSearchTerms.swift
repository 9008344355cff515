public import TollgateProto

/// The terms an API is found by, and how a search query is cut into terms.
/// Shared by the index (writing) and the publisher's search (reading), so the
/// two can never disagree about what a term is.
public enum ApiSearchTerms {
    /// Which part of an API a term comes from; the raw value is stored in keys.
    public enum Field: String, Sendable, CaseIterable {
        case name = "n"
        case context = "c"
        case tag = "t"
        case description = "d"
        case provider = "p"
        case version = "v"
    }

    /// Longest term kept, in UTF-8 bytes; longer words are cut (keys must
    /// stay under LMDB's 511 bytes).
    public static let maxTermBytes = 96
    /// Description words kept per API.
    static let maxDescriptionWords = 200

    /// Lower-cased runs of letters and digits.
    public static func words(_ text: String) -> [String] {
        var words: [String] = []
        var current = ""
        for character in text.lowercased() {
            if character.isLetter || character.isNumber {
                current.append(character)
            } else if !current.isEmpty {
                words.append(current)
                current = ""
            }
        }
        if !current.isEmpty { words.append(current) }
        return words.map(cut)
    }

    /// The longest prefix of whole characters within ``maxTermBytes``.
    static func cut(_ word: String) -> String {
        guard word.utf8.count > maxTermBytes else { return word }
        var kept = ""
        var bytes = 0
        for character in word {
            bytes += character.utf8.count
            if bytes > maxTermBytes { break }
            kept.append(character)
        }
        return kept
    }

    /// Every suffix of every word (of two characters or more, plus the word itself).
    static func suffixes(_ text: String) -> [String] {
        var terms: [String] = []
        for word in words(text) {
            var slice = Substring(word)
            terms.append(word)
            while slice.count > 2 {
                slice = slice.dropFirst()
                terms.append(String(slice))
            }
        }
        return terms
    }

    public static func terms(of api: Api) -> [(field: Field, term: String)] {
        var terms: [(Field, String)] = []
        var seen = Set<String>()
        func add(_ field: Field, _ values: [String]) {
            for value in values where !value.isEmpty && seen.insert(field.rawValue + value).inserted {
                terms.append((field, value))
            }
        }
        add(.name, suffixes(api.name))
        add(.context, suffixes(api.context))
        add(.tag, api.tags.flatMap(suffixes))
        add(.description, Array(words(api.description).prefix(maxDescriptionWords)))
        add(.provider, [api.provider.lowercased()])
        add(.version, [api.version.lowercased()])
        return terms
    }
}
