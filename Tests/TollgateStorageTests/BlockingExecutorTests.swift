import Testing
import TollgateStorage

@Suite struct BlockingExecutorTests {
    @Test func manyCallersAllGetTheirResults() async throws {
        let executor = BlockingExecutor(name: "test.lane")
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for caller in 0..<16 {
                group.addTask {
                    var sum = 0
                    for step in 0..<2_000 { sum += try await executor.run { () throws -> Int in caller + step } }
                    return sum
                }
            }
            return try await group.reduce(0, +)
        }
        var expected = 0
        for caller in 0..<16 { for step in 0..<2_000 { expected += caller + step } }
        #expect(total == expected)
    }
}
