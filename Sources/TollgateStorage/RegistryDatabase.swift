public import LMDBKit
public import TollgateProto

/// `regdb`, the registry: API artifacts shared by publisher and store —
/// OpenAPI definitions, documents and lifecycle history.
public struct RegistryDatabase: Sendable {
    public static let schema = Schema(name: LogicalDatabaseName.regdb.rawValue, version: 1)

    public static let definitionTable = TableDefinition<ApiDefinition>("definitions", primaryKey: { Key(.string($0.apiId)) })

    /// Document names are unique within an API; listing by API goes through this index.
    public static let documentsByApiName = IndexDefinition<Document>("by_api_name", unique: true) { doc in
        Key(.string(doc.apiId), .string(doc.name.lowercased()))
    }
    public static let documentTable = TableDefinition<Document>(
        "documents", primaryKey: { Key(.string($0.id)) }, indexes: [documentsByApiName])

    /// History entries of an API in time order. Two entries of one API in the
    /// same millisecond must differ in their target state.
    public static let lifecycleHistoryTable = TableDefinition<LifecycleHistoryEntry>(
        "lifecycle_history",
        primaryKey: { Key(.string($0.apiId), .int64($0.occurredAtUnixMs), .int64(Int64($0.toState.rawValue))) })

    public let database: LogicalDatabase
    public let definitions: Table<ApiDefinition>
    public let documents: Table<Document>
    public let lifecycleHistory: Table<LifecycleHistoryEntry>

    /// Opens `<dataDirectory>/regdb`.
    public static func open(in dataDirectory: String, options: Environment.Options = .init()) throws -> RegistryDatabase {
        try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            RegistryDatabase(
                database: database,
                definitions: try database.table(definitionTable),
                documents: try database.table(documentTable),
                lifecycleHistory: try database.table(lifecycleHistoryTable))
        }
    }

    public func definition(api apiID: String) throws -> ApiDefinition? {
        try database.environment.read { try definitions.get(Key(.string(apiID)), in: $0) }
    }

    public func documents(api apiID: String) throws -> [Document] {
        try database.environment.read { try documents.all(index: Self.documentsByApiName, prefix: Key(.string(apiID)), in: $0) }
    }

    public func document(id: String) throws -> Document? {
        try database.environment.read { try documents.get(Key(.string(id)), in: $0) }
    }

    public func lifecycleHistory(api apiID: String) throws -> [LifecycleHistoryEntry] {
        try database.environment.read { try lifecycleHistory.list(prefix: Key(.string(apiID)), pageSize: Int.max, in: $0).items }
    }
}
