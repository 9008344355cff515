/// A role module's section of the node configuration (`[users]`, say),
/// already checked against the module's declared keys. Values are what the
/// file says; relative paths are already made absolute.
public struct ConfigSection: Sendable, Hashable {
    public var values: [String: ConfigValue]

    public init(values: [String: ConfigValue] = [:]) { self.values = values }

    public func integer(_ key: String) -> Int? {
        if case .integer(let value)? = values[key] { return value }
        return nil
    }

    public func string(_ key: String) -> String? {
        if case .string(let value)? = values[key] { return value }
        return nil
    }

    public func boolean(_ key: String) -> Bool? {
        if case .boolean(let value)? = values[key] { return value }
        return nil
    }
}

public enum ConfigValue: Sendable, Hashable {
    case integer(Int)
    case string(String)
    case boolean(Bool)
}

/// What a module accepts in its section; the node's reader checks every key
/// against it and reports problems with their line, like every other key.
public struct ConfigSectionSpec: Sendable {
    public struct Key: Sendable {
        public enum Kind: Sendable {
            case integer(ClosedRange<Int>)
            case string
            /// A file path, relative to the configuration file's folder.
            case path
            case boolean
        }

        public let name: String
        public let kind: Kind
        /// For `.path`: whether every start checks the file can be read. A
        /// file the module reads only in some starts (the bootstrap admin's
        /// password, read while no administrator exists) may be gone later.
        public let readAtEveryStart: Bool

        public init(_ name: String, _ kind: Kind, readAtEveryStart: Bool = true) {
            self.name = name
            self.kind = kind
            self.readAtEveryStart = readAtEveryStart
        }
    }

    /// The table name, e.g. `users`.
    public let name: String
    public let keys: [Key]
    /// Checks across keys (e.g. two that go together), as key → problem.
    public let check: @Sendable (ConfigSection) -> [(key: String, problem: String)]

    public init(name: String, keys: [Key], check: @escaping @Sendable (ConfigSection) -> [(key: String, problem: String)] = { _ in [] }) {
        self.name = name
        self.keys = keys
        self.check = check
    }
}
