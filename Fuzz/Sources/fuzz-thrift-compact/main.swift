import FuzzDriver
import ThriftCore
import ThriftFuzzing

// The symbol libFuzzer's runtime expects, also what runFuzzer calls.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzThriftCompact(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzThrift(.compact, data, size) }

runFuzzer { data, size in fuzzThriftCompact(data, size) }
