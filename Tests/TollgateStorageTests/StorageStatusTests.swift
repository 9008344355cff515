import LMDBKit
import RPCCore
import Testing
import TollgateProto
import TollgateStorage

@Suite struct StorageStatusTests {
    @Test func storageFailuresMapToStatusesWithoutLibraryText() {
        let full = RPCError(mapping: LMDBError.mapFull)
        #expect(full.code == .resourceExhausted && full.code.httpStatus == 429)
        #expect(!full.message.contains("MDB_"), "\(full.message)")
        #expect((full.cause as? LMDBError) == .mapFull, "the cause is kept for the log")
        #expect(RPCError(mapping: LMDBError.corrupted).code == .dataLoss)
        #expect(RPCError(mapping: StorageError.uniqueConflict(table: "apis", index: "by_name_version")).code == .alreadyExists)
        #expect(RPCError(mapping: StorageError.invalidPageToken(table: "apis")).code == .invalidArgument)
        let damaged = RPCError(mapping: ProtoDecodingError(messageType: "tollgate.v1.Api", reason: .malformed))
        #expect(damaged.code == .dataLoss && damaged.message.contains("Api"), "\(damaged.message)")
        #expect(RPCError(mapping: ProtoEncodingError(messageType: "tollgate.v1.Api", reason: .nulInString(field: "name"))).code == .invalidArgument)
        #expect(RPCError(mapping: OutboxError.unknownKind("x")).code == .failedPrecondition)
    }

    @Test func anErrorWithoutAStatusIsInternalAndPointsAtTheLog() {
        struct Surprise: Error {}
        let mapped = RPCError(mapping: Surprise())
        #expect(mapped.code == .internal && mapped.code.httpStatus == 500)
        #expect(mapped.message.contains("log") && mapped.cause is Surprise)
        #expect(RPCError(mapping: CancellationError()).code == .cancelled)
    }
}
